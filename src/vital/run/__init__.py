"""One run: a recipe through the optimisation loop into a `Result`, and a run repeated from its record."""
