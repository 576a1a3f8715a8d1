"""Accuracy and latency measured on artifacts in their runtimes."""

from compressor.eval.confidence import paired_drop, wilson_interval
from compressor.eval.latency import measure
from compressor.eval.metrics import (
    Outputs,
    agreement,
    collect,
    confident_agreement,
    hits,
    score,
    sqnr_db,
    top1,
    top5_containment,
    torch_runner,
)

__all__ = ["Outputs", "agreement", "collect", "confident_agreement", "hits", "measure", "paired_drop", "score",
           "sqnr_db", "top1", "top5_containment", "torch_runner", "wilson_interval"]
