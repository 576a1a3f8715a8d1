"""The fault suite (issue 15): bad inputs and payloads a demanding user tried, and their neighbours.

Every case runs the CLI in-process and asserts the exit code, that the message names the problem
on one screen without a traceback (at a 40-column terminal: messages must not depend on the
width), that the output folder still holds a previous run's files byte for byte and nothing new,
and that no payload in any file ran. Only `compressor.cli` is imported, so the same table can be
run against an older checkout to count which cases held there.
"""

from __future__ import annotations

import json
import pickle
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from crafted import (
    QUICK,
    TINY_CONFIG,
    DividesByZero,
    Overwrite,
    Payload,
    checkpoint,
    digits,
    edit_program,
    png_claiming,
    previous_run,
    pt2_variant,
    run_cli,
    snapshot,
    tiny_model,
)
from PIL import Image

from compressor import api
from compressor.passes.reparam.fold_bn import FoldBN
from exporters import EXPORTERS
from exporters.torch_program import TorchExporter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """Every crafted input, made once."""
    d = tmp_path_factory.mktemp("bad")
    marker = d / "PAYLOAD_RAN"
    model = tiny_model()
    checkpoint(d / "tiny.pt", model)
    (d / "quick.yaml").write_text(QUICK)
    x, y = digits()
    np.savez(d / "digits.npz", x=x, y=y)
    # model files that carry code
    torch.save(model, d / "pickled.pt")
    for proto in (2, 4):
        (d / f"payload{proto}.pt").write_bytes(pickle.dumps(Payload(marker), protocol=proto))
    with zipfile.ZipFile(d / "tiny.pt") as src, zipfile.ZipFile(d / "payload_zip.pt", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            swapped = info.filename.endswith("data.pkl")
            dst.writestr(info, pickle.dumps(Payload(marker), protocol=2) if swapped else data)
    ep = torch.export.export(model, (torch.zeros(2, 1, 28, 28),),
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(ep, d / "good.pt2")
    good = d / "good.pt2"
    payload = pickle.dumps(Payload(marker), protocol=2)
    pt2_variant(good, d / "sample_inputs.pt2", lambda r: r.update({"data/sample_inputs/model.pt": payload}))

    def pickled_weight(records: dict[str, bytes]) -> None:
        config = json.loads(records["data/weights/model_weights_config.json"])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        records["data/weights/" + entry["path_name"]] = payload
        records["data/weights/model_weights_config.json"] = json.dumps(config).encode()

    pt2_variant(good, d / "pickled_weight.pt2", pickled_weight)
    pt2_variant(good, d / "guards.pt2", edit_program(
        lambda doc: doc.update(guards_code=[f"__import__('os').system('touch {marker}') or True"])))

    def sympy_eval(doc: dict) -> None:
        text = json.dumps(doc).replace("Symbol('s", f"(__import__('os').system('touch {marker}'), Symbol('s", 1)
        doc.clear()
        doc.update(json.loads(text))

    pt2_variant(good, d / "sympy.pt2", edit_program(sympy_eval))

    def from_file(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][1]["target"] = "torch.ops.aten.from_file.default"

    pt2_variant(good, d / "from_file.pt2", edit_program(from_file))

    def torch_attribute(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][1]["target"] = "torch.load"

    pt2_variant(good, d / "torch_load.pt2", edit_program(torch_attribute))

    def quoted_name(doc: dict) -> None:
        spec = next(s for s in doc["graph_module"]["signature"]["input_specs"] if "parameter" in s)
        spec["parameter"]["parameter_name"] = f'x"); __import__("os").system("touch {marker}"); ("'

    pt2_variant(good, d / "quoted_name.pt2", edit_program(quoted_name))
    raw = good.read_bytes()
    (d / "truncated.pt2").write_bytes(raw[: len(raw) // 2])
    # TorchScript is code: this forward overwrites a file the user owns
    victim = d / "victim.txt"
    victim.write_text("the user's data")

    torch.jit.save(torch.jit.script(Overwrite(str(victim))), d / "overwrite_ts.pt")
    with zipfile.ZipFile(d / "overwrite_ts.pt") as src, zipfile.ZipFile(d / "tampered_ts.pt", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, data.replace(b"def forward", b"def for!ward") if info.filename.endswith(".py") else data)
    # damaged archives
    good_pt = (d / "tiny.pt").read_bytes()
    (d / "no_end.pt").write_bytes(good_pt[:-40])
    cd = good_pt.rfind(b"PK\x01\x02")
    (d / "bad_central_dir.pt").write_bytes(good_pt[:cd] + b"XX\x01\x02" + good_pt[cd + 4:])
    with zipfile.ZipFile(d / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as z, z.open("bomb/data.pkl", "w") as f:
        for _ in range(100):
            f.write(bytes(2**20))
    # checkpoints with bad fields
    checkpoint(d / "no_arch.pt", model, arch=None)
    checkpoint(d / "list_config.pt", model, config=[1, 2])
    checkpoint(d / "bad_config.pt", model, config={**TINY_CONFIG, "widths": "wide"})
    checkpoint(d / "list_state.pt", model, state_dict=[torch.zeros(1)])
    checkpoint(d / "bad_preprocess.pt", model, preprocess={"size": [28, 28], "channels": 7})
    nan_model = tiny_model()
    with torch.no_grad():
        nan_model.fc.weight[0, 0] = float("nan")
    checkpoint(d / "nan_weights.pt", nan_model)
    torch.export.save(torch.export.export(DividesByZero(), (torch.zeros(2, 1, 28, 28),)), d / "inf_output.pt2")
    (d / "model.onnx").write_bytes(b"\x08\x07")
    (d / "notes.pt").write_text("not a model")
    # the class of this pickle lives in a module nobody can import
    (d / "gone").mkdir()
    (d / "gone" / "vanished_mod.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    import sys
    sys.path.insert(0, str(d / "gone"))
    try:
        import vanished_mod
        torch.save(vanished_mod.Net(2, 2), d / "missing_class.pt")
    finally:
        sys.path.remove(str(d / "gone"))
        sys.modules.pop("vanished_mod", None)
    # data
    (d / "empty").mkdir()
    (d / "bomb_img").mkdir()
    png_claiming(d / "bomb_img" / "0.png", 40000, 40000)
    (d / "garbage_img").mkdir()
    (d / "garbage_img" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    torch.save({"x": torch.zeros(4, 1, 28, 28), "why": Payload(marker)}, d / "pickled_data.pt")
    nan_x = np.zeros((8, 1, 28, 28), np.float32)
    nan_x[3, 0, 5, 5] = np.nan
    np.save(d / "nan.npy", nan_x)
    inf_x = np.zeros((8, 1, 28, 28), np.float32)
    inf_x[1, 0, 0, 0] = np.inf
    np.savez(d / "inf_eval.npz", x=inf_x, y=np.zeros(8, np.int64))
    np.savez(d / "big_eval.npz", x=np.zeros((8, 1, 32, 32), np.float32), y=np.zeros(8, np.int64))
    np.savez(d / "labels_12.npz", x=x, y=np.where(y == 3, 12, y))
    np.savez(d / "labels_neg.npz", x=x, y=y - 1)
    np.savez(d / "labels_frac.npz", x=x, y=y + 0.5)
    for name, text in (("labels_txt_garbage", "one\ntwo\n"), ("labels_txt_short", "1\n2\n")):
        (d / name).mkdir()
        for i in range(3):
            Image.fromarray(x[i]).save(d / name / f"{i}.png")
        (d / name / "labels.txt").write_text(text)
    # recipes
    recipes = {"export_empty": QUICK + "export: []\n", "schema_99": "schema_version: 99\n" + QUICK,
               "max_drop_nan": QUICK + "gate: {max_drop: .nan}\n", "not_yaml": "name: [unclosed\n",
               "unknown_pass": "name: x\npasses:\n  - pass: quant.int3\n",
               "optional_stray": QUICK + "optional_export: [tvm]\n"}
    for name, text in recipes.items():
        (d / f"{name}.yaml").write_text(text)
    (d / "a_file").write_text("")
    return d


TINY = ["{d}/tiny.pt", "-r", "{d}/quick.yaml", "--calib", "{d}/digits.npz", "--eval", "{d}/digits.npz"]

# case: (arguments, exit code, what the message must say)
CASES: dict[str, tuple[list[str], int, list[str]]] = {
    # model files that carry code: refused, and nothing from them runs
    "pickled module": (["{d}/pickled.pt"], 2, ["pickled.pt", "ResNetSmall", "--trust-pickle"]),
    "payload pickle, protocol 2": (["{d}/payload2.pt"], 2, ["payload2.pt", "system", "malicious"]),
    "payload pickle, protocol 4": (["{d}/payload4.pt"], 2, ["payload4.pt", "system", "malicious"]),
    "payload in a torch zip": (["{d}/payload_zip.pt"], 2, ["payload_zip.pt", "system", "malicious"]),
    ".pt2 sample inputs pickle": (["{d}/sample_inputs.pt2"], 2, ["sample_inputs.pt2", "sample inputs",
                                                                 "--trust-pickle"]),
    ".pt2 pickled weight": (["{d}/pickled_weight.pt2"], 2, ["pickled_weight.pt2", "pickled", "--trust-pickle"]),
    ".pt2 guard code": (["{d}/guards.pt2"], 2, ["guards.pt2", "guard", "Python source"]),
    ".pt2 shape expression": (["{d}/sympy.pt2"], 2, ["sympy.pt2", "shape expression"]),
    ".pt2 aten.from_file": (["{d}/from_file.pt2"], 2, ["from_file.pt2", "operator", "from_file"]),
    ".pt2 torch.load as an operator": (["{d}/torch_load.pt2"], 2, ["torch_load.pt2", "operator 'torch.load'"]),
    ".pt2 quoted parameter name": (["{d}/quoted_name.pt2"], 2, ["quoted_name.pt2", "name"]),
    "TorchScript without trust": (["{d}/overwrite_ts.pt"], 2, ["overwrite_ts.pt", "TorchScript is a program",
                                                               "--trust-pickle"]),
    # damaged or hostile archives
    "truncated .pt2": (["{d}/truncated.pt2"], 2, ["truncated.pt2", "torch.export"]),
    "truncated .pt2, trusted": (["{d}/truncated.pt2", "--trust-pickle"], 2, ["truncated.pt2", "not a readable"]),
    "tampered TorchScript, trusted": (["{d}/tampered_ts.pt", "--trust-pickle"], 2, ["tampered_ts.pt", "TorchScript"]),
    "zip without its end record": (["{d}/no_end.pt"], 2, ["no_end.pt", "not a PyTorch model file"]),
    "zip with a corrupt central directory": (["{d}/bad_central_dir.pt"], 2, ["bad_central_dir.pt", "damaged zip"]),
    "zip bomb": (["{d}/bomb.pt"], 2, ["bomb.pt", "decompression bomb"]),
    "text as a model": (["{d}/notes.pt"], 2, ["notes.pt", "not a PyTorch model file"]),
    "an ONNX file as model": (["{d}/model.onnx"], 2, ["is an ONNX model"]),
    "a folder as model": (["{d}/empty"], 2, ["is a folder"]),
    "missing model file": (["{d}/nope.pt"], 2, ["model file not found", "nope.pt"]),
    "no model": ([], 2, ["missing MODEL"]),
    "pickled class not importable, trusted": (["{d}/missing_class.pt", "--trust-pickle"], 2,
                                              ["missing_class.pt", "vanished_mod", ".pt2"]),
    # checkpoints
    "checkpoint without arch": (["{d}/no_arch.pt"], 2, ["no_arch.pt", "'arch'"]),
    "checkpoint config is a list": (["{d}/list_config.pt"], 2, ["list_config.pt", "'config'"]),
    "checkpoint config does not build": (["{d}/bad_config.pt"], 2, ["bad_config.pt", "cannot be built"]),
    "checkpoint state_dict is a list": (["{d}/list_state.pt"], 2, ["list_state.pt", "'state_dict'"]),
    "checkpoint preprocess invalid": (["{d}/bad_preprocess.pt"], 2, ["bad_preprocess.pt", "'preprocess'"]),
    "NaN weights": (["{d}/nan_weights.pt"], 2, ["nan_weights.pt", "fc.weight", "NaN"]),
    "infinite outputs": (["{d}/inf_output.pt2", *TINY[1:]], 2, ["inf_output.pt2", "NaN or infinite", "digits.npz"]),
    # data
    "empty calibration folder": ([*TINY[:3], "--calib", "{d}/empty"], 2, ["empty", "no images found"]),
    "decompression-bomb PNG": ([*TINY[:3], "--calib", "{d}/bomb_img"], 2, ["0.png", "too large to decode safely"]),
    "unreadable image": ([*TINY[:3], "--calib", "{d}/garbage_img"], 2, ["0.png", "not a readable image"]),
    "pickled .pt as --calib": ([*TINY[:3], "--calib", "{d}/pickled_data.pt"], 2, ["pickled_data.pt",
                                                                                    "pickled Python objects"]),
    "NaN calibration data": ([*TINY[:3], "--calib", "{d}/nan.npy"], 2, ["nan.npy", "NaN or infinite", "[3]"]),
    "infinite evaluation data": ([*TINY[:5], "--eval", "{d}/inf_eval.npz"], 2, ["inf_eval.npz", "NaN or infinite"]),
    "evaluation images of another size": ([*TINY[:5], "--eval", "{d}/big_eval.npz"], 2,
                                          ["big_eval.npz", "1x32x32", "1x28x28"]),
    "labels beyond the model's classes": ([*TINY[:5], "--eval", "{d}/labels_12.npz"], 2,
                                          ["labels_12.npz", "labels up to 12", "10 classes"]),
    "negative labels": ([*TINY[:5], "--eval", "{d}/labels_neg.npz"], 2, ["labels_neg.npz", ">= 0"]),
    "fractional labels": ([*TINY[:5], "--eval", "{d}/labels_frac.npz"], 2, ["labels_frac.npz", "whole class"]),
    "labels.txt not numbers": ([*TINY[:5], "--eval", "{d}/labels_txt_garbage"], 2, ["labels.txt", "label file"]),
    "labels.txt too short": ([*TINY[:5], "--eval", "{d}/labels_txt_short"], 2, ["labels.txt", "2 labels"]),
    "calibration data missing": ([*TINY[:3], "--calib", "{d}/nowhere"], 2, ["calibration data not found"]),
    # flags go through the recipe's validation
    "--max-drop nan": ([*TINY, "--max-drop", "nan"], 2, ["--max-drop", "nan", "finite"]),
    "--max-drop -5": ([*TINY, "--max-drop", "-5"], 2, ["--max-drop", "-5", "greater than or equal to 0"]),
    "--max-drop inf": ([*TINY, "--max-drop", "inf"], 2, ["--max-drop", "inf", "finite"]),
    "--batch-sizes 0": ([*TINY, "--batch-sizes", "0"], 2, ["--batch-sizes", "[0]", ">= 1"]),
    "--batch-sizes x": ([*TINY, "--batch-sizes", "x"], 2, ["--batch-sizes", "integers"]),
    "--size 0,0": ([*TINY, "--size", "0,0"], 2, ["--size", "0,0", "between 1"]),
    "--size 5": ([*TINY, "--size", "5"], 2, ["--size", "2 comma-separated"]),
    "--channels 2": ([*TINY, "--channels", "2"], 2, ["--channels", "1 or 3"]),
    "--std 0": ([*TINY, "--std", "0"], 2, ["--std", "positive"]),
    "--std nan": ([*TINY, "--std", "nan"], 2, ["--std", "finite"]),
    "--mean a": ([*TINY, "--mean", "a"], 2, ["--mean", "numbers"]),
    "--input-shape 1,1,28": ([*TINY, "--input-shape", "1,1,28"], 2, ["--input-shape", "4 comma-separated"]),
    "--input-shape 0,1,28,28": ([*TINY, "--input-shape", "0,1,28,28"], 2, ["--input-shape", "positive"]),
    "--export nonsense": ([*TINY, "--export", "onnx,nonsense"], 2, ["--export", "nonsense"]),
    "--export twice": ([*TINY, "--export", "onnx,onnx"], 2, ["--export", "twice"]),
    "--optional-export not exported": ([*TINY, "--optional-export", "tvm"], 2, ["--optional-export", "tvm"]),
    "--threads 0": ([*TINY, "--threads", "0"], 2, ["--threads"]),
    "--calib-size 0": ([*TINY, "--calib-size", "0"], 2, ["--calib-size"]),
    # recipes
    "recipe export: []": ([*TINY[:1], "-r", "{d}/export_empty.yaml", *TINY[3:]], 2, ["export", "at least 1"]),
    "recipe schema_version 99": ([*TINY[:1], "-r", "{d}/schema_99.yaml", *TINY[3:]], 2,
                                 ["schema_version", "99", "newer compressor"]),
    "recipe max_drop .nan": ([*TINY[:1], "-r", "{d}/max_drop_nan.yaml", *TINY[3:]], 2, ["max_drop", "finite"]),
    "recipe not YAML": ([*TINY[:1], "-r", "{d}/not_yaml.yaml", *TINY[3:]], 2, ["not_yaml.yaml", "not valid YAML"]),
    "recipe unknown pass": ([*TINY[:1], "-r", "{d}/unknown_pass.yaml", *TINY[3:]], 2, ["unknown pass 'quant.int3'"]),
    "recipe optional target not exported": ([*TINY[:1], "-r", "{d}/optional_stray.yaml", *TINY[3:]], 2,
                                            ["optional_export", "tvm"]),
    "unknown recipe": ([*TINY[:1], "-r", "int3-magic"], 2, ["unknown recipe 'int3-magic'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_with_a_named_fix_and_leaves_the_folder_as_it_was(bad, tmp_path, case):
    args, code, says = CASES[case]
    out = tmp_path / "out"
    previous_run(out)
    before = snapshot(out)
    result = run_cli([a.format(d=bad) for a in args] + ["-o", str(out), "-q"])
    text = " ".join(result.output.split())
    assert result.exit_code == code, result.output
    assert not result.warnings, result.warnings  # a warning prints lines beside the message
    for fragment in says:
        assert fragment in text, f"{fragment!r} missing from: {result.output}"
    assert "Traceback" not in result.output and len(result.output) < 80 * 24, result.output
    assert snapshot(out) == before
    ran, victim = bad / "PAYLOAD_RAN", bad / "victim.txt"
    touched = ran.exists() or victim.read_text() != "the user's data"
    ran.unlink(missing_ok=True)  # one case's payload must not fail the next
    victim.write_text("the user's data")
    assert not touched, "a payload ran"


def test_payloads_are_real(bad, tmp_path):
    """The payloads above do run when the user trusts the file: the refusals are what stopped them."""
    marker = bad / "PAYLOAD_RAN"
    try:
        with pytest.raises(RuntimeError):  # torch fails after the payload ran
            torch.export.load(str(bad / "sample_inputs.pt2"))
        assert marker.exists()
        marker.unlink()
        with pytest.raises(RuntimeError):  # a bare pickle is not a torch file: it fails after running
            torch.load(bad / "payload4.pt", weights_only=False)
        assert marker.exists()
        marker.unlink()
        victim = tmp_path / "v.txt"
        victim.write_text("abcdef")
        torch.jit.save(torch.jit.script(Overwrite(str(victim))), tmp_path / "ts.pt")
        torch.jit.load(str(tmp_path / "ts.pt"))(torch.zeros(1, 1, 28, 28))
        assert victim.read_text() == "AAAAef"
    finally:
        marker.unlink(missing_ok=True)


# -- toolchain failures: exit 3, named, and what did work still publishes --------------------------
class BrokenExporter(TorchExporter):
    """A converter that crashes, as ExecuTorch's did on a real CNN."""

    target = "broken"
    suffix = ".broken"

    def export(self, graph, path, precision):
        raise RuntimeError("the converter crashed")


class CrashingRuntime(TorchExporter):
    """Exports a file whose runtime then crashes."""

    target = "crashy"
    suffix = ".crashy.pt2"

    def export(self, graph, path, precision):
        artifact = super().export(graph, path, precision)
        artifact.target = self.target

        def runner(threads):
            raise RuntimeError("the runtime crashed")

        artifact.runner = runner
        return artifact


def test_a_failing_target_is_reported_and_the_others_publish(bad, tmp_path, monkeypatch):
    monkeypatch.setitem(EXPORTERS, "broken", BrokenExporter)
    monkeypatch.setitem(EXPORTERS, "crashy", CrashingRuntime)
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    previous_run(out)
    args = [a.format(d=bad) for a in TINY] + ["-o", str(out), "-q", "--junit", str(junit)]
    result = run_cli([*args, "--export", "torch,broken,crashy", "--max-drop", "5"])
    text = " ".join(result.output.split())
    assert result.exit_code == 3, result.output
    assert "broken failed (export of the float model: RuntimeError: the converter crashed)" in text
    assert "crashy failed" in text and "the runtime crashed" in text and "--optional-export broken" in text
    report = json.loads((out / "report.json").read_text())
    status = {a["target"]: a["status"] for a in report["artifacts"]}
    assert status["torch"] in ("ok", "slower_than_baseline") and status["broken"].startswith("failed: export")
    assert status["crashy"].startswith("failed: running") and report["gate"]["passed"]
    assert report["files"] == ["baseline.crashy.pt2", "baseline.pt2", "model.crashy.pt2", "model.pt2", "pareto.png",
                               "recipe.yaml", "report.html", "report.json", "report.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*report["files"], "notes.txt"])  # old run replaced
    assert ET.parse(junit).getroot().get("errors") == "2"
    # strict JSON: the float program's outputs equal the float model's, an infinite SQNR, written as null
    assert "Infinity" not in (out / "report.json").read_text()
    assert report["baselines"]["torch"]["sqnr_db_vs_float"] is None
    assert {"path": "baselines.torch.sqnr_db_vs_float", "value": "inf",
            "reason": "no difference from the reference (the noise is zero, the SQNR infinite)"} in report["non_finite"]
    # the same targets marked optional: reported, and the run passes
    result = run_cli([*args, "--export", "torch,broken", "--optional-export", "broken"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["artifacts"][1]["optional"] is True


def test_a_crashing_pass_is_exit_3_naming_it_and_verbose_shows_the_traceback(bad, tmp_path, monkeypatch):
    def crash(self, graph, ctx):
        raise RuntimeError("an internal assertion in the pass")

    monkeypatch.setattr(FoldBN, "apply", crash)
    out = tmp_path / "out"
    previous_run(out)
    before = snapshot(out)
    args = [a.format(d=bad) for a in TINY] + ["-o", str(out), "-q"]
    result = run_cli(args)
    text = " ".join(result.output.split())
    assert result.exit_code == 3 and "pass reparam.fold_bn failed: RuntimeError: an internal assertion" in text
    assert "--verbose" in text and "Traceback" not in result.output and snapshot(out) == before
    verbose = run_cli([*args, "--verbose"])
    assert verbose.exit_code == 3 and "Traceback" in verbose.output and snapshot(out) == before


def test_an_unexpected_error_is_exit_3_and_called_a_bug(bad, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "graph_precision", lambda graph: {}["no such key"])
    out = tmp_path / "out"
    previous_run(out)
    before = snapshot(out)
    result = run_cli([a.format(d=bad) for a in TINY] + ["-o", str(out), "-q"])
    text = " ".join(result.output.split())
    assert result.exit_code == 3 and "internal error (KeyError" in text and "bug in compressor" in text
    assert "Traceback" not in result.output and snapshot(out) == before
