"""`torch` target: the graph as a `torch.export` program (`.pt2`), run by PyTorch itself.

This is where compressor's own CPU kernels ship: a graph whose Linears `sparse.kernels` swapped
for the block-sparse kernel cannot be expressed in ONNX, but it can be saved, reloaded and run as
a program whose custom ops resolve once `compressor.kernels` is imported. Also the natural target
for users who serve with PyTorch (TorchServe, a Python service) rather than a separate runtime.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

import compressor.kernels  # noqa: F401  (registers the custom ops a saved program may call)
from compressor.eval.metrics import Runner
from exporters.base import Artifact, Exporter, atomic_path, export_program, quiet

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
        program = export_program(graph.gm, graph, what=f"the {precision} graph")
        # saved into memory, then written by Python: torch's zip writer aborts the whole process
        # (a C++ exception from its destructor) when the disk fills up under it
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
            load_program(tmp)  # a program that does not reload must not ship
        return TorchArtifact("torch", path, precision, {"format": "torch.export .pt2", "torch": torch.__version__})


def load_program(path: Path) -> torch.export.ExportedProgram:
    with quiet():
        return torch.export.load(str(path))
