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
    _pass("prune.nm", n=1, m=4, method="magnitude", min_agreement=None).run(g, ctx)
    _pass("finetune.distill", steps=40, lr=1e-3, min_agreement=None).run(g, ctx)
    s = ctx.log[-1].summary
    assert s["teacher_agreement_after"] > s["teacher_agreement_before"] + 20
    assert s["loss_last"] < s["loss_first"]
    for node, note in g.annotated("sparsity"):
        w = g.attr(node.args[1])
        assert (w[~note["mask"]] == 0).all()
    for k, v in model.state_dict().items():  # training the graph never touches the caller's model
        assert torch.equal(v, before_params[k]), k


def test_distill_stops_the_run_when_the_best_state_stays_below_min_agreement(mnist_vit):
    """75 % of the weights gone and 10 steps: far below 95 % held-out agreement, so the run stops with the
    measured numbers instead of shipping the model."""
    model, calib, x, _ = mnist_vit
    g = capture(model, x[:2])
    ctx = PassContext(calib=calib, calib_limit=256, teacher=g.clone())
    _pass("prune.nm", n=1, m=4, method="magnitude", min_agreement=None).run(g, ctx)
    with pytest.raises(CompressorError, match=r"agrees with the original on \d+\.\d % of 51 held-out images.*"
                                              r"min_agreement: null keeps the model anyway"):
        _pass("finetune.distill", steps=10, lr=1e-3).run(g, ctx)


def test_distill_refuses_quantized_graphs_and_missing_teacher(vit_tiny, mnist_vit):
    _, calib, x, _ = mnist_vit
    g = capture(vit_tiny, x[:2])
    with pytest.raises(CompressorError, match="teacher"):
        _pass("finetune.distill", steps=1).run(g, PassContext(calib=calib, calib_limit=32))
    ctx = PassContext(calib=calib, calib_limit=32, teacher=g.clone())
    _pass("quant.int8_ptq").run(g, ctx)
    with pytest.raises(CompressorError, match="before quantization"):
        _pass("finetune.distill", steps=1).run(g, ctx)


def test_distill_never_returns_a_worse_model(mnist_vit):
    """A learning rate that wrecks the weights: the held-out score never beats the start, so the
    pass hands back the starting weights unchanged."""
    model, calib, x, _ = mnist_vit
    g = capture(model, x[:2])
    ctx = PassContext(calib=calib, calib_limit=64, teacher=g.clone())
    start = {k: v.clone() for k, v in g.gm.state_dict().items()}
    _pass("finetune.distill", steps=10, lr=1.0, warmup=0.0, eval_every=5).run(g, ctx)
    s = ctx.log[-1].summary
    assert s["best_step"] == 0 and s["held_out"] >= 12 and s["images"] + s["held_out"] == 64
    assert s["held_out_agreement_after"] == s["held_out_agreement_before"] == 100.0
    for k, v in g.gm.state_dict().items():
        assert torch.equal(v, start[k]), k


def test_structured_pruning_refuses_a_model_without_heads_or_ffns(mnist_calib_tensor):
    from compressor import zoo
    from compressor.data import DataSource

    torch.manual_seed(0)
    g = capture(zoo.build("resnet_mnist").eval(), mnist_calib_tensor[:2])
    ctx = PassContext(calib=DataSource("t", mnist_calib_tensor), teacher=g.clone())
    with pytest.raises(CompressorError, match=r"nothing to prune.*attention heads.*for a CNN"):
        _pass("prune.structured").run(g, ctx)
