"""ExecuTorch target: the quantized_decomposed rewrite keeps our numerics, the .pte reloads and
matches, int8 convolutions really run in int8 inside XNNPACK, and a failed export leaves no file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch", reason="the executorch extra is not installed: pip install 'compressor[executorch]'")

from compressor import zoo
from compressor.data import DataSource, Preprocess, open_source
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from exporters.executorch import ExecuTorchExporter
from exporters.quantized_decomposed import DQ_PER_CHANNEL, DQ_PER_TENSOR, Q_PER_TENSOR, to_pt2e

ROOT = Path(__file__).resolve().parent.parent
N_EVAL = 300  # real test digits per accuracy check: enough for a 0.5-point band to mean something


@pytest.fixture(scope="module")
def cnn_mnist(mnist_vit):
    """The bundled trained CNN, 64 calibration digits, and N_EVAL labelled test digits."""
    ckpt = torch.load(ROOT / "cnn_mnist.pt", weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    spec = Preprocess(**ckpt["preprocess"])
    x, y = map(torch.cat, zip(*open_source(ROOT / "calibration_data/mnist/test", spec).batches(N_EVAL),
                              strict=True))
    calib = open_source(ROOT / "calibration_data/mnist/calib", spec)
    return model.eval(), calib, x[:N_EVAL], y[:N_EVAL]


@pytest.fixture(scope="module")
def graphs(mnist_vit, cnn_mnist):
    """name -> (float graph, int8-ptq graph, test x, test y), built on first use."""
    models = {"vit": mnist_vit, "cnn": cnn_mnist}
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            model, calib, x, y = models[name]
            g = capture(model, x[:2])
            g8 = g.clone()
            calib = DataSource("calib", torch.cat([b[0] for b in calib.batches(64)])[:64])
            PASSES["reparam.fold_bn"]().run(g8, PassContext(calib=calib))
            PASSES["quant.int8_ptq"]().run(g8, PassContext(calib=calib))
            cache[name] = (g, g8, x[:N_EVAL], y[:N_EVAL])
        return cache[name]

    return get


def _top1(logits: np.ndarray, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.numpy()).mean() * 100)


@pytest.mark.parametrize("name", ["vit", "cnn"])
def test_to_pt2e_keeps_numerics_and_uses_convert_pt2e_form(graphs, name):
    _, g8, x, _ = graphs(name)
    ep = to_pt2e(g8)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert not any("compressor" in str(t) for t in targets)
    assert targets.count(Q_PER_TENSOR) > 0 and targets.count(DQ_PER_TENSOR) >= targets.count(Q_PER_TENSOR)
    for n in ep.graph.nodes:  # weights: int8 codes, per output channel on axis 0, as XNNPACK/CoreML read them
        if n.target is DQ_PER_CHANNEL:
            assert n.args[3] == 0 and n.args[6] == torch.int8
        if n.target is torch.ops.aten.linear.default:
            assert n.args[1].target is DQ_PER_CHANNEL and n.args[2] is not None  # float bias folded in
        if n.target in (DQ_PER_TENSOR, DQ_PER_CHANNEL):  # a shared DQ makes XNNPACK's partitions cyclic
            assert len(n.users) == 1, n.name
    with torch.no_grad():
        want, got = g8.gm(x[:64]), ep.module()(x[:64])
    diff = (want - got).abs()
    # identical codes and scales; only x·(1/s) vs x/s rounding at exact .5 ties may move one code
    assert float(diff.median()) < 1e-5 and float(diff.max()) < 0.05
    assert (want.argmax(1) == got.argmax(1)).float().mean() > 0.99


def test_float_graph_passes_through_unchanged(graphs):
    g, _, x, _ = graphs("cnn")
    ep = to_pt2e(g)
    assert not any("quantized_decomposed" in str(n.target) for n in ep.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x[:8]), g.gm(x[:8]))


def test_float_pte_reloads_and_matches_torch(graphs, tmp_path):
    g, _, x, _ = graphs("cnn")
    art = ExecuTorchExporter().export(g, tmp_path / "m.pte", "fp32")
    assert art.path.is_file() and art.meta["delegation"]["int8_ops"] == 0
    assert art.meta["delegation"]["xnnpack_gemms"]["conv"]["fp32"] > 0
    run = art.runner(2)
    for b in (1, 7, 40):  # 40 exceeds the planned capacity: the runner must chunk
        with torch.no_grad():
            np.testing.assert_allclose(run(x[:b].numpy()), g.gm(x[:b]).numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["cnn", pytest.param("vit", marks=pytest.mark.slow)])  # ViT lowers in ~90 s
def test_int8_pte_is_int8_in_xnnpack_and_accurate(graphs, name, tmp_path):
    g, g8, x, y = graphs(name)
    art = ExecuTorchExporter().export(g8, tmp_path / "m.pte", "int8")
    gemms = art.meta["delegation"]["xnnpack_gemms"]
    # every quantized conv (int8_ptq quantizes their outputs) is an int8 XNNPACK convolution
    n_conv = g8.count("conv")
    assert gemms["conv"] == {"int8": n_conv, "fp32": 0}
    # int8_ptq's Linears have float outputs, which XNNPACK's static int8 GEMM cannot produce: they
    # must run as correct fp32 fully-connected layers (see quantized_decomposed's requantized_only)
    n_linear = sum(n.target is torch.ops.aten.linear.default for n in to_pt2e(g8).graph.nodes)
    assert gemms.get("linear", {"int8": 0, "fp32": 0}) == {"int8": 0, "fp32": n_linear}
    run = art.runner(2)
    got = run(x.numpy())
    with torch.no_grad():
        sim, ref = g8.gm(x).numpy(), g.gm(x).numpy()
    assert np.abs(got - sim).max() < 0.25  # one-code flips at .5 ties (measured 0.04 CNN, 0.11 ViT on 1000)
    assert abs(_top1(got, y) - _top1(ref, y)) <= 0.5 + 100 / len(y)  # 0.5 points, plus one digit of N_EVAL


def test_failed_export_leaves_nothing(graphs, tmp_path, monkeypatch):
    import exporters.executorch as et

    def boom(program):
        raise RuntimeError("lowering exploded")

    g, _, _, _ = graphs("cnn")
    monkeypatch.setattr(et, "lower_to_edge", boom)
    with pytest.raises(Exception, match="lowering exploded"):
        ExecuTorchExporter().export(g, tmp_path / "m.pte", "fp32")
    assert list(tmp_path.iterdir()) == []

    def bad_bytes(tmp, *a):
        raise RuntimeError("verification failed")

    monkeypatch.undo()
    monkeypatch.setattr(et, "_verify", bad_bytes)
    with pytest.raises(RuntimeError, match="verification failed"):
        ExecuTorchExporter().export(g, tmp_path / "m.pte", "fp32")
    assert list(tmp_path.iterdir()) == []


def test_options_and_availability():
    ok, reason = ExecuTorchExporter.available()
    assert ok, reason
    with pytest.raises(Exception, match="batch"):
        ExecuTorchExporter(batch=0)


@pytest.mark.slow  # EfficientNet-Lite0 lowers in 2-4 minutes
@pytest.mark.parametrize("edge", [False, True])
def test_inverted_residual_cnn_lowers_with_every_conv_in_int8(edge, tmp_path):
    """EfficientNet-Lite0's block input feeds the expand conv and the residual add: before each DQ got
    one consumer, XNNPACK's partitioner built a dependency cycle and lowering failed."""
    torch.manual_seed(0)
    model = zoo.build("efficientnet_lite0").eval()
    x = torch.randn(8, 3, 224, 224)
    g = capture(model, x[:2])
    ctx = PassContext(calib=DataSource("calib", x), calib_batch_size=8)
    PASSES["reparam.fold_bn"]().run(g, ctx)
    PASSES["quant.int8_ptq"](PASSES["quant.int8_ptq"].Params(quantize_linear_output=edge)).run(g, ctx)
    art = ExecuTorchExporter().export(g, tmp_path / "m.pte", "int8")
    assert art.meta["delegation"]["xnnpack_gemms"]["conv"] == {"int8": g.count("conv"), "fp32": 0}
    with torch.no_grad():
        sim = g.gm(x).numpy()
    assert (art.runner(2)(x.numpy()).argmax(1) == sim.argmax(1)).mean() >= 0.75  # ties flip few of 8
