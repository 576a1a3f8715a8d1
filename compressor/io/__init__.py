"""Loading user models."""

from compressor.io.load import LoadedModel, load_model, load_module

__all__ = ["LoadedModel", "load_model", "load_module"]
