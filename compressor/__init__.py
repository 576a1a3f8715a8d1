"""compressor: compression and deployment for PyTorch vision models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compressor.errors import CompressorError, ToolchainError

if TYPE_CHECKING:
    from compressor.api import CompressResult, compress

__version__ = "0.1.0"
__all__ = ["CompressResult", "CompressorError", "ToolchainError", "__version__", "compress"]


def __getattr__(name: str) -> Any:
    """`compress` loads the whole pipeline; resolve it on first use so `exporters` and the
    library's submodules can import `compressor.errors` without a cycle."""
    if name in ("compress", "CompressResult"):
        from compressor import api

        return getattr(api, name)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
