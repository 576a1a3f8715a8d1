"""Where candidates are built: in this process, or as Ray tasks (`--ray auto` / `--ray ADDRESS`).

A task gets everything it needs by value (the recipe, the model or its path, the data paths) and
returns its measurements with the artifact files' bytes, so it may run on any node of a cluster;
the driver then times every artifact on its own machine, interleaved (`compressor.search.driver`).
Ray starts each task's worker with one thread for the math libraries (OMP_NUM_THREADS=1 for a task
of one CPU), so 2 workers use 2 cores as 2 in-process threads would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from compressor.errors import CompressorError, MissingExtraError

J = TypeVar("J")
R = TypeVar("R")


class InProcess:
    """Candidates one after another in this process."""

    workers = 1
    label = "in-process"

    def imap(self, fn: Callable[[J], R], jobs: Sequence[J]) -> Iterator[R]:
        for job in jobs:
            yield fn(job)

    def close(self) -> None:
        return None


class RayEngine:
    """Candidates as Ray tasks of one CPU each; results in completion order.

    `address` "auto" starts a local Ray with `workers` CPUs (default: all of this machine's);
    anything else is a cluster address to join (ray://host:10001 or host:6379), whose size is its own.
    """

    def __init__(self, address: str, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise MissingExtraError("compress search --ray", "ray", "ray") from None
        self._ray = ray
        local = address == "auto"
        if workers is not None and not local:
            raise CompressorError("--workers sets the size of a local Ray (--ray auto); a cluster joined by "
                                  "address has its own size.")
        try:
            if local:
                ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise CompressorError(f"--ray {address}: could not {'start' if local else 'join'} Ray ({e}). "
                                  "Use --ray auto to start one on this machine, or the address `ray status` "
                                  "prints on the cluster's head node.") from None
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self.label = f"ray ({'local' if local else address}, {self.workers} CPU)"

    def imap(self, fn: Callable[[J], R], jobs: Sequence[J]) -> Iterator[R]:
        remote = self._ray.remote(num_cpus=1, max_retries=0)(fn)
        pending: list[Any] = [remote.remote(job) for job in jobs]
        try:
            while pending:
                done, pending = self._ray.wait(pending, num_returns=1)
                yield self._ray.get(done[0])
        finally:
            for ref in pending:  # interrupted: nothing keeps computing for a search that is over
                self._ray.cancel(ref, force=True)

    def close(self) -> None:
        self._ray.shutdown()


def engine(ray: str | None, workers: int | None) -> InProcess | RayEngine:
    if ray is None:
        return InProcess()
    return RayEngine(ray, workers)
