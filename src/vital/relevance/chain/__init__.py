"""The LRP rule chain: a model's operations in forward order, one rule each (build, rules, blocks, families)."""
