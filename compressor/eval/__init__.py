"""Accuracy and latency measured on artifacts in their runtimes."""

from compressor.eval.latency import measure
from compressor.eval.metrics import Outputs, agreement, collect, score, sqnr_db, top1, torch_runner

__all__ = ["Outputs", "agreement", "collect", "measure", "score", "sqnr_db", "top1", "torch_runner"]
