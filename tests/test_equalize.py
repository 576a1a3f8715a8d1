"""`reparam.equalize`: cross-layer equalization keeps the function and evens out per-channel ranges."""

from __future__ import annotations

import pytest
import torch

from compressor import zoo
from compressor.data import DataSource
from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.reparam.equalize import find_pairs

STAGES = ((1, 3, 1, 8, 8, 1), (4, 3, 2, 8, 16, 2))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.build("efficientnet_lite", stages=STAGES, stem=8, head=32, num_classes=10, img_size=32)
    with torch.no_grad():
        for m in model.modules():  # channels of very different ranges, as in real depthwise convs
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(torch.logspace(-1.5, 1, m.weight.shape[0]).reshape(-1, 1, 1, 1) / 4)
    return model.eval()


def _run(model, x, **params):
    g = capture(model, x[:2])
    ctx = PassContext(calib=DataSource("t", x), calib_batch_size=16)
    PASSES["reparam.fold_bn"]().run(g, ctx)
    before = g.clone()
    PASSES["reparam.equalize"](PASSES["reparam.equalize"].Params(**params)).run(g, ctx)
    return before, g, ctx.log[-1].summary


def _ranges(g, node):
    w = g.attr(node.args[1])
    return w.abs().reshape(w.shape[0], -1).amax(1)


def test_bounded_relu6_equalization_is_exact_on_the_observed_range() -> None:
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before, after, summary = _run(_model(), x)
    # stem→dw, dw→project of every block, expand→dw, and head conv → mean → classifier
    assert summary["pairs"] == len(find_pairs(after)) >= 6
    with torch.no_grad():
        torch.testing.assert_close(after(x), before(x), rtol=1e-4, atol=1e-4)
    spread = [float(r.max() / r.min()) for r in (_ranges(after, p.first) for p in find_pairs(after))]
    spread_before = [float(r.max() / r.min()) for r in (_ranges(before, p.first) for p in find_pairs(before))]
    assert sum(spread) < 0.5 * sum(spread_before)  # the first layers' channel ranges are evened out


def test_clamped_channels_keep_scale_one() -> None:
    """A channel whose pre-activation reaches 6 is never rescaled: relu6 would clip it differently."""
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 50
    _, _, summary = _run(_model(), x)
    assert sum(layer["held_at_1"] for layer in summary["layers"]) > 0


def test_relu_replacement_mode_turns_relu6_into_relu() -> None:
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before, after, summary = _run(_model(), x, relu6="relu")
    assert summary["relu6"] == "relu"
    relu6 = torch.ops.aten.relu6.default
    paired = sum(len(p.clamps) for p in find_pairs(before))
    # the stem's ReLU6 also feeds block 0's residual Add, so the stem has no pair and keeps its clamp
    assert paired == before.count(relu6) - 1 and after.count(relu6) == 1 and after.count("relu") == paired


def test_a_model_without_pairs_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 2)).eval()
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(CompressorError, match="no pair of layers"):
        _run(model, x)
