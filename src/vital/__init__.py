"""vital: feature visualization by distribution alignment (VITAL, ICCV 2025), with baselines, metrics and a gallery."""

from vital import references  # noqa: E402
from vital._version import __version__ as __version__  # from the installed metadata
from vital.errors import VitalError  # noqa: E402
from vital.metrics.evaluation import evaluate  # noqa: E402  (use `from vital.metrics.fid import fid` for submodules)
from vital.models import load_model  # noqa: E402
from vital.references.mining import MiningStore, mine  # noqa: E402
from vital.run.execute import Result, visualize  # noqa: E402
from vital.run.repeat import rerun  # noqa: E402
from vital.targets import Channel, Class, Direction  # noqa: E402

__all__ = ["Channel", "Class", "Direction", "MiningStore", "Result", "VitalError", "evaluate", "load_model", "mine",
           "references", "rerun", "visualize"]
