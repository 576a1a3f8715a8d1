"""Sparse execution passes: kernels that turn pruned zeros into latency."""
