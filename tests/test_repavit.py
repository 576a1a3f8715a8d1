"""`reparam.repavit`: the channel-idle FFN fold is exact, found by pattern, and leaves other graphs alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from compressor import zoo
from compressor.errors import CompressorError
from compressor.graph import Graph, capture
from compressor.passes import PassContext
from compressor.passes.reparam.repavit import RePaViT
from exporters import get_exporter

ROOT = Path(__file__).resolve().parents[1]
X = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _randomize_bn(model: nn.Module) -> None:
    """Running statistics and affine weights far from the identity, so an unfolded BN would show."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))


def _fold(model: nn.Module, example: torch.Tensor, merge_shortcut: bool = True) -> tuple[Graph, dict]:
    g = capture(model, example)
    ctx = PassContext()
    RePaViT(RePaViT.Params(merge_shortcut=merge_shortcut)).run(g, ctx)
    return g, ctx.log[0].summary


def _assert_same(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    torch.testing.assert_close(out, ref, rtol=rel, atol=rel * float(ref.abs().max()))


@pytest.mark.parametrize(("idle_ratio", "merge_shortcut"),
                         [(0.75, True), (0.75, False), (0.5, True), (1.0, True), (0.0, True), ([0.75, 1.0], False)])
def test_fold_is_exact_and_shrinks_the_ffn(idle_ratio, merge_shortcut):
    torch.manual_seed(0)
    model = zoo.build("repavit_mnist", depth=2, idle_ratio=idle_ratio).eval()
    _randomize_bn(model)
    g, summary = _fold(model, X, merge_shortcut)
    assert summary["folded"] == 2 and g.count("batch_norm") == 0 and g.count(torch.ops.aten.slice.Tensor) == 0
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        _assert_same(g(x), model(x))
    weights = dict(g.gm.named_buffers())
    c, d = 64, 128
    for i, ffn in enumerate(summary["ffns"]):
        a = math.ceil(d * (1 - (idle_ratio[i] if isinstance(idle_ratio, list) else idle_ratio)))
        assert ffn["active"] == a and ffn["params_before"] == 2 * c * d + d + c + 2 * c + 2 * d
        # C² + 2Ca weights, plus biases b₁'[A] and c; no C×C matrix without idle channels (M = I)
        expected = (c * c if a < d else 0) + 2 * c * a + (a + c if a else c)
        stored = sum(t.numel() for name, t in weights.items() if name.startswith(f"blocks_{i}_mlp_"))
        assert ffn["params_after"] == stored == expected
    assert not any("running_mean" in k or "fc1" in k for k in g.gm.state_dict())


class _TokenFFN(nn.Module):
    """A channel-idle FFN written unlike the zoo's: other names, (B·N, C) BatchNorm without affine weights,
    split, idle channels first, tanh GELU, optional shortcut. The pass must find it by its ops alone."""

    def __init__(self, c: int = 16, d: int = 48, active: int = 20, residual: bool = True) -> None:
        super().__init__()
        self.pre, self.up = nn.BatchNorm1d(c, affine=False), nn.Linear(c, d)
        self.mid, self.down = nn.BatchNorm1d(d), nn.Linear(d, c)
        self.active, self.residual = active, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.pre(x.flatten(0, 1)).view_as(x))
        idle, act = h.split([h.shape[-1] - self.active, self.active], dim=-1)
        h = torch.cat([idle, nn.functional.gelu(act, approximate="tanh")], dim=-1)
        y = self.down(self.mid(h.flatten(0, 1)).view_as(h))
        return x + y if self.residual else y


@pytest.mark.parametrize("residual", [True, False])
def test_found_by_pattern_not_names(residual):
    torch.manual_seed(0)
    model = _TokenFFN(residual=residual).eval()
    _randomize_bn(model)
    g, summary = _fold(model, torch.randn(2, 5, 16))
    assert summary["folded"] == 1 and summary["ffns"][0]["residual"] is residual and g.count("batch_norm") == 0
    assert [n.kwargs.get("approximate") for n in g.find("gelu")] == ["tanh"]
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        _assert_same(g(x), model(x))


def test_narrow_linear_ffn_is_refused_with_the_reason():
    """BN → Linear → BN → Linear with no activation also fits the pattern (a = 0), but with D < C/2
    the C×C matrix it folds into would be bigger than the two Linears."""
    model = nn.Sequential(nn.BatchNorm1d(32), nn.Linear(32, 8), nn.BatchNorm1d(8), nn.Linear(8, 32)).eval()
    with pytest.raises(CompressorError, match=r"too narrow to gain.*C² \+ 2Ca > 2CD"):
        _fold(model, torch.randn(4, 32))


def test_plain_vit_is_refused_and_left_unchanged(vit_tiny):
    g = capture(vit_tiny, X)
    code = g.gm.code
    keys = set(g.gm.state_dict())
    with pytest.raises(CompressorError, match="repavit-convert"):
        RePaViT().run(g, PassContext())
    assert g.gm.code == code and set(g.gm.state_dict()) == keys


@pytest.mark.parametrize("merge_shortcut", [True, False])
def test_folded_graph_exports_to_onnx(tmp_path, merge_shortcut):
    torch.manual_seed(0)
    model = zoo.build("repavit_mnist", depth=2).eval()
    _randomize_bn(model)
    g, _ = _fold(model, X, merge_shortcut)
    art = get_exporter("onnx").export(g, tmp_path / "repa.onnx", "fp32")
    assert "BatchNormalization" not in art.op_counts()
    x = torch.randn(5, 1, 28, 28)
    np.testing.assert_allclose(art.runner(1)(x.numpy()), g(x).numpy(), rtol=1e-5, atol=1e-5)


def _test_digits(mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    paths = sorted((ROOT / "calibration_data" / "mnist" / "test").glob("*/*.png"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in paths])).float().div(255).unsqueeze(1)
    return (x - mean) / std, torch.tensor([int(p.parent.name) for p in paths])


def test_bundled_checkpoint_folds_without_changing_a_prediction():
    ckpt = torch.load(ROOT / "repavit_mnist.pt", weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"]).eval()
    model.load_state_dict(ckpt["state_dict"])
    x, y = _test_digits(ckpt["preprocess"]["mean"][0], ckpt["preprocess"]["std"][0])
    g, summary = _fold(model, x[:2])
    assert summary["folded"] == ckpt["config"]["depth"]
    with torch.no_grad():
        ref, out = model(x), g(x)
    _assert_same(out, ref)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    top1 = 100.0 * (ref.argmax(1) == y).float().mean().item()
    assert top1 == pytest.approx(ckpt["metrics"]["test_top1"], abs=0.01)
