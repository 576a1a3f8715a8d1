import numpy as np
import torch

from compressor import zoo
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.prune.structured import find_attentions, find_ffns
from exporters import get_exporter


def _run(model, calib, x, **params):
    g = capture(model, x[:2])
    ctx = PassContext(calib=calib, calib_limit=64)
    PASSES["prune.structured"](PASSES["prune.structured"].Params(**params)).run(g, ctx)
    return g, ctx.log[-1].summary


def test_finds_heads_and_ffns_by_pattern(vit_tiny):
    for impl in ("manual", "sdpa"):
        g = capture(zoo.build("vit_mnist", depth=2, attn_impl=impl).eval(), torch.randn(2, 1, 28, 28))
        attns, ffns = find_attentions(g), find_ffns(g)
        assert [(a.heads, a.head_dim) for a in attns] == [(4, 16)] * 2 and len(ffns) == 2


def test_units_that_contribute_nothing_go_first_and_outputs_stay_exact(mnist_vit):
    """Zero a head's proj columns and some FFN channels' fc2 columns: their saliency is 0, they are
    removed first, and the physically smaller graph computes exactly what the model did."""
    model, calib, x, _ = mnist_vit
    model = zoo.build("vit_mnist")
    model.load_state_dict(mnist_vit[0].state_dict())
    model.eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.proj.weight[:, 16:32] = 0  # head 1
            blk.mlp.fc2.weight[:, :40] = 0  # channels 0..39
    ref = model(x[:64])
    head, channel = 16 * (3 * 64 + 3 + 64), 64 + 1 + 64  # parameters per unit (qkv rows+bias, proj cols)
    dead, total = 4 * (head + 40 * channel), 4 * (4 * head + 128 * channel)
    g, s = _run(model, calib, x, sparsity=(dead - 0.5) / total)  # a budget of exactly the dead units
    assert all(h["kept"] == 3 for h in s["heads"]) and all(c["kept"] == 88 for c in s["channels"])
    torch.testing.assert_close(g(x[:64]), ref, rtol=1e-4, atol=1e-5)
    assert s["params_after"] < s["params_before"]
    qkv = [g.attr(a.qkv.args[1]) for a in find_attentions(g)]
    assert all(w.shape == (3 * 3 * 16, 64) for w in qkv)


def test_pruned_graph_is_smaller_runs_any_batch_and_exports(mnist_vit, tmp_path):
    model, calib, x, y = mnist_vit
    g, s = _run(model, calib, x, sparsity=0.3)
    assert s["param_ratio"] < 0.8
    assert g(x[:3]).shape == (3, 10)  # the batch axis is still dynamic after the reshapes changed
    acc = float((g(x).argmax(1) == y).float().mean())
    assert acc > 0.95  # measured 97.2 one-shot (dense 97.0)
    art = get_exporter("onnx").export(g, tmp_path / "m.onnx", "fp32")
    out = art.runner(2)(x[:8].numpy())
    np.testing.assert_allclose(out, g(x[:8]).numpy(), rtol=1e-4, atol=1e-4)
    assert art.size_bytes < 0.85 * sum(t.numel() * 4 for t in model.state_dict().values())
