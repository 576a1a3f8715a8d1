import pytest

from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.reparam.channel_idle import find_plain_ffns


def _pass(name, **params):
    return PASSES[name](PASSES[name].Params(**params))


def test_converted_ffns_have_the_folded_shape_and_start_close_to_the_original(mnist_vit):
    model, calib, x, y = mnist_vit
    g = capture(model, x[:2])
    assert len(find_plain_ffns(g)) == 4
    ctx = PassContext(calib=calib, calib_limit=256, teacher=g.clone())
    _pass("reparam.channel_idle", idle_ratio=0.75).run(g, ctx)
    s = ctx.log[-1].summary
    c, a = 64, 32  # D = 128 hidden, a = ceil(128 * 0.25)
    assert s["converted"] == 4 and all(f["active"] == a for f in s["ffns"])
    assert all(f["params_after"] == a * c + a + (a + c) * c + c for f in s["ffns"])  # P, b, [Q | M], c
    assert len(g.find("layer_norm")) == 4 + 1  # norm1 of each block and the final norm; FFN LayerNorms gone
    assert len(find_plain_ffns(g)) == 0
    before = float((g(x).argmax(1) == y).float().mean())
    assert before > 0.85  # the calibration-fitted init (measured 92.0 %, original 97.0 %)
    _pass("finetune.distill", steps=60, lr=1e-3).run(g, ctx)
    assert ctx.log[-1].summary["teacher_agreement_after"] > ctx.log[-1].summary["teacher_agreement_before"]
    assert g(x[:3]).shape == (3, 10)


def test_a_graph_without_plain_ffns_is_refused(mnist_vit):
    from compressor import zoo

    _, calib, x, _ = mnist_vit
    g = capture(zoo.build("repavit_mnist", depth=1).eval(), x[:2])
    nodes = len(g.nodes)
    ctx = PassContext(calib=calib, calib_limit=32)
    with pytest.raises(CompressorError, match="has none; it is for ViTs"):
        _pass("reparam.channel_idle").run(g, ctx)
    assert len(g.nodes) == nodes
