"""Calibration and evaluation data."""

from compressor.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from compressor.data.sources import DataSource, fingerprint, from_iterable, open_source

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DataSource", "Preprocess", "fingerprint", "from_iterable",
           "open_source"]
