"""Methods are small recipes over the one loop: an objective, a parameterization and their defaults."""

from vital.methods import baselines as _baselines  # noqa: F401  (registers pixel, fourier, maco, deepinversion)
from vital.methods import vital as _vital  # noqa: F401  (registers "vital")
from vital.methods.base import METHODS, Recipe, RunOptions, build_recipe

__all__ = ["METHODS", "Recipe", "RunOptions", "build_recipe"]
