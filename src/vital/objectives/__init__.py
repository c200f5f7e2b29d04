"""Loss terms: sort-matching (distribution alignment), priors, and the baselines' activation objectives."""

from vital.objectives.activation import channel_activation, class_logit, direction
from vital.objectives.batchnorm import BatchNormStats
from vital.objectives.priors import l2_norm, tv_l1, tv_l2
from vital.objectives.sort_matching import quantile_prototype, sort_matching_loss

__all__ = ["BatchNormStats", "channel_activation", "class_logit", "direction", "l2_norm", "quantile_prototype",
           "sort_matching_loss", "tv_l1", "tv_l2"]
