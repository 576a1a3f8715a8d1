"""The conformance suite (benches/conformance.py): reference values hold, and its check catches regressions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benches.conformance import REFERENCE, Row, check, reference_from  # noqa: E402


def test_check_flags_drops_beyond_tolerance_and_refusals() -> None:
    rows = [Row("m", "int8-ptq/onnx", "k", {"agreement": 90.0, "confident": 99.0}),
            Row("m", "w4a4-repq", note="refused: a ViT method"),
            Row("m", "ort-static-minmax", "p", {"agreement": 50.0})]
    reference = reference_from(rows, {"mnist": 0.5, "photo": 1.5})
    assert set(reference["m"]) == {"int8-ptq/onnx"}  # peers and refusals set no reference
    assert check(rows, reference) == []
    worse = [Row("m", "int8-ptq/onnx", "k", {"agreement": 88.0, "confident": 99.0})]
    assert check(worse, reference) == ["m int8-ptq/onnx: agreement 88.0 below 88.50 (reference 90.0 − tolerance 1.5)"]
    refused = [Row("m", "int8-ptq", note="refused: something broke")]
    assert "refused: something broke" in check(refused, reference)[0]


def test_reference_file_covers_every_conformance_model() -> None:
    from benches.conformance import MODELS

    reference = yaml.safe_load(REFERENCE.read_text())
    assert set(MODELS) <= set(reference)
    assert all("int8-ptq/onnx" in entries for entries in reference.values())


@pytest.mark.slow
def test_conformance_reference_values_hold() -> None:
    """The int8 recipes on EfficientNet-Lite0 (real ImageNet weights, 600 photo crops) and the MNIST smoke
    models, run end to end through compress and measured in ONNX Runtime, against the reference file."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "conformance.py"), "--no-peers", "--batch-sizes", "1",
         "--recipes", "int8-ptq,int8-ptq-edge", "--check"], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_update_replaces_what_ran_drops_refusals_and_keeps_the_rest() -> None:
    from benches.conformance import updated

    old = {"agreement": 50.0, "tolerance": 1.5}
    reference = {"m": {"a/onnx": old, "b/onnx": old, "b/executorch": old, "c/onnx": old}, "n": {"a/onnx": old}}
    rows = [Row("m", "a/onnx", "k", {"agreement": 90.0}), Row("m", "b", note="refused: no longer applies")]
    new = updated(reference, rows)
    assert new["m"] == {"a/onnx": {"agreement": 90.0, "tolerance": 1.5}, "c/onnx": old}
    assert new["n"] == reference["n"]
    assert reference["m"]["b/onnx"] == old  # the caller's dict is not changed
