"""I-ViT integer-only: kernels (int64 reference = float64 simulation, close to the float op), the
graph conversion, and its integer artifacts bit-exact to the reference on the digits test split."""

from __future__ import annotations

import math
import operator

import numpy as np
import onnx
import pytest
import torch

from compressor import zoo
from compressor.data import DataSource
from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.quant import intonly
from compressor.passes.quant.int_only import simulate
from compressor.passes.quant.intonly.arith import TORCH, dyadic
from compressor.passes.quant.intonly.layernorm import isqrt, output_scale
from compressor.passes.quant.intonly.shiftgelu import MAX_N, gelu_x0
from compressor.passes.quant.intonly.shiftmax import SHIFTMAX_N, normalizer_bits, shift_exp_n
from exporters.onnx import OnnxExporter

g = torch.Generator().manual_seed(0)


def both(target, x: torch.Tensor, *args):
    """(int64 reference, float64 simulation) of one op on the same integers."""
    ref = target(x, *args)
    sim = intonly.SIMULATIONS[target](x.double(), *args)
    assert sim.dtype == torch.float64
    return ref, sim


def test_isqrt_is_exact_where_ivit_newton_is_not():
    small = torch.arange(0, 5000, dtype=torch.int64)
    large = torch.randint(0, 2**62, (5000,), generator=g, dtype=torch.int64)
    edges = torch.tensor([2**k + d for k in range(1, 62) for d in (-1, 0, 1)], dtype=torch.int64)
    for v in (small, large, edges):
        got = isqrt(TORCH, v)
        want = torch.tensor([max(math.isqrt(int(a)), 1) for a in v])
        assert torch.equal(got, want)
        exact = v < 2**52  # the float64 simulation's range (variances stay far below it)
        assert torch.equal(isqrt(TORCH, v[exact].double()), want[exact].double())


def logit_cases(length: int = 17) -> list[torch.Tensor]:
    rows = torch.randint(-128, 128, (64, length), generator=g)
    equal = torch.full((4, length), 37)
    one_hot = torch.full((4, length), -128)
    one_hot[:, 3] = 127
    extremes = torch.tensor([[127] * 8 + [-128] * (length - 8), [-128] * length])
    return [rows, equal, one_hot, extremes]


@pytest.mark.parametrize("length", [17, 197])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("scale", [1.0, 0.1, 0.01, 0.0005])
def test_shiftmax_reference_equals_simulation_and_tracks_softmax(scale, bits, length):
    x0 = math.floor(-1 / scale)
    k = normalizer_bits(x0, length)
    one = 2 ** (bits - 1)
    for x in logit_cases(length):
        ref, sim = both(intonly.SHIFTMAX, x, x0, k, bits)
        assert torch.equal(ref.double(), sim)
        assert int(ref.min()) >= 0 and int(ref.max()) <= one  # what attn·v's unsigned operand holds
        probs = ref.double() / one
        # each entry loses at most half an output step to rounding, the row a factor's 2^-8 and the
        # floor's (length − 1)·2^-15 of ShiftExp's clipped logits
        slack = length / 2 / one + 2**-8 + length * 2**-15
        assert float(probs.sum(-1).sub(1).abs().max()) <= slack + 1e-12
        # at S = 1 ShiftExp's fraction r has no bits (x0 = −1): its 2^r is 1 or ½, 0.14 off at worst
        assert float((probs - torch.softmax(x.double() * scale, -1)).abs().max()) < (0.15 if scale == 1 else 0.12)
    equal = both(intonly.SHIFTMAX, logit_cases(length)[1], x0, k, bits)[0]
    assert len(equal.unique()) == 1  # all-equal logits give a uniform row


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("scale", [0.5, 0.1, 0.05])
def test_shiftmax_one_hot_row_at_197_tokens(scale, bits):
    """One 8-bit logit at 127, 196 at −128: float gives ≥ 0.9994, I-ViT's reference 0.992. When
    ShiftExp's range shrank with the row length (n = 11 at S = 0.05) the 196 clipped logits
    inflated the sum and the top came out at 0.906."""
    x0 = math.floor(-1 / scale)
    x = torch.full((3, 197), -128, dtype=torch.int64)
    x[:, 7] = 127
    ref, sim = both(intonly.SHIFTMAX, x, x0, normalizer_bits(x0, 197), bits)
    assert torch.equal(ref.double(), sim)
    top = ref[:, 7].double() / 2 ** (bits - 1)
    assert bool((top >= 0.99).all()), top


def test_normalizer_keeps_the_products_in_float64s_exact_range():
    assert normalizer_bits(-1, 17) == 0 and normalizer_bits(-20, 197) == 4  # a coarse short row needs no widening
    for x0, length in [(-1, 1), (-2000, 197), (-10**5, 4096)]:
        k = normalizer_bits(x0, length)
        biggest = length * -x0 * 2**SHIFTMAX_N
        assert (2 ** (31 + k) - 1) // biggest >= 2**8 and 31 + k <= 52
    with pytest.raises(ValueError, match="too fine"):
        normalizer_bits(-(2**30), 197)


@pytest.mark.parametrize("scale", [0.5, 0.05, 0.005])
def test_shiftgelu_reference_equals_simulation_and_tracks_gelu(scale):
    x0 = gelu_x0(scale)
    for x in [*logit_cases(), torch.zeros(2, 17, dtype=torch.int64), -torch.arange(1, 18).expand(2, 17)]:
        ref, sim = both(intonly.SHIFTGELU, x, x0, shift_exp_n(x0, 2, MAX_N), 8)
        assert torch.equal(ref.double(), sim)
        real = ref.double() * scale / 128
        exact = torch.nn.functional.gelu(x.double() * scale)
        assert float((real - exact).abs().max()) < 0.06 * max(1.0, float(x.abs().max()) * scale)


def test_i_layernorm_reference_equals_simulation_and_tracks_layernorm():
    c = 64
    gamma, beta = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    out_scale = output_scale(gamma)
    bias = torch.round(beta.double() / out_scale).long()
    wide = [torch.randint(-2**15, 2**15, (32, c), generator=g),
            torch.tensor([[32767] * (c // 2) + [-32768] * (c // 2)])]
    for x in wide:
        ref, sim = both(intonly.I_LAYERNORM, x, bias, c)
        assert torch.equal(ref.double(), sim)
        exact = torch.nn.functional.layer_norm(x.double(), (c,), gamma.double(), beta.double(), eps=1e-12)
        assert float((ref.double() * out_scale - exact).abs().max()) < 0.02
    # V = 32: I-ViT's Newton root (from 2^16, 10 steps) stops at 64 and shrinks the row to RMS 0.09;
    # ours is floor(√32) = 5, RMS 1.13 (integer truncation of a tiny root)
    x = torch.tensor([[-1, 0, 1, 0] * (c // 4)])
    ref, sim = both(intonly.I_LAYERNORM, x, torch.zeros(c, dtype=torch.int64), c)
    assert torch.equal(ref.double(), sim)
    assert 0.85 < float((ref.double() * c**0.5 / 2**15).square().mean().sqrt()) < 1.2
    ref, sim = both(intonly.I_LAYERNORM, torch.full((2, c), 1234), bias, c)  # zero variance: the bias alone
    assert torch.equal(ref.double(), sim)
    assert torch.allclose(ref.double() * out_scale, beta.double().expand(2, c), atol=1e-3)


def test_dyadic_requantize_and_add_round_to_nearest():
    ratio = np.array([0.37, 1.9, 3e-5, -0.8])
    m, e = dyadic(ratio)
    assert np.allclose(m / 2.0**e, ratio, rtol=2**-22)
    x = torch.randint(-2**28, 2**28, (128, 4), generator=g)
    shift = torch.tensor(e)
    ref, sim = both(intonly.REQUANTIZE, x, torch.tensor(m), shift, -2**15, 2**15 - 1)
    assert torch.equal(ref.double(), sim)
    want = torch.clamp(torch.floor(x.double() * torch.tensor(m) / 2.0**shift + 0.5), -2**15, 2**15 - 1)
    assert torch.equal(ref.double(), want)
    y = torch.randint(-2**15, 2**15, (128, 4), generator=g)
    args = (torch.tensor(m), shift, y, torch.tensor(m[::-1].copy()), shift.flip(0), -2**15, 2**15 - 1)
    ref, sim = both(intonly.INT_ADD, x, *args)
    assert torch.equal(ref.double(), sim)


@pytest.fixture(scope="module")
def int_vit(mnist_vit):
    model, calib, x, y = mnist_vit
    graph = capture(model, x[:2])
    ctx = PassContext(calib=calib)
    PASSES["quant.intonly"]().run(graph, ctx)
    return graph, ctx.log[-1].summary, x, y


def test_intonly_graph_is_integer_and_accurate(int_vit, mnist_vit):
    graph, summary, x, y = int_vit
    assert summary["ops"]["shiftmax"] == 4 and summary["ops"]["i_layernorm"] == 9 and summary["ops"]["shiftgelu"] == 4
    float_targets = {n.target for n in graph.nodes if n.op == "call_function"} - set(intonly.SIMULATIONS)
    float_ops = ("linear", "softmax", "gelu", "layer_norm", "matmul", "conv")
    for t in float_targets:  # only shape ops remain outside the integer custom ops
        assert t is operator.getitem or ("aten." in str(t) and not any(k in str(t) for k in float_ops)), t
    with torch.no_grad():
        base = float((mnist_vit[0](x).argmax(1) == y).float().mean() * 100)
    logits = graph(x)
    acc = float((logits.argmax(1) == y).float().mean() * 100)
    assert acc >= base - 0.5, (acc, base)
    assert torch.equal(simulate(graph, x), logits)  # the float64 simulation is the reference, bit for bit


def test_intonly_onnx_is_integer_only_and_bit_exact(int_vit, tmp_path):
    import onnxruntime as ort

    graph, summary, x, _ = int_vit
    art = OnnxExporter().export(graph, tmp_path / "int.onnx", "int-only")
    assert art.meta["tables"] >= summary["ops"]["shiftgelu"]  # each ShiftGELU became one table Gather
    model = onnx.shape_inference.infer_shapes(onnx.load(str(art.path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    nodes = list(model.graph.node)
    q = next(i for i, n in enumerate(nodes) if n.op_type == "QuantizeLinear")
    dq = next(i for i, n in enumerate(nodes) if n.op_type == "DequantizeLinear")
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    for n in nodes[q + 1:dq]:
        assert all(types.get(o) not in floats for o in n.output), (n.op_type, n.output)
    assert {"MatMulInteger", "QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in nodes}
    assert not {"MatMul", "Softmax", "LayerNormalization", "Gelu", "Erf", "Sqrt", "Exp"} & {n.op_type for n in nodes}
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.array_equal(out, graph(x).numpy())


def test_sdpa_vit_converts_to_the_same_integer_graph(mnist_vit):
    model, calib, x, _ = mnist_vit
    sdpa = zoo.build("vit_mnist_sdpa")
    sdpa.load_state_dict(model.state_dict())
    outs = []
    for m in (model, sdpa.eval()):
        graph = capture(m, x[:2])
        PASSES["quant.intonly"]().run(graph, PassContext(calib=calib, calib_limit=64))
        outs.append(graph(x[:200]))
    assert torch.equal(*outs)


def test_w4_codes_and_finetune_move_codes_without_breaking_exactness(vit_tiny, mnist_calib_tensor):
    graph = capture(vit_tiny, mnist_calib_tensor[:2])
    teacher = capture(vit_tiny, mnist_calib_tensor[:2])
    params = PASSES["quant.intonly"].Params(w_bits=4, finetune_steps=3, finetune_lr=0.5, calib_images=16)
    ctx = PassContext(calib=DataSource("t", mnist_calib_tensor[:16]), calib_batch_size=16, teacher=teacher)
    PASSES["quant.intonly"](params).run(graph, ctx)
    ft = ctx.log[-1].summary["finetune"]
    assert ft["codes_changed"] > 0
    codes = [graph.gm.get_buffer(str(n.args[1].target)) for n in graph.nodes if n.target is intonly.INT_LINEAR]
    assert max(int(c.abs().max()) for c in codes) <= 7
    assert torch.equal(simulate(graph, mnist_calib_tensor[:8]), graph(mnist_calib_tensor[:8]))


def test_intonly_rejects_a_cnn_by_naming_the_op(mnist_calib_tensor):
    cnn = zoo.build("resnet_mnist").eval()
    graph = capture(cnn, mnist_calib_tensor[:2])
    with pytest.raises(CompressorError, match=r"quant\.intonly") as err:
        PASSES["quant.intonly"]().run(graph, PassContext(calib=DataSource("t", mnist_calib_tensor[:8])))
    assert "float recipe" in str(err.value) or "patch embedding" in str(err.value)


def test_intonly_tvm_artifact_is_bit_exact(vit_tiny, mnist_calib_tensor, tmp_path):
    pytest.importorskip("tvm", reason="the tvm extra is not installed: pip install 'compressor[tvm]'")
    from exporters.tvm import TvmExporter

    graph = capture(vit_tiny, mnist_calib_tensor[:2])
    PASSES["quant.intonly"]().run(graph, PassContext(calib=DataSource("t", mnist_calib_tensor[:32])))
    x = mnist_calib_tensor[32:45]  # 13 rows through a batch-4 library: padding and splitting included
    out = TvmExporter(batch=4).export(graph, tmp_path / "int.so", "int-only").runner(2)(x.numpy())
    assert np.array_equal(out, graph(x).numpy())
    # re-exported to the same file in the same process (dlopen caches by name): the new model runs
    for node in graph.nodes:
        if node.target is intonly.INT_LINEAR:
            codes = graph.gm.get_buffer(str(node.args[1].target))
            codes.copy_(-codes)
    out2 = TvmExporter(batch=4).export(graph, tmp_path / "int.so", "int-only").runner(2)(x.numpy())
    assert np.array_equal(out2, graph(x).numpy()) and not np.array_equal(out2, out)


@pytest.fixture(scope="module")
def vit197():
    """A one-block ViT at 224x224, patch 16 (197 tokens), random weights with qkv scaled up so the
    attention rows range from flat to one-hot; calibrated and run on the bundled photographs."""
    from pathlib import Path

    from compressor.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess, open_source

    torch.manual_seed(0)
    model = zoo.build("vit", img_size=224, patch_size=16, in_chans=3, num_classes=10, embed_dim=32, depth=1,
                      num_heads=2, mlp_ratio=2.0).eval()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(8.0)
    spec = Preprocess(size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    photos = open_source(Path(__file__).resolve().parents[1] / "calibration_data" / "photos", spec)
    x = next(photos.batches(len(photos)))[0]
    return model, photos, torch.cat([x, x.flip(-1), x.flip(-2)])


def int_graph_197(vit197, bits: int):
    model, photos, x = vit197
    graph = capture(model, x[:2])
    PASSES["quant.intonly"](PASSES["quant.intonly"].Params(softmax_bits=bits)).run(graph, PassContext(calib=photos))
    probs = [n for n in graph.nodes if n.target is intonly.SHIFTMAX]
    assert len(probs) == 1 and probs[0].args[3] == bits
    ref = graph(x)
    assert torch.equal(simulate(graph, x), ref)
    return graph, x, ref


@pytest.mark.parametrize("bits", [pytest.param(8, marks=pytest.mark.slow), 16])
def test_intonly_at_197_tokens_ort_equals_reference(vit197, bits, tmp_path):
    import onnxruntime as ort

    graph, x, ref = int_graph_197(vit197, bits)
    art = OnnxExporter().export(graph, tmp_path / "int.onnx", "int-only")
    matmuls = sum(n.op_type == "MatMulInteger" for n in onnx.load(str(art.path)).graph.node)
    assert matmuls == 8 + (bits == 16)  # patches, qkv, q·kᵀ, attn·v (two byte planes at 16 bits), proj, fc1, fc2, head
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], ref.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 16])
def test_intonly_at_197_tokens_tvm_equals_reference(vit197, bits, tmp_path):
    pytest.importorskip("tvm", reason="the tvm extra is not installed: pip install 'compressor[tvm]'")
    from exporters.tvm import TvmExporter

    graph, x, ref = int_graph_197(vit197, bits)
    out = TvmExporter(batch=8).export(graph, tmp_path / "int.so", "int-only").runner(2)(x.numpy())
    assert np.array_equal(out, ref.numpy())
