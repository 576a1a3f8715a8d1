"""Crafted inputs for the fault suites: a tiny model, payload-carrying files, a previous run."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from compressor import zoo
from compressor.cli import app

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "calibration_data" / "mnist"
TINY_CONFIG = {"in_chans": 1, "num_classes": 10, "widths": [4, 4, 4]}
PREPROCESS = {"size": [28, 28], "channels": 1, "mean": [0.1307], "std": [0.3081]}
QUICK = ("name: quick\npasses:\n  - pass: reparam.fold_bn\ncalibration: {batch_size: 16}\n"
         "benchmark: {batch_sizes: [2], warmup: 0, runs: 3, min_seconds: 0, max_runs: 3}\n")


# -- files --------------------------------------------------------------------------------------------
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return zoo.build("resnet", **TINY_CONFIG).eval()


def checkpoint(path: Path, model: nn.Module | None = None, **fields: object) -> Path:
    ckpt = {"format": "compressor.checkpoint", "version": 1, "arch": "resnet", "config": TINY_CONFIG,
            "state_dict": (model or tiny_model()).state_dict(), "preprocess": PREPROCESS}
    torch.save({**ckpt, **fields}, path)
    return path


class Payload:
    """Unpickling this runs `touch <marker>`: what a malicious model file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Overwrite(nn.Module):
    """TorchScript whose forward overwrites the first bytes of a file: code, not a model."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8).fill_(65)
        return x.flatten(1)[:, :10] + written[:1].float() * 0


class DividesByZero(nn.Module):
    """Runs, and returns infinities: a model whose numbers mean nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) / 0.0


def pt2_variant(src: Path, dst: Path, edit) -> Path:
    """A copy of a .pt2 archive with `edit(records)` applied to its {name: bytes}."""
    from torch.export.pt2_archive import PT2ArchiveReader, PT2ArchiveWriter

    reader = PT2ArchiveReader(str(src))
    records = {n: reader.read_bytes(n) for n in reader.get_file_names()
               if not n.startswith(".data/") and n != "byteorder"}
    edit(records)
    with PT2ArchiveWriter(str(dst)) as w:
        for name, data in records.items():
            w.write_bytes(name, data)
    return dst


def edit_program(edit):
    def apply(records: dict[str, bytes]) -> None:
        doc = json.loads(records["models/model.json"])
        edit(doc)
        records["models/model.json"] = json.dumps(doc).encode()
    return apply


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def digits(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    files = sorted((MNIST / "test").glob("*/*.png"))[:: 1000 // n][:n]
    x = np.stack([np.asarray(Image.open(f)) for f in files])
    return x, np.asarray([int(f.parent.name) for f in files])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` (hidden ones too), with a hash of each file's bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def previous_run(out: Path) -> None:
    """The files of an earlier run (and a file of the user's) that a failed run must leave alone."""
    (out / "model.mlpackage").mkdir(parents=True)
    (out / "model.mlpackage" / "weights.bin").write_bytes(b"old weights")
    (out / "model.onnx").write_bytes(b"old int8 model")
    (out / "report.json").write_text(json.dumps({"schema_version": 3, "files": ["model.mlpackage", "model.onnx",
                                                                                "report.json"]}))
    (out / "notes.txt").write_text("the user's own notes")


# warnings Python does not print by default (outside __main__); any other would print beside the message
HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_cli(args: list[str]):
    """The CLI in-process at a 40-column terminal; `.warnings` lists what a real run would print
    beside its message (pytest would otherwise swallow it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, args, env={"COLUMNS": "40"}, catch_exceptions=False)
    result.warnings = [str(w.message)[:200] for w in caught if not issubclass(w.category, HIDDEN_BY_DEFAULT)]
    return result


