"""Shared fixtures: small models from the zoo and small real-data folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from compressor import zoo
from compressor.data import DataSource, Preprocess, open_source

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "calibration_data" / "mnist"

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _every_report_matches_the_published_schema():
    """Every report a test builds is validated against compressor/report/report.schema.json (the
    validation error then fails that run, with the field that broke the schema)."""
    from compressor.report import report as module

    validator = jsonschema.Draft202012Validator(json.loads(module.SCHEMA_FILE.read_text()))
    original = module.build_report

    def checked(*args, **kwargs):
        built = original(*args, **kwargs)
        validator.validate(built)
        json.dumps(built, allow_nan=False)  # strict JSON too
        return built

    module.build_report = checked
    yield
    module.build_report = original


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


@pytest.fixture(scope="session")
def mnist_vit() -> tuple[torch.nn.Module, DataSource, torch.Tensor, torch.Tensor]:
    """The bundled trained MNIST ViT, the calibration source, and the 1000 test digits with labels."""
    ckpt = torch.load(ROOT / "vit_mnist.pt", weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    spec = Preprocess(**ckpt["preprocess"])
    x, y = map(torch.cat, zip(*open_source(ROOT / "calibration_data/mnist/test", spec).batches(1000), strict=True))
    return model.eval(), open_source(ROOT / "calibration_data/mnist/calib", spec), x, y


@pytest.fixture(scope="session")
def digits224() -> Path:
    """calibration_data/digits224 (generated, not committed): written here if `make install` did not."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_data import write_digits224

    out = ROOT / "calibration_data" / "digits224"
    write_digits224(out)
    return out
