"""Metrics for feature visualizations, as in the paper's tables (`vital.evaluate` runs them into an `EvalTable`)."""
