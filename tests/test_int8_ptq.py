import pytest
import torch

from compressor import zoo
from compressor.data import DataSource
from compressor.graph import Graph, capture
from compressor.passes import PASSES, PassContext
from compressor.passes.quant.ops import DEQUANTIZE, QUANTIZE


def _quantize(model, calib, **params):
    g = capture(model, calib[:2])
    ctx = PassContext(calib=DataSource("test", calib), calib_batch_size=16)
    p = PASSES["quant.int8_ptq"](PASSES["quant.int8_ptq"].Params(**params))
    p.run(g, ctx)
    return g, ctx.log[0]


def _sqnr(a, b):
    return float(10 * torch.log10(b.pow(2).sum() / (a - b).pow(2).sum()).detach())


def test_vit_quantizes_linear_conv_and_attention(vit_tiny, mnist_calib_tensor):
    g, record = _quantize(vit_tiny, mnist_calib_tensor)
    assert record.summary["quantized_ops"] == {"conv": 1, "linear": 9, "matmul": 4}
    # every quantized weight is an int8 buffer; no float weight of a quantized layer remains
    int8 = {k for k, v in g.gm.state_dict().items() if v.dtype == torch.int8 and v.dim() >= 2}
    assert len(int8) == 10
    assert not any(k.endswith("qkv.weight") or k.endswith("fc1.weight") for k in g.gm.state_dict())
    # LayerNorm, softmax and GELU stay float: their inputs are not dequantized values
    for kind in ("layer_norm", "softmax", "gelu"):
        for n in g.find(kind):
            assert n.args[0].target is not DEQUANTIZE
    # each weight's DequantizeLinear carries its quantizer annotation for later passes and the report
    notes = dict(g.annotated("quant"))
    assert len(notes) == 10 and {v["axis"] for v in notes.values()} == {0, 1}
    assert all(n.target is DEQUANTIZE and v["weight_bits"] in (7, 8) for n, v in notes.items())
    n_q = sum(1 for n in g.nodes if n.target is QUANTIZE)
    # image, patch-conv output, head input + per block: inputs of qkv, proj, fc1, fc2, both operands of 2 matmuls
    assert n_q == record.summary["activation_quantizers"] == 3 + 2 * (4 + 4)


def test_simulation_is_close_to_float(vit_tiny, mnist_calib_tensor):
    g, _ = _quantize(vit_tiny, mnist_calib_tensor)
    assert _sqnr(g(mnist_calib_tensor), vit_tiny(mnist_calib_tensor)) > 25


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_observers_all_work(vit_tiny, mnist_calib_tensor, observer):
    g, record = _quantize(vit_tiny, mnist_calib_tensor, activation_observer=observer)
    assert record.params["activation_observer"] == observer
    assert _sqnr(g(mnist_calib_tensor), vit_tiny(mnist_calib_tensor)) > 15


def test_reduce_range_limits_weights_to_7_bits(vit_tiny, mnist_calib_tensor):
    g, record = _quantize(vit_tiny, mnist_calib_tensor, reduce_range=True)
    weights = [v for v in g.gm.state_dict().values() if v.dtype == torch.int8 and v.dim() >= 2]
    assert max(int(w.abs().max()) for w in weights) <= 63
    assert record.summary["weight_bits_effective"] == {"7": 10}
    g8, _ = _quantize(vit_tiny, mnist_calib_tensor, reduce_range=False)
    assert max(int(v.abs().max()) for v in g8.gm.state_dict().values() if v.dtype == torch.int8) == 127


def test_auto_reduce_range_is_resolved_in_the_record(vit_tiny, mnist_calib_tensor):
    _, record = _quantize(vit_tiny, mnist_calib_tensor)
    assert record.params["reduce_range"] in (True, False)


def test_int8_activations_are_symmetric(vit_tiny, mnist_calib_tensor):
    _, record = _quantize(vit_tiny, mnist_calib_tensor, activation_dtype="int8")
    assert {a["zero_point"] for a in record.summary["activations"]} == {0}


def _attention_zero_points(g: Graph) -> list[int]:
    """Zero points of the operands of activation x activation matmuls (q·kᵀ, softmax·v); quantized
    Linears are matmuls too here, with a weight operand."""
    def zp(a):
        return int(g.attr(a.args[0].args[2])) if a.target is DEQUANTIZE and a.args[0].target is QUANTIZE else None

    return [zp(a) for n in g.find("matmul") if all(zp(a) is not None for a in n.args[:2]) for a in n.args[:2]]


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_attention_operands_have_zero_point_zero(vit_tiny, mnist_calib_tensor, observer):
    """OpenVINO runs an activation x activation MatMul in int8 only without zero points: q, kᵀ and v are
    int8 symmetric, the softmax output uint8 from 0; the other activations keep their zero points."""
    g, record = _quantize(vit_tiny, mnist_calib_tensor, activation_observer=observer, symmetric_attention=True)
    assert _attention_zero_points(g) == [0] * 8  # 2 blocks x 2 matmuls x 2 operands
    assert any(a["zero_point"] != 0 for a in record.summary["activations"])  # the rest stay asymmetric uint8
    asym, _ = _quantize(vit_tiny, mnist_calib_tensor, activation_observer=observer)  # the default
    assert any(z != 0 for z in _attention_zero_points(asym))


def test_skip_and_attention_switch(vit_tiny, mnist_calib_tensor):
    g, record = _quantize(vit_tiny, mnist_calib_tensor, skip=["head", "blocks.1.*"], quantize_attention=False)
    assert record.summary["quantized_ops"] == {"conv": 1, "linear": 4}
    assert "head.weight" in g.gm.state_dict()
    paths = {Graph.module_path(n) for n in g.nodes if n.target is DEQUANTIZE}
    assert not any(p.startswith("blocks.1") for p in paths)


def _weight_range(g, prefix):
    """Largest |int| of the weights stored under module paths under `prefix` (dots as underscores)."""
    return max(int(v.abs().max()) for k, v in g.gm.state_dict().items()
               if v.dtype == torch.int8 and v.dim() >= 2 and k.startswith(prefix))


def test_layer_rules_precedence_global_op_path(vit_tiny, mnist_calib_tensor):
    # global 8 (reduce_range off) -> every linear at 4 by op -> blocks.0 back to 6 by path; head in float
    layers = [{"match": "blocks.0.*", "weight_bits": 6}, {"op": "linear", "weight_bits": 4},
              {"match": "head", "quantize": False}]
    g, record = _quantize(vit_tiny, mnist_calib_tensor, reduce_range=False, layers=layers)
    assert _weight_range(g, "blocks_0") == 31  # the path rule wins over the op rule, whatever the order
    assert _weight_range(g, "blocks_1") == 7
    assert _weight_range(g, "patch") == 127  # a conv: untouched by the linear rule
    assert "head.weight" in g.gm.state_dict()
    assert record.summary["weight_bits_effective"] == {"4": 4, "6": 4, "8": 1}
    # within one tier the later rule wins
    g2, _ = _quantize(vit_tiny, mnist_calib_tensor, reduce_range=False,
                      layers=[{"match": "blocks.*", "weight_bits": 3}, {"match": "blocks.1.*", "weight_bits": 5}])
    assert (_weight_range(g2, "blocks_0"), _weight_range(g2, "blocks_1")) == (3, 15)


def test_layer_rules_are_validated(vit_tiny, mnist_calib_tensor):
    from pydantic import ValidationError

    from compressor.errors import CompressorError

    params = PASSES["quant.int8_ptq"].Params
    for bad in ({"weight_bits": 4}, {"op": "linear", "match": "x", "weight_bits": 4}, {"op": "linear"},
                {"op": "matmul", "weight_bits": 4}, {"op": "gemm", "quantize": False},
                {"match": "head", "weight_bits": 1}, {"match": "head", "bits": 4}):
        with pytest.raises(ValidationError):
            params(layers=[bad])
    with pytest.raises(CompressorError, match=r"matches no layer.*closest"):
        _quantize(vit_tiny, mnist_calib_tensor, layers=[{"match": "blockz.0.*", "quantize": False}])


def test_cnn_and_sdpa_vit(mnist_calib_tensor):
    torch.manual_seed(0)
    cnn = zoo.build("resnet_mnist").eval()
    g, record = _quantize(cnn, mnist_calib_tensor)
    assert record.summary["quantized_ops"]["conv"] >= 4 and record.summary["quantized_ops"]["linear"] == 1
    assert _sqnr(g(mnist_calib_tensor), cnn(mnist_calib_tensor)) > 20
    sdpa = zoo.build("vit_mnist_sdpa", depth=2).eval()
    g, record = _quantize(sdpa, mnist_calib_tensor)
    assert record.summary["sdpa_decomposed"] == 2 and record.summary["quantized_ops"]["matmul"] == 4


def _linear_gemm_outputs(g):
    """The 2-D result (matmul, or its bias add) of every quantized Linear, found from its weight's DQ (axis 1)."""
    outs = []
    for w_dq, note in g.annotated("quant"):
        if note["axis"] == 1:
            (mm,) = w_dq.users
            users = list(mm.users)
            outs.append(users[0] if len(users) == 1 and users[0].target == torch.ops.aten.add.Tensor else mm)
    return outs


def test_quantize_linear_output(vit_tiny, mnist_calib_tensor):
    g, record = _quantize(vit_tiny, mnist_calib_tensor, quantize_linear_output=True)
    outs = _linear_gemm_outputs(g)
    assert len(outs) == 9
    # every Linear feeds its own quantizer directly (DQ -> linear -> Q, XNNPACK's int8 Linear), on the 2-D view
    for out in outs:
        (q,) = out.users
        assert q.target is QUANTIZE
    # q, k and v are views of the qkv output: their quantizers reuse its scale (exact), no second rounding
    shared = [a for a in record.summary["activations"] if "same_as" in a]
    assert len(shared) == 3 * 2
    scales = {a["tensor"]: a["scale"] for a in record.summary["activations"]}
    assert all(a["scale"] == scales[a["same_as"]] for a in shared)
    n_q = sum(1 for n in g.nodes if n.target is QUANTIZE)
    assert n_q == record.summary["activation_quantizers"] == 3 + 2 * (4 + 4) + 9
    assert _sqnr(g(mnist_calib_tensor), vit_tiny(mnist_calib_tensor)) > 25
    # off (the default): Linear outputs stay float, the graph is what it always was
    g0, _ = _quantize(vit_tiny, mnist_calib_tensor)
    assert not any(u.target is QUANTIZE for out in _linear_gemm_outputs(g0) for u in out.users)
    g1, _ = _quantize(vit_tiny, mnist_calib_tensor, quantize_linear_output=False)
    assert g1.gm.code == g0.gm.code
