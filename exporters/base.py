"""What every deployment target provides: availability, an atomic export, a runnable artifact.

An `Artifact` runs inputs in its own runtime, so accuracy and latency in the report are
measured on the file that ships, not on the PyTorch model that produced it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from compressor.errors import CompressorError
from compressor.eval.metrics import Runner

if TYPE_CHECKING:
    import torch

    from compressor.graph import Graph

MAX_BATCH = 4096  # upper bound of a symbolic batch axis (some backends need a finite range)


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

    def not_measured(self) -> str | None:
        """Why this artifact cannot run on this machine (the report shows `not_measured: <reason>`
        instead of numbers it could not measure), or None when `runner` works here."""
        return None

    @abstractmethod
    def runner(self, threads: int) -> Runner:
        """A callable mapping a float32 NCHW batch to float32 outputs, in the target runtime."""


def in_fixed_batches(run: Runner, batch: int) -> Runner:
    """A runner for any batch size over one that takes exactly `batch` inputs (a static-shape
    library or program): split, pad the last chunk with zeros, drop the padded rows."""

    def run_any(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.shape[0]
        outs = []
        for start in range(0, n, batch):
            chunk = x[start:start + batch]
            if len(chunk) < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *x.shape[1:]), np.float32)])
            outs.append(np.asarray(run(chunk))[: min(batch, n - start)])
        return np.concatenate(outs).astype(np.float32, copy=False)

    return run_any


def in_chunks(run: Runner, most: int) -> Runner:
    """A runner for any batch size over a dynamic-batch one that takes at most `most` rows (a
    planned memory capacity, a bounded predict call): split without padding."""

    def run_any(x: np.ndarray) -> np.ndarray:
        if len(x) <= most:
            return run(x)
        return np.concatenate([run(x[i:i + most]) for i in range(0, len(x), most)]).astype(np.float32, copy=False)

    return run_any


class ExportOptions(BaseModel):
    """Per-target settings (recipe `export_options: {target: {...}}`); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Exporter(ABC):
    """One deployment target. Subclasses name their extra so a missing backend says what to install."""

    target: ClassVar[str]
    suffix: ClassVar[str]  # of the artifact: model.onnx, model.pt2, model.mlpackage (a folder)
    extra: ClassVar[str | None] = None
    Options: ClassVar[type[ExportOptions]] = ExportOptions

    def __init__(self, **options: object) -> None:
        try:
            self.options = self.Options(**options)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise CompressorError(f"export options for {self.target}: {problems}. Allowed: "
                                  f"{', '.join(sorted(self.Options.model_fields)) or 'none'}.") from None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, '') if the backend imports here, else (False, reason naming the extra)."""
        return True, ""

    def for_baseline(self) -> Exporter:
        """The exporter for the float baseline of this target. Options that compress on their own
        (CoreML's weight palettization) are switched off there, or the baseline would not be float."""
        return self

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


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """`atomic_path` for artifacts that are folders (.mlpackage, the TensorRT bundle): the folder
    is built under a temporary name and renamed into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent))
    tmp_path.rmdir()  # writers such as coremltools' save() want to create the folder themselves
    try:
        yield tmp_path
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path)


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Silence what exporting libraries print on stderr, their warnings, and the named loggers below
    ERROR (torch.export's pytree notices, coremltools' progress bars): a compress run shows its own
    progress. Errors still raise."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def export_program(gm: torch.nn.Module, graph: Graph, dynamic: bool | None = None, max_batch: int = MAX_BATCH,
                   what: str = "the graph") -> torch.export.ExportedProgram:
    """`gm` (the graph's module, or a rewrite of it) through torch.export, non-strict.

    `dynamic`: True demands a symbolic batch axis (1..`max_batch`), False a static one (the example's
    batch), None tries dynamic and falls back to static; a graph captured with a fixed batch is static.
    """
    import torch

    tries: list[tuple | None] = []
    if dynamic is not False and graph.fixed_batch is None:
        tries.append(({0: torch.export.Dim("batch", min=1, max=max_batch)},))
    if not dynamic:
        tries.append(None)
    if not tries:
        raise CompressorError(f"a dynamic batch was asked for, but the graph was captured with a fixed batch of "
                              f"{graph.fixed_batch}.")
    errors = []
    for shapes in tries:
        try:
            with quiet():
                return torch.export.export(gm, tuple(graph.example_inputs), dynamic_shapes=shapes, strict=False)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise CompressorError(f"torch.export of {what} failed: {errors[-1]}")
