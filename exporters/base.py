"""What every deployment target provides: availability, an atomic export, a runnable artifact.

An `Artifact` runs inputs in its own runtime, so accuracy and latency in the report are
measured on the file that ships, not on the PyTorch model that produced it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from compressor.eval.metrics import Runner

if TYPE_CHECKING:
    from compressor.graph import Graph


@dataclass
class Artifact(ABC):
    """An exported model file plus the means to run it in its runtime."""

    target: str
    path: Path
    precision: str
    meta: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in _files(self.path))

    @abstractmethod
    def runner(self, threads: int) -> Runner:
        """A callable mapping a float32 NCHW batch to float32 outputs, in the target runtime."""


class Exporter(ABC):
    """One deployment target. Subclasses name their extra so a missing backend says what to install."""

    target: ClassVar[str]
    suffix: ClassVar[str]  # of the artifact file: model.onnx, model.pt2
    extra: ClassVar[str | None] = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, '') if the backend imports here, else (False, reason naming the extra)."""
        return True, ""

    @abstractmethod
    def export(self, graph: Graph, path: Path, precision: str) -> Artifact:
        """Write `graph` to `path` atomically and return the runnable artifact."""


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash or an exception mid-write leaves no half-written artifact under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the real suffix: some writers (torch.export.save) insist on it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
