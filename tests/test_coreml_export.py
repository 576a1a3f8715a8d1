"""Core ML target: conversion, what the saved package holds, and that our int8 quantization survives.

Linux has no Core ML runtime, so these tests check structure (reload, MIL op mix, quantized ops
and their count against our graph, package size), never Core ML's outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ct = pytest.importorskip("coremltools", reason="the coreml extra is not installed: pip install 'compressor[coreml]'")

from compressor import zoo  # noqa: E402
from compressor.data import DataSource  # noqa: E402
from compressor.errors import CompressorError  # noqa: E402
from compressor.graph import Graph, capture  # noqa: E402
from compressor.passes import PASSES, PassContext  # noqa: E402
from compressor.passes.quant import ops  # noqa: E402
from exporters.coreml import CoreMLArtifact, CoreMLExporter, inspect_package  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    ckpt = torch.load(ROOT / "cnn_mnist.pt", weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def _int8(model: torch.nn.Module, x: torch.Tensor, fold_bn: bool = False) -> Graph:
    g = capture(model, x[:2])
    ctx = PassContext(calib=DataSource("t", x[:16]))
    if fold_bn:
        PASSES["reparam.fold_bn"]().run(g, ctx)
    PASSES["quant.int8_ptq"]().run(g, ctx)
    return g


@pytest.fixture(scope="module")
def vit_int8(vit_tiny: torch.nn.Module, mnist_calib_tensor: torch.Tensor) -> Graph:
    return _int8(vit_tiny, mnist_calib_tensor)


@pytest.fixture(scope="module")
def cnn_int8(cnn: torch.nn.Module, mnist_calib_tensor: torch.Tensor) -> Graph:
    return _int8(cnn, mnist_calib_tensor, fold_bn=True)


@pytest.fixture(scope="module")
def cnn_graph(cnn: torch.nn.Module, mnist_calib_tensor: torch.Tensor) -> Graph:
    return capture(cnn, mnist_calib_tensor[:2])


def _our_quantizers(graph: Graph) -> tuple[int, int]:
    """(int8 weight tensors, activation quantizers) in our graph, counted from the graph itself."""
    weights = acts = 0
    for n in graph.gm.graph.nodes:
        if n.op == "call_function" and n.target is ops.QUANTIZE:
            acts += 1
        elif n.op == "call_function" and n.target is ops.DEQUANTIZE:
            codes = graph.attr(n.args[0])
            weights += codes is not None and codes.dtype == torch.int8
    return weights, acts


def _no_leftovers(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


def test_float_vit_converts(vit_tiny: torch.nn.Module, mnist_calib_tensor: torch.Tensor, tmp_path: Path) -> None:
    graph = capture(vit_tiny, mnist_calib_tensor[:2])
    art = CoreMLExporter().export(graph, tmp_path / "model.mlpackage", "fp32")
    assert art.path.is_dir() and (art.path / "Manifest.json").exists()
    assert not (art.path / "executorch_debug_handle_mapping.json").exists()
    spec = ct.models.MLModel(str(art.path), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion == 8  # iOS17, the default
    counts = art.meta["op_counts"]
    for op in ("linear", "matmul", "softmax", "layer_norm"):
        assert counts.get(op, 0) > 0, (op, counts)
    assert counts["softmax"] == 2 and counts["layer_norm"] == 2 * 2 + 1  # 2 blocks: 2 LN each + the final one
    assert art.meta["quant_ops"] == {} and art.meta["package_bytes"] == art.size_bytes
    assert art.inspect()["op_counts"] == counts  # meta describes the file on disk
    assert art.meta["not_verified"] and any("macOS" in s for s in art.meta["not_verified"])
    if sys.platform != "darwin":
        assert art.not_measured() == "needs macOS"
        with pytest.raises(CompressorError, match="macOS"):
            art.runner(1)


def test_float_cnn_converts_with_bn_folded(cnn_graph: Graph, tmp_path: Path) -> None:
    art = CoreMLExporter(compute_precision="fp32").export(cnn_graph, tmp_path / "cnn.mlpackage", "fp32")
    counts = art.meta["op_counts"]
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in cnn_graph.gm.modules()) or len(cnn_graph.find("conv"))
    assert counts.get("conv") == n_conv and counts.get("linear", 0) >= 1
    assert "batch_norm" not in counts  # coremltools folds BN into the conv weights of a float graph
    assert art.meta["batch"] is None and art.meta["inputs"][0]["name"]


def test_int8_vit_keeps_our_quantization(vit_int8: Graph, tmp_path: Path) -> None:
    """W8A8 with our scales: one constexpr per int8 weight, one MIL quantize per activation quantizer."""
    weights, acts = _our_quantizers(vit_int8)
    assert weights == 2 * 4 + 2 and acts > weights  # 4 Linears per block + patch conv + head; matmul operands too
    art = CoreMLExporter(compute_precision="fp32").export(vit_int8, tmp_path / "q.mlpackage", "int8")
    quant = inspect_package(art.path)["quant_ops"]
    assert quant.get("constexpr_affine_dequantize") == weights, quant  # iOS17 spelling
    assert quant.get("quantize") == acts and quant.get("dequantize") == acts, quant
    checks = art.meta["checks"]
    assert checks["ok"] and checks["activation_scales_found"] == acts
    assert checks["activation_scales_max_rel_err"] < 1e-6 and checks["quantize_rescaled"] == 0  # fp32: ours exactly
    assert any("matches our simulation" in s for s in art.meta["verified"]), art.meta["verified"]
    assert "our calibrated scales" in art.meta["activations"]


def test_int8_fp16_and_ios18(vit_int8: Graph, tmp_path: Path) -> None:
    """iOS18 spells int8 weights as constexpr_blockwise_shift_scale; fp16 rounds our scales, and says so."""
    weights, acts = _our_quantizers(vit_int8)
    art = CoreMLExporter(minimum_deployment_target="iOS18").export(vit_int8, tmp_path / "q.mlpackage", "int8")
    assert art.meta["spec_version"] == 9
    assert art.meta["quant_ops"].get("constexpr_blockwise_shift_scale") == weights
    assert art.meta["quant_ops"].get("quantize") == acts
    assert 0 < art.meta["checks"]["activation_scales_max_rel_err"] < 1e-3
    assert any("fp16" in n for n in art.meta["notes"])


def test_int8_cnn_residual_adds(cnn_int8: Graph, tmp_path: Path) -> None:
    """coremltools rescales the quantize after a quantized residual add; every scale of ours must still
    be in the program and every quantizer and weight accounted for."""
    weights, acts = _our_quantizers(cnn_int8)
    art = CoreMLExporter().export(cnn_int8, tmp_path / "q.mlpackage", "int8")
    quant, checks = art.meta["quant_ops"], art.meta["checks"]
    assert quant.get("constexpr_affine_dequantize") == weights and quant.get("quantize") == acts, quant
    assert checks["ok"] and checks["activation_scales_found"] == acts and checks["quantize_rescaled"] >= 1
    assert any("distributive_quantized_binary_op_scale_normalization" in n for n in art.meta["notes"])


def test_int8_weights_only(cnn_int8: Graph, tmp_path: Path) -> None:
    """activations: float runs on iOS16 (no MIL quantize there) and keeps every int8 weight."""
    weights, acts = _our_quantizers(cnn_int8)
    assert weights >= 2 and acts >= weights
    with pytest.raises(CompressorError, match="iOS17"):
        CoreMLExporter(minimum_deployment_target="iOS16").export(cnn_int8, tmp_path / "bad.mlpackage", "int8")
    assert not (tmp_path / "bad.mlpackage").exists()
    art = CoreMLExporter(minimum_deployment_target="iOS16", activations="float").export(
        cnn_int8, tmp_path / "w8.mlpackage", "int8")
    assert art.meta["spec_version"] == 7
    assert art.meta["quant_ops"] == {"constexpr_affine_dequantize": weights}
    assert "batch_norm" not in art.meta["op_counts"]  # folded before quantization
    assert any("activations: float" in n for n in art.meta["notes"])


def test_palettize_and_int8_weights_shrink_the_package(cnn_graph: Graph, tmp_path: Path) -> None:
    base = CoreMLExporter(weight_threshold=512).export(cnn_graph, tmp_path / "f16.mlpackage", "fp32")
    pal = CoreMLExporter(weights="palettize-4", weight_threshold=512).export(cnn_graph, tmp_path / "p4.mlpackage",
                                                                              "fp32")
    w8 = CoreMLExporter(weights="int8", weight_threshold=512).export(cnn_graph, tmp_path / "w8.mlpackage", "fp32")
    assert pal.meta["quant_ops"].get("constexpr_lut_to_dense", 0) >= 2
    assert w8.meta["quant_ops"].get("constexpr_affine_dequantize", 0) >= 2
    assert pal.size_bytes < w8.size_bytes < base.size_bytes
    assert "palettized" in pal.meta["weights"] and any("palettize-4" in s for s in pal.meta["not_verified"])


def test_deployment_target_sets_spec_version(cnn_graph: Graph, tmp_path: Path) -> None:
    for target, version, name in (("iOS16", 7, "iOS16/macOS13"), ("macOS15", 9, "iOS18/macOS15")):
        art = CoreMLExporter(minimum_deployment_target=target).export(cnn_graph, tmp_path / f"{target}.mlpackage",
                                                                      "fp32")
        spec = ct.models.MLModel(str(art.path), skip_model_load=True).get_spec()
        assert spec.specificationVersion == version and art.meta["deployment_target"] == name


@torch.library.custom_op("coreml_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _Unconvertible(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.coreml_test.mystery(x).flatten(1)


def test_failed_conversion_leaves_nothing(cnn_graph: Graph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = capture(_Unconvertible(), torch.randn(2, 1, 4, 4))
    with pytest.raises(CompressorError, match="could not convert"):
        CoreMLExporter().export(graph, tmp_path / "m.mlpackage", "fp32")
    assert not (tmp_path / "m.mlpackage").exists() and _no_leftovers(tmp_path)

    # a failure after coremltools started writing the folder: the half-written package must go too
    import exporters.coreml as coreml

    def broken(path: Path) -> None:
        assert (Path(path) / "Manifest.json").exists()
        raise OSError("disk full")

    monkeypatch.setattr(coreml, "_tidy_package", broken)
    with pytest.raises(OSError, match="disk full"):
        CoreMLExporter().export(cnn_graph, tmp_path / "m.mlpackage", "fp32")
    assert not (tmp_path / "m.mlpackage").exists() and _no_leftovers(tmp_path)


def test_options() -> None:
    assert CoreMLExporter.available() == (True, "")
    with pytest.raises(CompressorError, match="minimum_deployment_target"):
        CoreMLExporter(minimum_deployment_target="iOS9")
    with pytest.raises(CompressorError, match="weights"):
        CoreMLExporter(weights="int4")
    ex = CoreMLExporter(weights="palettize-6", compute_precision="fp32")
    base = ex.for_baseline()
    assert base.options.weights == "none" and base.options.compute_precision == "fp32"
    assert CoreMLArtifact("coreml", Path("x.mlpackage"), "fp32").not_measured() == (
        None if sys.platform == "darwin" else "needs macOS")
