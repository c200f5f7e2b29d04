"""Real photographs that ship with scikit-image, mapped to the ImageNet classes they show: references that exist
on every machine, for the demo, the integration tests and the quality benchmarks.

With one photograph per class, the reference set is made of `n` seeded random views of it (random resized crops
and flips), so that per-channel feature distributions are estimated from many positions and scales of the photo.
"""

from __future__ import annotations

import os

import torch
from PIL import Image

from vital.errors import VitalError
from vital.references.images import ReferenceSet, load_rgb

# ImageNet class -> scikit-image file. Each photo is the target model's (efficientnet_lite0) top-1 or top-2 class.
OFFLINE_PHOTOS: dict[int, str] = {
    282: "chelsea.png",  # tiger cat
    967: "coffee.png",  # espresso
    872: "camera.png",  # tripod (grayscale photo)
    665: "motorcycle_left.png",  # moped
    657: "rocket.jpg",  # missile
}


def photo_path(name: str) -> str:
    try:
        import skimage
    except ImportError as e:
        raise VitalError("scikit-image is not installed: pip install scikit-image (it ships the demo photos)") from e
    path = os.path.join(os.path.dirname(skimage.__file__), "data", name)
    if not os.path.isfile(path):
        raise VitalError(f"scikit-image photo {name} is missing at {path}; reinstall scikit-image")
    return path


def views(image: Image.Image, n: int, seed: int = 0, scale: tuple[float, float] = (0.3, 1.0)) -> list[Image.Image]:
    """`n` seeded random resized crops (aspect 3/4..4/3) with random horizontal flips; the first is the whole photo."""
    from torchvision.transforms import functional as TF

    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = [image]
    w, h = image.size
    side = min(w, h)
    while len(out) < n:
        area = w * h * float(torch.empty(1, device=gen.device).uniform_(*scale, generator=gen))
        ratio = float(torch.empty(1, device=gen.device).uniform_(3 / 4, 4 / 3, generator=gen))
        cw = min(w, max(16, round((area * ratio) ** 0.5)))
        ch = min(h, max(16, round((area / ratio) ** 0.5)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen, device=gen.device))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen, device=gen.device))
        crop = TF.crop(image, top, left, ch, cw).resize((side, side), Image.Resampling.BICUBIC)
        if torch.rand(1, generator=gen, device=gen.device) < 0.5:
            crop = TF.hflip(crop)
        out.append(crop)
    return out


def photo_references(cls: int, n: int = 32, seed: int = 0) -> ReferenceSet:
    """References for ImageNet class `cls` made of `n` views of its offline photo."""
    if cls not in OFFLINE_PHOTOS:
        raise VitalError(f"no offline photo for class {cls}; available: {sorted(OFFLINE_PHOTOS)}")
    name = OFFLINE_PHOTOS[cls]
    photo = load_rgb(photo_path(name))
    imgs = [(f"skimage:{name}#view{i}(seed={seed})", im) for i, im in enumerate(views(photo, n, seed))]
    return ReferenceSet(images=imgs, source=f"skimage:{name} ({n} views, seed {seed})", requested=n,
                        origin={"kind": "photo", "class": cls, "name": name, "n": n, "seed": seed})


# Square crops per photo at each side (a fraction of the photo's short side): whole, halves, thirds, fifths. Small
# crops matter most: a mid-level channel responds to a pattern a few dozen pixels wide, and mining can only find it
# where the pattern fills a good part of an image.
CORPUS_SCALES: tuple[tuple[float, int], ...] = ((1.0, 1), (0.5, 4), (0.33, 6), (0.2, 8))
CORPUS_MIN_SIDE = 96


def offline_photo_files() -> list[str]:
    """Every photograph that installed packages ship (scikit-image's data folder, matplotlib's sample data), as
    paths, sorted by name; tiny images (icons, animations) are left out."""
    import glob

    folders = [os.path.dirname(photo_path("chelsea.png"))]
    try:
        import matplotlib

        folders.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data"))
    except ImportError:
        pass
    out = []
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "*"))):
            if os.path.splitext(path)[1].lower() not in (".png", ".jpg", ".jpeg"):
                continue
            try:
                with Image.open(path) as im:
                    if min(im.size) >= CORPUS_MIN_SIDE:
                        out.append(path)
            except OSError:
                continue
    return sorted(out, key=os.path.basename)


def corpus_source(file: str) -> str:
    """The photo a corpus crop was cut from ('grace_hopper' for 'grace_hopper_s033_4.png')."""
    name = os.path.basename(file)
    stem, _, rest = name.rpartition("_s")
    return stem if stem and rest[:3].isdigit() else os.path.splitext(name)[0]


def photo_corpus(out: str | os.PathLike, size: int = 224, seed: int = 0,
                 scales: tuple[tuple[float, int], ...] = CORPUS_SCALES) -> str:
    """Write a folder of seeded square crops of every offline photo at several scales, each resized to `size`:
    a few hundred images on which mining finds patch-level patterns (text, checkerboards, gravel, fabric). Existing
    crops are kept, so a second call is free. Returns the folder."""
    folder = os.fspath(out)
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for path in offline_photo_files():
        photo = load_rgb(path)
        w, h = photo.size
        stem = os.path.splitext(os.path.basename(path))[0]
        for fraction, count in scales:
            side = max(16, round(min(w, h) * fraction))
            for i in range(count):
                top = int(torch.randint(0, h - side + 1, (1,), generator=gen, device=gen.device))
                left = int(torch.randint(0, w - side + 1, (1,), generator=gen, device=gen.device))
                name = os.path.join(folder, f"{stem}_s{round(100 * fraction):03d}_{i}.png")
                if not os.path.exists(name):
                    crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
                    crop.save(name)
    return folder
