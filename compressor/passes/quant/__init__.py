"""Quantization passes and quantizers."""
