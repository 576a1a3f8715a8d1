"""End to end through the CLI: the bundled models, the gate, the Python API and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import compressor
from compressor import zoo
from compressor.cli import app
from compressor.data import Preprocess, open_source
from compressor.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
TEST_SPLIT = ROOT / "calibration_data" / "mnist" / "test"
FAST = ["--batch-sizes", "8", "-q"]


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _ort_top1(path: Path, spec: Preprocess) -> float:
    """Top-1 of an ONNX file on the test split, computed here independently of the report code."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    src = open_source(TEST_SPLIT, spec)
    correct = 0
    for x, y in src.batches(100):
        logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
    return 100.0 * correct / len(src)


def _initializer_bytes(path: Path) -> int:
    return sum(onnx.numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("ckpt", ["vit_mnist.pt", "cnn_mnist.pt"])
def test_bundled_model_meets_accuracy_target_on_the_artifact(tmp_path, ckpt):
    out = tmp_path / "out"
    result = cli(ROOT / ckpt, "--recipe", "int8-ptq", "-o", out, "--max-drop", "0.5", "--junit", tmp_path / "j.xml",
                 *FAST)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["baseline.onnx", "model.onnx", "pareto.png", "recipe.yaml",
                                                     "report.html", "report.json", "report.md"]
    r = json.loads((out / "report.json").read_text())
    art = r["artifacts"][0]
    assert r["schema_version"] == 3 and r["metric"] == "top1" and r["files"] == sorted(p.name for p in out.iterdir())
    gate = r["gate"]
    assert gate["max_drop"] == 0.5 and gate["gate_on"] == "point" and gate["passed"] is True
    assert gate["targets"]["onnx"]["drop"] == art["drop"] == r["accuracy_drop"]
    lo, hi = art["drop_ci95"]
    assert lo < art["drop"] < hi and hi - lo < 3.0  # paired interval on 1000 digits: narrower than ±1.4 each
    assert r["accuracy_drop"] <= 0.5 and r["baseline"]["accuracy"] > 95
    # the reported numbers are those of the ONNX files, recomputed here from scratch
    spec = Preprocess(size=(28, 28), channels=1, mean=(0.1307,), std=(0.3081,))
    assert _ort_top1(out / "model.onnx", spec) == pytest.approx(art["accuracy"], abs=1e-6)
    assert _ort_top1(out / "baseline.onnx", spec) == pytest.approx(r["baseline"]["accuracy"], abs=1e-6)
    assert abs(art["sim_gap"]) <= 0.3
    assert art["size_bytes"] == (out / "model.onnx").stat().st_size < r["baseline"]["size_bytes"]
    assert _initializer_bytes(out / "model.onnx") < 0.35 * _initializer_bytes(out / "baseline.onnx")
    for key in ("median", "p90"):
        assert art["latency_ms"][key] > 0 and r["baseline"]["latency_ms"][key] > 0
    assert art["speedup_vs_baseline"] == pytest.approx(r["baseline"]["latency_ms"]["median"] /
                                                       art["latency_ms"]["median"], rel=1e-3)
    recipe = (out / "recipe.yaml").read_text()
    assert "reduce_range: auto" not in recipe and "sha256:" in recipe and "onnxruntime:" in recipe
    ran = load_recipe(out / "recipe.yaml")  # the resolved recipe loads again and records what ran
    assert ran.gate.max_drop == 0.5 and ran.benchmark.batch_sizes == [8] and ran.preprocess.mean == (0.1307,)
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "0"
    assert "PASSED" in (out / "report.md").read_text()


def test_targets_that_cannot_run_here_are_exported_inspected_and_not_judged(tmp_path):
    """One run, three targets: ONNX is measured; CoreML (no macOS) and TensorRT (no libraries) are
    written and checked but report no numbers, and the gate is judged on what ran."""
    pytest.importorskip("coremltools", reason="the coreml extra is not installed: pip install 'compressor[coreml]'")
    out = tmp_path / "out"
    result = cli(ROOT / "cnn_mnist.pt", "--export", "onnx,coreml,tensorrt", "-o", out, "--max-drop", "0.5",
                 "--gate-on", "lower-bound", "--junit", tmp_path / "j.xml", *FAST)
    assert result.exit_code == 0, result.output
    r = json.loads((out / "report.json").read_text())
    arts = {a["target"]: a for a in r["artifacts"]}
    assert set(arts) == set(r["baselines"]) == {"onnx", "coreml", "tensorrt"}
    assert arts["onnx"]["status"] in ("ok", "slower_than_baseline") and arts["onnx"]["accuracy"] > 95
    for target, reason in (("coreml", "needs macOS"), ("tensorrt", "TensorRT not installed")):
        a = arts[target]
        assert a["status"].startswith("not_measured: ") and reason in a["status"]
        assert a["accuracy"] is None and a["latency_ms"] is None and a["drop"] is None
        assert a["sim_accuracy"] == arts["onnx"]["sim_accuracy"] and a["size_bytes"] > 0
        assert r["gate"]["targets"][target]["passed"] is None
    # 13 before the 3 residual adds ran in int8: one output quantizer more each
    assert arts["coreml"]["checks"]["checks"]["ok"] and arts["coreml"]["checks"]["quant_ops"]["quantize"] == 16
    assert (out / "model.mlpackage").is_dir() and (out / "model.tensorrt" / "trtexec.sh").exists()
    assert r["gate"]["passed"] and r["gate"]["gate_on"] == "lower-bound"
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "0", "2")
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "needs macOS" in page
    # the same run again: compare lines the two up artifact by artifact
    out2 = tmp_path / "out2"
    assert cli(ROOT / "cnn_mnist.pt", "--export", "onnx", "-o", out2, *FAST).exit_code == 0
    compared = subprocess.run([sys.executable, "-c", "from compressor.cli import main; main()", "compare",
                               str(out), str(out2), "--json"], capture_output=True, text=True, check=True)
    rows = {(row["target"], row["artifact"]): row for row in json.loads(compared.stdout)["rows"]}
    assert rows[("onnx", "compressed")]["Δ points"] == "+0.00"
    assert rows[("coreml", "compressed")]["accuracy B"] == "absent"


def test_gate_failure_exits_1_and_says_so(tmp_path):
    recipe = tmp_path / "harsh.yaml"
    recipe.write_text("name: harsh\npasses:\n  - pass: quant.int8_ptq\n    activation_observer: percentile\n"
                      "    percentile: 90.5\n")
    out = tmp_path / "out"
    result = cli(ROOT / "vit_mnist.pt", "-r", recipe, "-o", out, "--max-drop", "0.5", "--junit", tmp_path / "j.xml",
                 "--calib-size", "64", *FAST)
    assert result.exit_code == 1
    r = json.loads((out / "report.json").read_text())
    assert r["gate"]["passed"] is False and r["accuracy_drop"] > 0.5
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("failures") == "1" and "drop" in root.find("testcase/failure").get("message")


def test_float_recipe_exports_fp32_and_keeps_accuracy(tmp_path):
    res = compressor.compress(ROOT / "cnn_mnist.pt", recipe="fold-bn", out_dir=tmp_path / "o", batch_sizes=[1])
    art = res.report["artifacts"][0]
    assert art["precision"] == "fp32" and res.report["passes"][0]["summary"]["folded"] == 9
    assert art["accuracy"] == res.report["baseline"]["accuracy"] and art["sqnr_db_vs_float"] > 80
    ops = {n.op_type for n in onnx.load(str(tmp_path / "o" / "model.onnx")).graph.node}
    assert "BatchNormalization" not in ops and "QuantizeLinear" not in ops


def test_python_api_with_module_and_loaders(tmp_path):
    ckpt = torch.load(ROOT / "cnn_mnist.pt", weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    spec = Preprocess(**ckpt["preprocess"])
    calib = [x for x, _ in open_source(ROOT / "calibration_data" / "mnist" / "calib", spec).batches(50, 200)]
    evals = list(open_source(TEST_SPLIT, spec).batches(100, 300))
    res = compressor.compress(model, recipe="int8-ptq", calib=calib, eval_data=evals, export=["onnx"],
                              out_dir=tmp_path / "out", batch_sizes=[1], sensitivity=True)
    assert res.artifacts["onnx"].path == tmp_path / "out" / "model.onnx" and res.artifacts["onnx"].path.exists()
    sens = res.report["sensitivity"]
    assert sens["images"] == 300 and len(sens["rows"]) == 13  # 9 convs + fc + 3 residual adds' quantizers
    assert sens["quantized_accuracy"] == pytest.approx(res.report["simulation"]["accuracy"], abs=1e-3)
    assert "Per-layer sensitivity" in (tmp_path / "out" / "report.md").read_text()
    assert res.report["data"]["evaluation"]["count"] == 300 and res.report["metric"] == "top1"
    assert res.passed_gate and res.accuracy_drop <= 1.0


def test_static_batch_program_is_calibrated_evaluated_and_timed_at_its_batch(tmp_path):
    """A .pt2 exported the usual way runs at one batch size; short last batches are padded."""
    ckpt = torch.load(ROOT / "vit_mnist.pt", weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(3, 1, 28, 28),)), tmp_path / "static3.pt2")
    out = tmp_path / "out"
    result = cli(tmp_path / "static3.pt2", "--calib", ROOT / "calibration_data/mnist/calib", "--eval", TEST_SPLIT,
                 "--mean", "0.1307", "--std", "0.3081", "--calib-size", "50", "-o", out, "--max-drop", "0.5", "-q")
    assert result.exit_code == 0, result.output
    r = json.loads((out / "report.json").read_text())
    assert r["benchmark"]["batch_sizes"] == [3] and r["data"]["evaluation"]["count"] == 1000
    assert r["baseline"]["accuracy"] == pytest.approx(ckpt["metrics"]["test_top1"]) and r["gate"]["passed"]
    assert r["data"]["calibration"]["count"] == 50


def test_unlabeled_eval_falls_back_to_agreement(tmp_path):
    res = compressor.compress(ROOT / "vit_mnist.pt", calib=ROOT / "calibration_data" / "mnist" / "calib",
                              eval_data=ROOT / "calibration_data" / "mnist" / "calib", out_dir=tmp_path / "o",
                              calib_size=64, batch_sizes=[1])
    assert res.report["metric"] == "agreement" and res.report["artifacts"][0]["accuracy"] > 95


# -- bad input: exit 2, a message naming problem and fix, nothing left in out/ -----------------------
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    m = zoo.build("vit_mnist").eval()
    torch.save(m, d / "pickled.pt")
    torch.export.save(torch.export.export(m, (torch.zeros(2, 1, 28, 28),)), d / "vit.pt2")
    (d / "notes.pt").write_text("not a model")
    (d / "empty").mkdir()
    (d / "big").mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(d / "big" / f"{i}.png")
    (d / "unknown_key.yaml").write_text("name: x\npasses:\n  - pass: quant.int8_ptq\n    bits: 4\n")
    (d / "wrong_type.yaml").write_text("name: x\npasses:\n  - pass: quant.int8_ptq\n    quantize_conv: maybe\n")
    (d / "a_file").write_text("")
    (d / "model.onnx").write_bytes(b"\x08\x07")
    return d


BAD = {
    "missing file": (["{d}/nope.pt"], "model file not found"),
    "not a model": (["{d}/notes.pt"], "not a PyTorch model file"),
    "pickle without trust": (["{d}/pickled.pt"], "--trust-pickle"),
    "unknown recipe": (["{root}/vit_mnist.pt", "-r", "int3-magic"], "unknown recipe 'int3-magic'"),
    "recipe unknown key": (["{root}/vit_mnist.pt", "-r", "{d}/unknown_key.yaml"], "bits (line 4): unknown key"),
    "recipe wrong type": (["{root}/vit_mnist.pt", "-r", "{d}/wrong_type.yaml"], "quantize_conv (line 4)"),
    "empty calibration folder": (["{root}/vit_mnist.pt", "--calib", "{d}/empty"], "no images found"),
    "wrong image size, no spec": (["{d}/vit.pt2", "--calib", "{d}/big"], "does not run on inputs of shape 1,1,32,32"),
    "wrong image size vs shape": (["{d}/vit.pt2", "--calib", "{d}/big", "--input-shape", "1,1,28,28"],
                                  "--size H,W"),
    "input shape does not fit": (["{d}/vit.pt2", "--calib", "{d}/big", "--input-shape", "1,1,32,32"],
                                 "does not run on inputs"),
    "output not writable": (["{root}/vit_mnist.pt", "-o", "{d}/a_file/out"], "not writable"),
    "an ONNX file as model": (["{d}/model.onnx"], "is an ONNX model"),
    "calibration size 0": (["{root}/vit_mnist.pt", "--calib-size", "0"], "--calib-size"),
    "no model": ([], "missing MODEL"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_a_clear_message(bad_inputs, tmp_path, case):
    args, message = BAD[case]
    args = [a.format(d=bad_inputs, root=ROOT) for a in args]
    out = tmp_path / "out"
    if "-o" not in args:
        args += ["-o", str(out)]
    result = cli(*args, "-q")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob(".compressor-*")) and not list(out.glob(".compressor-*")), "staging left behind"


def test_console_script_help_and_recipes():
    exe = Path(sys.executable).parent / "compress"
    helped = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "--recipe" in helped.stdout and "--max-drop" in helped.stdout and "--trust-pickle" in helped.stdout
    listed = subprocess.run([exe, "--list-recipes"], capture_output=True, text=True, check=True)
    assert "int8-ptq" in listed.stdout
