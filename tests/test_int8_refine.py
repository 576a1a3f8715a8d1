"""Passes that refine an int8 graph's rounding: bias correction and AdaRound/BRECQ block reconstruction."""

from __future__ import annotations

import pytest
import torch

from compressor import zoo
from compressor.data import DataSource
from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.quant.ops import DEQUANTIZE
from compressor.passes.quant.reconstruct import float_overrides, full_run

STAGES = ((1, 3, 1, 8, 8, 1), (4, 3, 2, 8, 16, 2), (4, 5, 1, 16, 16, 1))


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = zoo.build("efficientnet_lite", stages=STAGES, stem=8, head=32, num_classes=10, img_size=32).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.uniform_(-0.3, 0.3)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    g = capture(model, x[:2])
    ctx = PassContext(calib=DataSource("t", x), calib_batch_size=16)
    PASSES["reparam.fold_bn"]().run(g, ctx)
    PASSES["quant.int8_ptq"](PASSES["quant.int8_ptq"].Params(reduce_range=False)).run(g, ctx)
    return g, ctx, x


def _run(name, g, ctx, **params):
    out = g.clone()
    PASSES[name](PASSES[name].Params(**params)).run(out, ctx)
    return out, ctx.log[-1].summary


def _error(g, x) -> float:
    """Mean squared error of the logits against the float model the graph records."""
    logits = next(n for n in g.nodes if n.op == "output").args[0][0]
    with torch.no_grad():
        ref = full_run(g, x, float_overrides(g))[logits]
        return float(((g(x) - ref) ** 2).mean())


def _int_codes(g) -> dict[str, torch.Tensor]:
    return {n.name: g.attr(n.args[0]).clone() for n in g.nodes if n.target is DEQUANTIZE and g.is_constant(n.args[0])}


def test_bias_correction_matches_channel_means_and_only_touches_biases(setting) -> None:
    g, ctx, x = setting
    corrected, summary = _run("quant.bias_correction", g, ctx)
    assert summary["corrected_layers"] == len(g.find("conv")) + 1  # every conv and the classifier's bias
    assert _error(corrected, x) < _error(g, x)
    before, after = _int_codes(g), _int_codes(corrected)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(after[k].dtype == torch.int32 for k in changed)  # weights untouched


def test_adaround_learns_roundings_that_lower_the_block_error(setting) -> None:
    g, ctx, x = setting
    rounded, summary = _run("quant.adaround", g, ctx, iters=150, images=64, batch_size=16)
    assert summary["blocks"] >= 3 and summary["roundings_changed"] > 0
    # measured on the real int8 graph: the blocks' output error with learned rounding against nearest rounding
    units = summary["units"]
    assert sum(u["error_learned"] for u in units) < sum(u["error_nearest"] for u in units)
    assert _error(rounded, x) < _error(g, x)
    for name, codes in _int_codes(rounded).items():
        if codes.dtype == torch.int8:
            assert int(codes.abs().max()) <= 127
            assert int((codes.float() - _int_codes(g)[name].float()).abs().max()) <= 1  # up or down, never further


def test_refinement_passes_need_an_int8_graph(setting) -> None:
    _, ctx, x = setting
    float_graph = capture(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(), x[:2])
    for name in ("quant.bias_correction", "quant.adaround"):
        with pytest.raises(CompressorError, match=r"after quant\.int8_ptq"):
            PASSES[name]().run(float_graph, ctx)
