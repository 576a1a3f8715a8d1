"""Accuracy-aware search over recipes, per-layer mixed precision and targets (`compress search`)."""

from compressor.search.driver import Objective, search

__all__ = ["Objective", "search"]
