"""Reference images: the real images whose feature distributions a visualization is aligned to."""

from vital.references.images import (
    ReferenceSet,
    from_class_folder,
    from_files,
    from_folder,
    from_images,
    load_rgb,
)

__all__ = ["ReferenceSet", "from_class_folder", "from_files", "from_folder", "from_images", "load_rgb"]
