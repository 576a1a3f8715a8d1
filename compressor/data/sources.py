"""Calibration and evaluation data from folders and array files, streamed in batches.

Folders of images are decoded lazily batch by batch so calibration memory stays bounded by the
batch, not the data set. Array files are memory-mapped where numpy allows it.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compressor.data.preprocess import Preprocess
from compressor.errors import CompressorError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ARRAY_SUFFIXES = {".npy", ".npz", ".pt"}
LABEL_FILES = ("labels.npy", "labels.txt")
Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class DataSource:
    """A sized, re-iterable source of preprocessed (images, labels) batches."""

    description: str
    items: list[Path] | np.ndarray | torch.Tensor
    labels: np.ndarray | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def batches(self, batch_size: int, limit: int | None = None, fill: bool = False) -> Iterator[Batch]:
        """Batches in order; with `fill`, a short last batch is completed from the start of the data.

        `fill` serves models exported for one batch size: the caller drops the extra rows.
        """
        n = len(self) if limit is None else min(limit, len(self))
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rows = list(range(start, stop))
            if fill:
                rows += [i % n for i in range(stop, start + batch_size)]
            x = self._load(start, stop)
            if len(rows) > stop - start:
                x = torch.cat([x, *(self._load(i, i + 1) for i in rows[stop - start:])])
            y = None if self.labels is None else torch.as_tensor(self.labels[rows], dtype=torch.long)
            yield x, y

    def _load(self, start: int, stop: int) -> torch.Tensor:
        chunk = self.items[start:stop]
        if isinstance(chunk, list):
            imgs = [_preprocess(_read_image(p, self.preprocess.channels), self.preprocess, p) for p in chunk]
            shapes = {tuple(i.shape) for i in imgs}
            if len(shapes) > 1:
                raise CompressorError(f"{self.description}: images have different sizes {sorted(shapes)}; set a "
                                      "preprocessing size (--size H,W) so they are resized to the model input.")
            return torch.stack(imgs)
        return _array_batch(chunk, self.preprocess, self.description)

    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one preprocessed item (C, H, W)."""
        return tuple(self._load(0, 1).shape[1:])


def _read_image(path: Path, channels: int | None) -> np.ndarray:
    """Decode one image; its size is checked from the header first, so a small file that claims
    billions of pixels (a decompression bomb) is refused before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                mode = {1: "L", 3: "RGB"}.get(channels or 0, "L" if im.mode in ("L", "I", "1", "I;16") else "RGB")
                return np.asarray(im.convert(mode))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CompressorError(f"{path}: image too large to decode safely (its header claims more than "
                              f"{Image.MAX_IMAGE_PIXELS:,} pixels: a possible decompression bomb). Resize it or "
                              "remove it from the folder.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise CompressorError(f"{path}: not a readable image ({e}). Remove it from the folder or fix it.") from None


def _to_chw(a: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    """One image as (C, H, W); accepts HW, HWC (C in 1/3/4) and CHW."""
    t = torch.as_tensor(np.array(a)) if not isinstance(a, torch.Tensor) else a
    if t.dim() == 2:
        return t.unsqueeze(0)
    if t.dim() == 3:
        if t.shape[0] in (1, 3):
            return t
        if t.shape[-1] in (1, 3, 4):
            return t[..., :3].permute(2, 0, 1) if t.shape[-1] == 4 else t.permute(2, 0, 1)
    raise CompressorError(f"{where}: cannot read an image of shape {tuple(t.shape)}; "
                          "expected (H, W), (H, W, C) or (C, H, W) per item.")


def _preprocess(img: np.ndarray | torch.Tensor, spec: Preprocess, where: Path | str) -> torch.Tensor:
    """Raw pixels (uint8, or float already in [0, 1]) to a normalized float tensor."""
    t = _to_chw(img, str(where))
    is_pixels = t.dtype == torch.uint8
    t = t.float() / 255.0 if is_pixels else t.float()
    if spec.channels is not None and t.shape[0] != spec.channels:
        t = t.mean(0, keepdim=True) if spec.channels == 1 else t.expand(3, -1, -1)
    if spec.size is not None and tuple(t.shape[1:]) != tuple(spec.size):
        t = torch.nn.functional.interpolate(t[None], size=spec.size, mode="bilinear",
                                            align_corners=False, antialias=True)[0]
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    if mean.numel() not in (1, t.shape[0]) or std.numel() not in (1, t.shape[0]):
        raise CompressorError(f"{where}: preprocessing mean/std have {mean.numel()}/{std.numel()} values but "
                              f"the image has {t.shape[0]} channels; give one value or one per channel.")
    return (t - mean) / std


def _array_batch(chunk: np.ndarray | torch.Tensor, spec: Preprocess, where: str) -> torch.Tensor:
    """Array items: uint8 are raw pixels (preprocessed); float items are taken as model-ready."""
    t = torch.from_numpy(np.array(chunk)) if isinstance(chunk, np.ndarray) else chunk
    if t.dtype == torch.uint8:
        return torch.stack([_preprocess(item, spec, where) for item in t])
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4:
        raise CompressorError(f"{where}: array data must be (N, H, W) or (N, C, H, W); got {tuple(t.shape)}.")
    return finite(t.float(), where)


def finite(x: torch.Tensor, where: str) -> torch.Tensor:
    """`x`, if every value is a number: one NaN would poison an observer's range or a metric."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
        raise CompressorError(f"{where}: {int(bad.sum())} NaN or infinite values (in item(s) {rows[:5]} of a batch "
                              f"of {len(x)}); clean the data or drop those items.")
    return x


def _labels(values: np.ndarray | torch.Tensor, where: str, n: int) -> np.ndarray:
    """Class indices: whole numbers >= 0, one per item (floats that are not whole are a mistake)."""
    a = np.asarray(values.numpy() if isinstance(values, torch.Tensor) else values)
    if a.ndim != 1 or len(a) != n:
        count = len(a) if a.ndim == 1 else f"an array of shape {a.shape} of"
        raise CompressorError(f"{where}: {count} labels for {n} items; give one class index per item, "
                              "in the sorted order of the file names.")
    if not (np.issubdtype(a.dtype, np.integer) or (np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all()
                                                  and (a == np.round(a)).all())):
        raise CompressorError(f"{where}: labels must be whole class indices; found {a.dtype} values such as "
                              f"{a[:3].tolist()}.")
    if len(a) and a.min() < 0:
        raise CompressorError(f"{where}: labels must be class indices >= 0; found {int(a.min())}.")
    return a.astype(np.int64)


def _folder_items(root: Path) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """Images directly in `root`, or in one subfolder per class (the class is the label)."""
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if files:
        return files, _label_file(root, len(files)), None
    class_dirs = [d for d in subdirs if any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())]
    if not class_dirs:
        raise CompressorError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} "
                              "directly in the folder or in one subfolder per class). "
                              "Point --calib/--eval at a folder of images or an .npy/.npz/.pt file.")
    names = [d.name for d in class_dirs]
    numeric = all(n.isdigit() for n in names)  # folders 0..9 keep their digit as the label
    label_of = {n: (int(n) if numeric else i) for i, n in enumerate(names)}
    items, labels = [], []
    for d in class_dirs:
        imgs = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        items += imgs
        labels += [label_of[d.name]] * len(imgs)
    return items, np.asarray(labels, dtype=np.int64), names


def _label_file(root: Path, n: int) -> np.ndarray | None:
    for name in LABEL_FILES:
        p = root / name
        if p.exists():
            try:
                labels = np.load(p, allow_pickle=False) if p.suffix == ".npy" else np.loadtxt(p, ndmin=1)
            except (ValueError, OSError, EOFError) as e:
                raise CompressorError(f"{p}: not a readable label file ({' '.join(str(e).split())[:200]}); write "
                                      "one integer class index per image (labels.txt, one per line, or "
                                      "labels.npy).") from None
            return _labels(labels, str(p), n)
    return None


def _array_items(path: Path) -> tuple[np.ndarray | torch.Tensor, np.ndarray | None]:
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False), None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            xkey = next((k for k in ("x", "images", "data", "arr_0") if k in z.files), None)
            if xkey is None:
                raise CompressorError(f"{path}: no image array; name it 'x' or 'images' (found {z.files}).")
            ykey = next((k for k in ("y", "labels", "targets") if k in z.files), None)
            return z[xkey], (None if ykey is None else z[ykey])
    obj = torch.load(path, weights_only=True, map_location="cpu")
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, dict) and isinstance(obj.get("x", obj.get("images")), torch.Tensor):
        x = obj.get("x", obj.get("images"))
        y = obj.get("y", obj.get("labels"))
        return x, (None if y is None else torch.as_tensor(y).numpy())
    raise CompressorError(f"{path}: expected a tensor or a dict with 'x' (and optionally 'y') tensors.")


def open_source(path: str | Path, preprocess: Preprocess | None = None, role: str = "data") -> DataSource:
    """Open a folder of images or an .npy/.npz/.pt file as a data source."""
    p = Path(path)
    spec = preprocess or Preprocess()
    if not p.exists():
        raise CompressorError(f"{role} data not found: {p}. Pass an existing folder or .npy/.npz/.pt file.")
    if p.is_dir():
        items, labels, classes = _folder_items(p)
        return DataSource(str(p), items, labels, spec, classes)
    if p.suffix.lower() not in ARRAY_SUFFIXES:
        raise CompressorError(f"{p}: unsupported {role} file type '{p.suffix}'; use a folder of images "
                              "or an .npy/.npz/.pt file.")
    try:
        items, labels = _array_items(p)
    except pickle.UnpicklingError:
        raise CompressorError(f"{p}: holds pickled Python objects besides tensors; data files are loaded without "
                              "running code from them. Save a tensor or a dict of tensors ({'x': ..., 'y': ...}) "
                              "with torch.save, or an .npy/.npz file.") from None
    except (ValueError, OSError, RuntimeError, EOFError, KeyError) as e:
        raise CompressorError(f"{p}: cannot read {role} array ({' '.join(str(e).split())[:300]}).") from None
    if len(items) == 0:
        raise CompressorError(f"{p}: the {role} array is empty.")
    return DataSource(str(p), items, None if labels is None else _labels(labels, str(p), len(items)), spec)


def from_iterable(batches: Iterable, description: str = "in-memory loader") -> DataSource:
    """Wrap a user's DataLoader-like iterable of tensors or (x, y) pairs (API callers)."""
    xs, ys = [], []
    for b in batches:
        x, y = (b[0], b[1]) if isinstance(b, (tuple, list)) else (b, None)
        xs.append(torch.as_tensor(x).float())
        if y is not None:
            ys.append(torch.as_tensor(y).long())
    if not xs:
        raise CompressorError(f"{description}: yielded no batches.")
    x = finite(torch.cat(xs), description)
    labels = _labels(torch.cat(ys), description, len(x)) if len(ys) == len(xs) else None
    return DataSource(description, x, labels)


def fingerprint(source: DataSource, batch_size: int = 64, limit: int | None = None) -> str:
    """SHA-256 of the preprocessed tensors, so a report says exactly which data calibrated it."""
    h = hashlib.sha256()
    for x, y in source.batches(batch_size, limit):
        h.update(x.contiguous().numpy().tobytes())
        if y is not None:
            h.update(y.numpy().tobytes())
    return h.hexdigest()
