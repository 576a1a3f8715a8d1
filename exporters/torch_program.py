"""`torch` target: the graph as a `torch.export` program (`.pt2`), run by PyTorch itself.

This is where compressor's own CPU kernels ship: a graph whose Linears `sparse.kernels` swapped
for the block-sparse kernel cannot be expressed in ONNX, but it can be saved, reloaded and run as
a program whose custom ops resolve once `compressor.kernels` is imported. Also the natural target
for users who serve with PyTorch (TorchServe, a Python service) rather than a separate runtime.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

import compressor.kernels  # noqa: F401  (registers the custom ops a saved program may call)
from compressor.errors import CompressorError
from compressor.eval.metrics import Runner
from exporters.base import Artifact, Exporter, atomic_path

if TYPE_CHECKING:
    from compressor.graph import Graph


class TorchArtifact(Artifact):
    def runner(self, threads: int) -> Runner:
        module = load_program(self.path).module()

        @torch.inference_mode()
        def run(x: np.ndarray) -> np.ndarray:
            torch.set_num_threads(threads)
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

        return run


class TorchExporter(Exporter):
    target: ClassVar[str] = "torch"
    suffix: ClassVar[str] = ".pt2"

    def export(self, graph: Graph, path: Path, precision: str) -> TorchArtifact:
        batch = torch.export.Dim("batch", min=1, max=4096)
        errors = []
        for dynamic in (({0: batch},), None):
            try:
                with _quiet():
                    program = torch.export.export(graph.gm, graph.example_inputs, dynamic_shapes=dynamic,
                                                  strict=False)
                break
            except Exception as e:
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0]}")
        else:
            raise CompressorError(f"torch.export of the {precision} graph failed: {errors[-1]}")
        with atomic_path(path) as tmp:
            torch.export.save(program, str(tmp))
            load_program(tmp)  # a program that does not reload must not ship
        return TorchArtifact("torch", path, precision, {"format": "torch.export .pt2", "torch": torch.__version__})


def load_program(path: Path) -> torch.export.ExportedProgram:
    with _quiet():
        return torch.export.load(str(path))


@contextlib.contextmanager
def _quiet():
    """torch.export's pytree and tracing notices are noise in a compress run."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
