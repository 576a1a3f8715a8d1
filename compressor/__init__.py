"""compressor: compression and deployment for PyTorch vision models."""

from compressor.api import CompressResult, compress
from compressor.errors import CompressorError

__version__ = "0.1.0"
__all__ = ["CompressResult", "CompressorError", "__version__", "compress"]
