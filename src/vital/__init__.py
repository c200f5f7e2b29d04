"""vital: feature visualization by distribution alignment (VITAL, ICCV 2025), with baselines, metrics and a gallery."""

from vital import references
from vital._version import __version__ as __version__  # from the installed metadata
from vital.errors import VitalError
from vital.metrics.evaluation import (  # the metrics themselves: vital.metrics.fid, .kid, .clip, ...
           Visual,
           evaluate,
)
from vital.models import load_model
from vital.references.mining import MiningStore, mine
from vital.run.execute import Result, visualize
from vital.run.repeat import rerun
from vital.targets import Channel, Class, Direction

__all__ = ["Channel", "Class", "Direction", "MiningStore", "Result", "Visual", "VitalError", "evaluate", "load_model",
           "mine", "references", "rerun", "visualize"]
