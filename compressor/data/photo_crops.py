"""An ImageNet-style image set built from photographs that ship inside installed packages.

No ImageNet images can be shipped or downloaded here, yet CNN quantization only shows its
failures on real photographs run through a real pretrained model (MNIST digits saturate nothing).
So the conformance suite evaluates on seeded random-resized crops (Inception-style scale and
aspect jitter, horizontal flips) of the photographs in scikit-image and scikit-learn: the same
bytes on every machine, calibration and evaluation crops drawn from separate random streams so no
box is shared. Without labels the metric is fidelity to the float model: top-1 agreement,
agreement on the confident subset and top-5 containment (`compressor.eval.metrics`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

from compressor.errors import MissingExtraError

Split = Literal["calib", "eval"]
# scikit-image photographs that load without a download (colour and greyscale scenes, textures,
# microscopy, astronomy), plus scikit-learn's two sample photographs.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
                  "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
                  "retina", "rocket", "stereo_motorcycle", "text")
# Separate streams: a calibration crop is never an evaluation crop.
SEEDS: dict[str, int] = {"calib": 1, "eval": 2}
SCALE = (0.08, 1.0)  # fraction of the photo's area a crop covers (Inception's random-resized crop)
RATIO = (3 / 4, 4 / 3)
CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in the index order of ImageNet classifiers."""
    return CLASSES_FILE.read_text().splitlines()


@cache
def photographs() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, RGB uint8 image) for every source photograph, in a fixed order."""
    try:
        from skimage import data
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise MissingExtraError("the photo-crop image set", "bench", e.name or "scikit-image") from None
    out = []
    for name in SKIMAGE_PHOTOS:
        img = getattr(data, name)()
        out.append((name, _rgb(img[0] if isinstance(img, tuple) else img)))
    sample = load_sample_images()
    out += [(Path(f).stem, _rgb(img)) for f, img in zip(sample.filenames, sample.images, strict=True)]
    return tuple(out)


def crops(split: Split, count: int, size: int = 224) -> np.ndarray:
    """`count` crops of `split` as (count, size, size, 3) uint8, photographs taken in turn."""
    from PIL import Image

    if split not in SEEDS:
        raise ValueError(f"split must be one of {sorted(SEEDS)}, got {split!r}")
    rng = np.random.default_rng(SEEDS[split])
    photos = photographs()
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        img = photos[i % len(photos)][1]
        top, left, h, w = _box(rng, *img.shape[:2])
        crop = Image.fromarray(img[top:top + h, left:left + w]).resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(crop)[:, ::-1] if rng.random() < 0.5 else np.asarray(crop)
    return out


def _box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """A random box covering SCALE of the area with an aspect ratio in RATIO (the whole image if none fits)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = np.exp(rng.uniform(np.log(RATIO[0]), np.log(RATIO[1])))
        w, h = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) / max(float(img.max()), 1.0) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])
