"""Methods are small recipes over the one loop: an objective, a parameterization, transforms and their defaults."""

from vital.methods import baselines as _baselines  # noqa: F401  (registers pixel, fourier, maco, deepinversion)
from vital.methods import vital as _vital  # noqa: F401  (registers "vital")
from vital.methods.base import (
    METHODS,
    Method,
    Recipe,
    RunOptions,
    build_recipe,
    get_method,
    option_defaults,
    option_names,
    pin_changed_defaults,
    split_options,
    upgrade_options,
)

__all__ = ["METHODS", "Method", "Recipe", "RunOptions", "build_recipe", "get_method", "option_defaults", "option_names",
           "pin_changed_defaults", "split_options", "upgrade_options"]
