"""Reference images: the real images whose feature distributions a visualization is aligned to."""

from vital.references.images import (
    ReferenceSet,
    from_class_folder,
    from_files,
    from_folder,
    from_images,
    load_rgb,
)
from vital.references.mining import MiningStore, mine

__all__ = ["MiningStore", "ReferenceSet", "from_class_folder", "from_files", "from_folder", "from_images", "load_rgb",
           "mine"]
