"""Shared fixtures: small models from the zoo and small real-data folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compressor import zoo

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "calibration_data" / "mnist"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def vit_tiny() -> torch.nn.Module:
    """A 2-block ViT on 28x28 inputs, random weights (structure tests only)."""
    torch.manual_seed(0)
    return zoo.build("vit_mnist", depth=2).eval()


@pytest.fixture(scope="session")
def mnist_images() -> np.ndarray:
    """64 real MNIST calibration digits as uint8 (N, 28, 28)."""
    from PIL import Image

    files = sorted((MNIST / "calib").glob("*.png"))[:64]
    return np.stack([np.asarray(Image.open(f)) for f in files])


@pytest.fixture(scope="session")
def mnist_calib_tensor(mnist_images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(mnist_images).float().div(255).unsqueeze(1)
    return (x - 0.1307) / 0.3081
