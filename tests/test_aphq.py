import pytest

from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.quant.aphq import FAST, PAPER
from compressor.recipe import load_recipe


def _top1(g, x, y) -> float:
    return float((g(x).argmax(1) == y).float().mean() * 100)


def test_aphq_beats_repq_at_w3a3_on_the_mnist_vit_and_exports(mnist_vit, tmp_path):
    """A short run (150 steps per unit, not the --fast preset) already recovers most of W3A3."""
    from exporters.onnx import OnnxExporter

    model, calib, x, y = mnist_vit
    acc = {}
    for name, kw in {"quant.repq": {}, "quant.aphq": {"iters": 150, "mlp_iters": 150, "recon_images": 128}}.items():
        g = capture(model, x[:2])
        ctx = PassContext(calib=calib)
        PASSES[name](PASSES[name].Params(w_bits=3, a_bits=3, **kw)).run(g, ctx)
        acc[name] = _top1(g, x, y)
    s = ctx.log[-1].summary
    assert g.count("gelu") == 0 and g.count("relu") == 4  # GELU → ReLU in every MLP
    assert len(s["mlp_reconstruction"]) == 4 and all(m["loss_end"] < m["loss_start"] for m in s["mlp_reconstruction"])
    assert [b["unit"] for b in s["blocks"]] == ["patch_embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"]
    assert sum(b["roundings_changed_vs_nearest"] for b in s["blocks"]) > 0
    assert s["lowered"] == {"qdq": 48, "float": 0}
    assert acc["quant.aphq"] >= acc["quant.repq"] + 2  # measured (150 steps) well above RepQ's 88.5
    logits = OnnxExporter().export(g, tmp_path / "m.onnx", "quantized").runner(2)(x[:300].numpy())
    assert (logits.argmax(1) == g(x[:300]).numpy().argmax(1)).all()


def test_fast_preset_and_explicit_values():
    params = PASSES["quant.aphq"].Params
    assert params().setting("iters") == PAPER["iters"] == 20000
    assert params(fast=True).setting("iters") == FAST["iters"] < 2000
    assert params(fast=True, iters=7).setting("iters") == 7


def test_recipe_fast_switches_only_passes_that_have_a_preset():
    rec = load_recipe("w3a3-aphq").fast()
    assert rec.passes[0].params["fast"] is True and rec.passes[0].build().params.fast
    with pytest.raises(CompressorError, match=r"quant\.aphq"):
        load_recipe("int8-ptq").fast()


@pytest.mark.slow
def test_w4a4_aphq_fast_from_the_command_line(tmp_path):
    """The whole job with the CPU preset: RepQ-level accuracy or better, measured on the ONNX artifact."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from compressor.cli import app

    root = Path(__file__).resolve().parent.parent
    result = CliRunner().invoke(app, [str(root / "vit_mnist.pt"), "-r", "w4a4-aphq", "--fast", "-o",
                                      str(tmp_path / "o"), "--batch-sizes", "1", "-q", "--max-drop", "1.5"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["passes"][0]["params"]["fast"] is True and report["accuracy_drop"] <= 1.5
    assert report["artifacts"][0]["accuracy"] > 95.5
