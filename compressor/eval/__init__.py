"""Accuracy and latency measured on artifacts in their runtimes."""

from compressor.eval.confidence import paired_drop, wilson_interval
from compressor.eval.latency import measure
from compressor.eval.metrics import Outputs, agreement, collect, hits, score, sqnr_db, top1, torch_runner

__all__ = ["Outputs", "agreement", "collect", "hits", "measure", "paired_drop", "score", "sqnr_db", "top1",
           "torch_runner", "wilson_interval"]
