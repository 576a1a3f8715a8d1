"""Passes: typed parameters, one `apply(graph, ctx)`, registered by name.

A recipe names passes and their parameters; the registry turns each entry into a validated
parameter model before any compute runs, so a typo in a recipe fails in milliseconds with the
file and key rather than after calibration.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from compressor.data.sources import DataSource
from compressor.graph.graph import Graph
from compressor.progress import Progress


class PassParams(BaseModel):
    """Base for pass parameters: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class PassRecord:
    """What one pass did, for the report."""

    name: str
    params: dict[str, Any]
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass may use besides the graph: data, device, seeded RNG, progress and a log."""

    calib: DataSource | None = None
    calib_batch_size: int = 32
    calib_limit: int | None = None
    fixed_batch: bool = False  # the graph runs at exactly calib_batch_size (a static-batch export)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    teacher: Graph | None = None  # the model as loaded, before any pass (distillation, fidelity checks)
    progress: Progress = field(default_factory=Progress)
    log: list[PassRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = torch.Generator().manual_seed(self.seed)

    def calibration_batches(self) -> Iterator[torch.Tensor]:
        if self.calib is None:
            raise ValueError("this pass needs calibration data")
        for x, _ in self.calib.batches(self.calib_batch_size, self.calib_limit, fill=self.fixed_batch):
            yield x.to(self.device)

    @contextlib.contextmanager
    def limited(self, n: int) -> Iterator[None]:
        """Use at most `n` calibration images inside the block (and never more than already allowed)."""
        saved = self.calib_limit
        self.calib_limit = min(saved or n, n)
        try:
            yield
        finally:
            self.calib_limit = saved

    def calibration_size(self) -> int:
        n = len(self.calib) if self.calib is not None else 0
        return n if self.calib_limit is None else min(n, self.calib_limit)


class Pass(ABC):
    """One graph transformation. Subclasses set `name`, `Params` and implement `apply`."""

    name: ClassVar[str]
    Params: ClassVar[type[PassParams]] = PassParams
    needs_calibration: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, params: PassParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        """Transform `graph` in place; return a summary for the report."""

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        start = time.perf_counter()
        summary = self.apply(graph, ctx)
        ctx.log.append(PassRecord(self.name, self.params.model_dump(mode="json"),
                                  round(time.perf_counter() - start, 3), summary))
        return graph


PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to recipes under `cls.name`."""
    if cls.name in PASSES and PASSES[cls.name] is not cls:
        raise ValueError(f"pass name {cls.name!r} registered twice")
    PASSES[cls.name] = cls
    return cls
