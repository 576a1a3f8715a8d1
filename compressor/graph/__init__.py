"""The graph IR: PyTorch's exported FX graph with pattern matching and annotations."""

from compressor.graph.capture import capture
from compressor.graph.graph import KINDS, Graph, is_kind
from compressor.graph.sdpa import decompose_sdpa

__all__ = ["KINDS", "Graph", "capture", "decompose_sdpa", "is_kind"]
