import pytest
import torch

from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext


def _pass(name, **params):
    return PASSES[name](PASSES[name].Params(**params))


def test_distill_recovers_agreement_and_keeps_pruned_weights_zero(mnist_vit):
    model, calib, x, _ = mnist_vit
    before_params = {k: v.clone() for k, v in model.state_dict().items()}
    g = capture(model, x[:2])
    ctx = PassContext(calib=calib, calib_limit=256, teacher=g.clone())
    _pass("prune.nm", n=1, m=4, method="magnitude").run(g, ctx)
    _pass("finetune.distill", steps=40, lr=1e-3).run(g, ctx)
    s = ctx.log[-1].summary
    assert s["teacher_agreement_after"] > s["teacher_agreement_before"] + 20
    assert s["loss_last"] < s["loss_first"]
    for node, note in g.annotated("sparsity"):
        w = g.attr(node.args[1])
        assert (w[~note["mask"]] == 0).all()
    for k, v in model.state_dict().items():  # training the graph never touches the caller's model
        assert torch.equal(v, before_params[k]), k


def test_distill_refuses_quantized_graphs_and_missing_teacher(vit_tiny, mnist_vit):
    _, calib, x, _ = mnist_vit
    g = capture(vit_tiny, x[:2])
    with pytest.raises(CompressorError, match="teacher"):
        _pass("finetune.distill", steps=1).run(g, PassContext(calib=calib, calib_limit=32))
    ctx = PassContext(calib=calib, calib_limit=32, teacher=g.clone())
    _pass("quant.int8_ptq").run(g, ctx)
    with pytest.raises(CompressorError, match="before quantization"):
        _pass("finetune.distill", steps=1).run(g, ctx)
