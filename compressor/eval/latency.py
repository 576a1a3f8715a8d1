"""Latency of artifacts in their runtimes, measured side by side.

Runs of the compared artifacts are interleaved round by round, so a slow moment of a shared
machine hits all of them alike and their ratio stays meaningful. No live progress display runs
while timing: on a 2-core machine its redraw thread alone added about a millisecond per run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from compressor.eval.metrics import Runner
from compressor.progress import Progress


def measure(runners: dict[str, Runner], input_shape: Sequence[int], batch_sizes: Sequence[int],
            warmup: int, runs: int, progress: Progress, seed: int = 0, min_seconds: float = 0.0,
            max_runs: int = 2000) -> dict[str, dict[int, dict[str, float]]]:
    """{name: {batch: {median, p90, mean, runs}}} in ms, after `warmup` untimed runs each.

    At least `runs` rounds, more until `min_seconds` were spent timing (at most `max_runs`).
    """
    rng = np.random.default_rng(seed)
    result: dict[str, dict[int, dict[str, float]]] = {name: {} for name in runners}
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *input_shape[1:]), dtype=np.float32)
        for run in runners.values():
            for _ in range(warmup):
                run(x)
        times: dict[str, list[float]] = {name: [] for name in runners}
        progress.info(f"timing batch {batch}: interleaved rounds of {', '.join(runners)}")
        began = time.perf_counter()
        rounds = 0
        while rounds < max_runs and (rounds < runs or time.perf_counter() - began < min_seconds):
            for name, run in runners.items():
                start = time.perf_counter()
                run(x)
                times[name].append((time.perf_counter() - start) * 1e3)
            rounds += 1
        for name, ts in times.items():
            arr = np.asarray(ts)
            result[name][batch] = {"median": round(float(np.median(arr)), 4),
                                   "p90": round(float(np.percentile(arr, 90)), 4),
                                   "mean": round(float(arr.mean()), 4), "runs": len(ts)}
    return result
