"""vital: feature visualization by distribution alignment (VITAL, ICCV 2025), with baselines, metrics and a gallery."""

__version__ = "0.1.0"

from vital import references  # noqa: E402
from vital.errors import VitalError  # noqa: E402
from vital.models import load_model  # noqa: E402
from vital.targets import Channel, Class, Direction  # noqa: E402
from vital.visualize import Result, visualize  # noqa: E402

__all__ = ["Channel", "Class", "Direction", "Result", "VitalError", "load_model", "references", "visualize"]
