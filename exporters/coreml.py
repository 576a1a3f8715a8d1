"""`coreml` target: an ML Program `.mlpackage` (a folder) for Apple devices, built by coremltools.

Route: torch.export program -> `run_decompositions({})` -> `coremltools.convert`. coremltools 9
accepts only ATEN/EDGE-dialect programs (a freshly exported one is TRAINING dialect), and its
TorchScript route breaks on numpy 2.4 (`aten::Int` of a 1-element array), hence the numpy<2.4 pin
in the `coreml` extra; the export route does not need it but the extra keeps both usable.

Float graphs can be compressed by coremltools itself (`weights`: int8 per-channel linear
quantization, or 4/6-bit palettization) after conversion, on its own statistics.

Quantized graphs (`quant.int8_ptq`) go through `exporters.quantized_decomposed.to_pt2e`, which
spells our Q/DQ the way torchao's `convert_pt2e` does. coremltools' torch.export frontend maps
`quantize_per_tensor` to MIL `quantize`, `dequantize_per_tensor` of a run-time tensor to MIL
`dequantize`, and `dequantize_per_channel` of an int8 constant to a `constexpr_*` weight op
(`constexpr_affine_dequantize` before iOS18, `constexpr_blockwise_shift_scale` from iOS18). So the
package is W8A8 with OUR calibrated scales and codes: the Core ML model is the same
quantization as our simulation, not a re-quantization. MIL `quantize` exists from iOS17 on, so
activation quantization needs that deployment target; `activations: float` keeps only the int8
weights (older targets, or devices whose Neural Engine gains nothing from int8 activations:
Apple documents the W8A8 speedup for A17 Pro / M4 and newer).

What Linux can check: conversion, the saved package reloads (`skip_model_load=True`), the MIL op
mix, that the quantized ops and their scales are ours, and that the program handed to
coremltools computes what our simulation computes. What it cannot: Core ML's own numerics and
latency (the Linux wheel has no Core ML runtime; `MLModel.predict` is macOS-only), so
`not_measured()` says so and the report shows no numbers for this target off macOS.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from compressor.errors import CompressorError
from compressor.eval.metrics import Runner
from exporters.base import (
    Artifact,
    Exporter,
    ExportOptions,
    atomic_dir,
    export_program,
    in_chunks,
    in_fixed_batches,
    quiet,
)

if TYPE_CHECKING:
    from compressor.graph import Graph

_log = logging.getLogger(__name__)

#: coremltools' deployment target names (ct.target) with the ML Program spec version each implies.
#: Kept here, not read from coremltools, so recipes validate on machines without the extra.
SPEC_VERSIONS: dict[str, int] = {
    **{f"iOS{v}": s for v, s in ((15, 6), (16, 7), (17, 8), (18, 9), (26, 10))},
    **{f"macOS{v}": s for v, s in ((12, 6), (13, 7), (14, 8), (15, 9), (26, 10))},
    **{f"watchOS{v}": s for v, s in ((8, 6), (9, 7), (10, 8), (11, 9), (26, 10))},
    **{f"tvOS{v}": s for v, s in ((15, 6), (16, 7), (17, 8), (18, 9), (26, 10))},
}
DeploymentTarget = Literal[
    "iOS15", "iOS16", "iOS17", "iOS18", "iOS26", "macOS12", "macOS13", "macOS14", "macOS15", "macOS26",
    "watchOS8", "watchOS9", "watchOS10", "watchOS11", "watchOS26", "tvOS15", "tvOS16", "tvOS17", "tvOS18", "tvOS26",
]
#: the first spec version with MIL `quantize` (activation quantization)
ACTIVATION_QUANT_SPEC = 8
QUANT_OP_PREFIXES = ("constexpr_", "quantize", "dequantize")
_INSTALL = "coremltools is not installed: pip install 'compressor[coreml]'"


class CoreMLOptions(ExportOptions):
    minimum_deployment_target: DeploymentTarget = Field(
        "iOS17", description="oldest OS the package loads on (coremltools' ct.target name); iOS17/macOS14 is the "
                             "first with activation quantization")
    compute_precision: Literal["fp16", "fp32"] = Field(
        "fp16", description="float precision of the compute: fp16 is what the Neural Engine runs")
    weights: Literal["none", "int8", "palettize-4", "palettize-6"] = Field(
        "none", description="coremltools weight compression for a float graph (an int8 graph keeps its own int8 "
                            "weights whatever this says)")
    palettize_mode: Literal["kmeans", "uniform"] = Field("kmeans", description="how palettization picks its table")
    weight_threshold: int = Field(2048, ge=0, description="weights with fewer elements stay float (coremltools)")
    activations: Literal["int8", "float"] = Field(
        "int8", description="for an int8 graph: keep its activation quantization (W8A8) or drop it (W8, float "
                            "activations)")
    compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] = Field(
        "all", description="Core ML compute units used when the artifact runs (macOS only)")


class CoreMLArtifact(Artifact):
    """An .mlpackage; runs through `MLModel.predict`, which exists only on macOS."""

    def not_measured(self) -> str | None:
        return None if sys.platform == "darwin" else "needs macOS"

    def runner(self, threads: int) -> Runner:
        """Core ML picks its own threads; `threads` cannot be honoured and is recorded, not applied."""
        reason = self.not_measured()
        if reason is not None:
            raise CompressorError(f"cannot run {self.path.name}: {reason} (Core ML has no Linux runtime).")
        ct = _import_coremltools()
        units = getattr(ct.ComputeUnit, str(self.meta.get("compute_units", "all")).upper())
        model = ct.models.MLModel(str(self.path), compute_units=units)
        desc = model.get_spec().description
        in_name, out_name = desc.input[0].name, desc.output[0].name

        def run(x: np.ndarray) -> np.ndarray:
            out = model.predict({in_name: np.ascontiguousarray(x, dtype=np.float32)})
            return np.asarray(out[out_name], dtype=np.float32)

        batch = self.meta.get("batch")
        return in_fixed_batches(run, int(batch)) if batch else in_chunks(run, PREDICT_CHUNK)

    def inspect(self) -> dict[str, Any]:
        """What the saved package holds, read back from disk (so it describes the file that ships)."""
        return inspect_package(self.path)


PREDICT_CHUNK = 64  # rows per predict call: bounded memory on a phone-sized budget, no padding needed


class CoreMLExporter(Exporter):
    """ML Program `.mlpackage` through coremltools' torch.export frontend (see the module doc)."""

    target: ClassVar[str] = "coreml"
    suffix: ClassVar[str] = ".mlpackage"
    extra: ClassVar[str | None] = "coreml"
    Options: ClassVar[type[ExportOptions]] = CoreMLOptions

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _import_coremltools()
        except ImportError:
            return False, _INSTALL
        return True, ""

    def for_baseline(self) -> CoreMLExporter:
        """This exporter without weight compression: the float baseline a compressed package is compared
        with must not carry coremltools' own compression, or the comparison measures nothing."""
        return CoreMLExporter(**{**self.options.model_dump(), "weights": "none"})

    def export(self, graph: Graph, path: Path, precision: str) -> CoreMLArtifact:
        from exporters.quantized_decomposed import is_quantized

        ct = _import_coremltools()
        o: CoreMLOptions = self.options  # type: ignore[assignment]
        spec_version = SPEC_VERSIONS[o.minimum_deployment_target]
        quantized = is_quantized(graph)
        notes: list[str] = []
        start = time.perf_counter()
        if quantized:
            program, reference, expected = self._quantized_program(graph, spec_version, notes)
        else:
            program, reference, expected = _export(graph.gm, graph), None, {}
        mlmodel = _convert(ct, program, o, precision)
        if quantized and o.weights not in ("none", "int8"):
            notes.append(f"weights: {o.weights} ignored: the graph's weights are already int8 codes from "
                         "quant.int8_ptq; re-compressing them would discard our calibrated codes")
        elif not quantized and o.weights != "none":
            mlmodel = _compress_weights(ct, mlmodel, o)
        checks = _check_mil(mlmodel, expected)
        if checks and not checks["ok"]:
            _log.warning("the Core ML program does not hold the quantization of our graph: %s", checks)
        if checks.get("quantize_rescaled"):
            notes.append(f"coremltools rescaled {checks['quantize_rescaled']} quantize ops after residual adds "
                         "(distributive_quantized_binary_op_scale_normalization: same codes up to float rounding)")
        if checks.get("activation_scales_max_rel_err", 0.0) > 1e-6:
            notes.append(f"Core ML stores the activation scales in {o.compute_precision} (max relative change "
                         f"{checks['activation_scales_max_rel_err']:.2g} vs ours): its quantization grid is ours up "
                         "to that rounding; compute_precision: fp32 keeps them exact")
        with atomic_dir(path) as tmp, quiet("coremltools"):
            mlmodel.save(str(tmp))
            _tidy_package(tmp)
            summary = inspect_package(tmp)  # a package that does not reload must not ship
        export_s = time.perf_counter() - start
        meta = {
            "format": "Core ML ML Program (.mlpackage)",
            "coremltools": ct.__version__,
            "minimum_deployment_target": o.minimum_deployment_target,
            "compute_precision": o.compute_precision,
            "compute_units": o.compute_units,
            "batch": graph.fixed_batch,
            "weights": _weights_meta(quantized, o),
            "activations": _activations_meta(quantized, expected),
            "export_s": round(export_s, 2),
            **summary,
            "checks": checks,
            "verified": _verified(quantized, reference, checks),
            "not_verified": _not_verified(quantized, o),
            "notes": notes,
        }
        meta.update(_macos_check(path, graph))
        return CoreMLArtifact(self.target, path, precision, meta)

    def _quantized_program(self, graph: Graph, spec_version: int,
                           notes: list[str]) -> tuple[torch.export.ExportedProgram, dict[str, Any], dict[str, Any]]:
        """The pt2e-form program, how it compares with our simulation, and the quantized ops the
        MIL program must contain (so a conversion that silently dropped them is caught)."""
        from exporters.quantized_decomposed import to_quantized_decomposed

        o: CoreMLOptions = self.options  # type: ignore[assignment]
        keep_acts = o.activations == "int8"
        if keep_acts and spec_version < ACTIVATION_QUANT_SPEC:
            raise CompressorError(
                f"activation quantization needs MIL quantize, which Core ML has from iOS17/macOS14 on, but "
                f"minimum_deployment_target is {o.minimum_deployment_target}. Set minimum_deployment_target: iOS17 "
                "(or newer), or activations: float to ship int8 weights with float activations.")
        if any(info.get("weight_bits") == 7 for _, info in graph.annotated("quant")):
            notes.append("weights use 7 of 8 bits (quant.int8_ptq reduce_range, which avoids int16 saturation in "
                         "ONNX Runtime on x86 CPUs without VNNI); Core ML has no such limit: for a Core ML-only "
                         "recipe set reduce_range: false")
        gm = to_quantized_decomposed(graph)
        reference = _compare_with_simulation(graph, gm)  # before any activation Q/DQ is dropped
        if not keep_acts:
            dropped = _drop_activation_qdq(gm)
            notes.append(f"activations: float asked for: {dropped} activation quantize/dequantize pairs removed; "
                         "the package computes in float on int8 weights, so it differs from our W8A8 simulation")
        _narrow_weight_zero_points(gm)
        program = _export(gm, graph)
        expected = _expected_quant_ops(program)
        if expected["narrow_ranges"]:
            notes.append(f"{expected['narrow_ranges']} activation quantizers use a range narrower than int8 (low-bit "
                         "activations); MIL quantize has no clamp range, so Core ML runs them on the full int8 grid "
                         "and the package is NOT our low-bit simulation there")
        return program, reference, expected


# ---------------------------------------------------------------- conversion

def _import_coremltools() -> Any:
    """Import coremltools without its import-time noise (no Core ML runtime on Linux, untested torch
    and scikit-learn versions): they are facts about this machine, not about the export."""
    with quiet("coremltools"):
        import coremltools

    return coremltools


def _export(gm: torch.nn.Module, graph: Graph) -> torch.export.ExportedProgram:
    """`gm` exported (a symbolic batch if the graph has one) and lowered to the ATEN dialect."""
    return _decompose(export_program(gm, graph, what="the graph for Core ML"))


def _decompose(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """coremltools rejects TRAINING-dialect programs; an empty decomposition table only lowers the
    dialect (our quantized_decomposed ops and SDPA's decomposition survive as coremltools expects)."""
    with quiet("coremltools"):
        return program.run_decompositions({})


def _convert(ct: Any, program: torch.export.ExportedProgram, o: CoreMLOptions, precision: str) -> Any:
    target = getattr(ct.target, o.minimum_deployment_target)
    compute = ct.precision.FLOAT16 if o.compute_precision == "fp16" else ct.precision.FLOAT32
    try:
        with quiet("coremltools"):
            return ct.convert(program, convert_to="mlprogram", minimum_deployment_target=target,
                              compute_precision=compute, skip_model_load=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CompressorError(f"coremltools could not convert the {precision} graph ({type(e).__name__}: "
                              f"{first[:300]}). Ops Core ML has no translation for (custom kernels, integer-only "
                              "graphs) cannot ship to this target.") from e


def _compress_weights(ct: Any, mlmodel: Any, o: CoreMLOptions) -> Any:
    """coremltools' own post-training weight compression of a float package (its statistics, not ours)."""
    cto = ct.optimize.coreml
    if o.weights == "int8":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                                weight_threshold=o.weight_threshold)
        with quiet("coremltools"):
            return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))
    nbits = int(o.weights.split("-")[1])
    op_config = cto.OpPalettizerConfig(mode=o.palettize_mode, nbits=nbits, granularity="per_tensor",
                                       weight_threshold=o.weight_threshold)
    with quiet("coremltools"):
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op_config))


def _tidy_package(path: Path) -> None:
    """Drop what is not the model and give the folder ordinary permissions.

    For torch.export sources coremltools 9 also writes `executorch_debug_handle_mapping.json`, a
    debug map for ExecuTorch's tools that Manifest.json does not list (Core ML never reads it); it
    was ~30% of a small ViT's package. coremltools creates the spec file and the weights folder as
    0600/0700, so a package copied to a shared build machine or served would not be readable.
    """
    (Path(path) / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    for p in [Path(path), *Path(path).rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


# ---------------------------------------------------------------- quantized graphs

def _qd_targets() -> tuple[set[Any], set[Any]]:
    from exporters import quantized_decomposed as qd

    return {qd.Q_PER_TENSOR, qd.Q_PER_CHANNEL}, {qd.DQ_PER_TENSOR, qd.DQ_PER_CHANNEL}


def _drop_activation_qdq(gm: torch.fx.GraphModule) -> int:
    """Remove every run-time quantize -> dequantize pair (weights keep their constant dequantize)."""
    quantize, dequantize = _qd_targets()
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in dequantize:
            src = node.args[0]
            if getattr(src, "op", None) == "call_function" and src.target in quantize:
                node.replace_all_uses_with(src.args[0])
                gm.graph.erase_node(node)
                dropped += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return dropped


def _narrow_weight_zero_points(gm: torch.fx.GraphModule) -> None:
    """Store all-zero weight zero points as int8, the codes' own type.

    convert_pt2e's form has int64 zero points; coremltools casts them to the codes' int8, and MIL
    `cast` to int8 exists only from iOS17, so an iOS16 package failed to convert. Only all-zero
    points are narrowed: quantized_decomposed subtracts them in the codes' dtype, which could wrap.
    """
    _, dequantize = _qd_targets()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in dequantize or len(node.args) < 7:
            continue
        zp = node.args[2]
        if getattr(zp, "op", None) != "get_attr":
            continue
        owner, name = _owner(gm, str(zp.target))
        value = getattr(owner, name)
        if isinstance(value, torch.Tensor) and value.dtype == torch.int64 and not value.any():
            if name in owner._buffers:
                owner._buffers[name] = value.to(torch.int8)
            else:
                setattr(owner, name, value.to(torch.int8))
    gm.recompile()


def _owner(gm: torch.nn.Module, target: str) -> tuple[torch.nn.Module, str]:
    *path, name = target.split(".")
    owner = gm
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _expected_quant_ops(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """How many quantized weights and activation quantizers the program has, and the activation
    scales: the MIL program must hold the same ones, or our quantization did not survive."""
    quantize, dequantize = _qd_targets()
    weights = acts = narrow = 0
    scales: list[float] = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in quantize:
            acts += 1
            scale, qmin, qmax, dtype = node.args[1], *node.args[-3:]
            if isinstance(scale, float):
                scales.append(scale)
            info = torch.iinfo(dtype)
            narrow += (qmin, qmax) != (info.min, info.max)
        elif node.target in dequantize and not (getattr(node.args[0], "op", None) == "call_function"
                                                 and node.args[0].target in quantize):
            weights += 1  # a dequantize of a constant (a lifted parameter/buffer): a weight
    return {"weights": weights, "activation_quantizers": acts, "activation_scales": sorted(scales),
            "narrow_ranges": narrow}


def _compare_with_simulation(graph: Graph, gm: torch.nn.Module) -> dict[str, Any]:
    """Run the rewritten module given to coremltools and our simulation on the example batch: they
    must agree, else the package would not be the model we measured in PyTorch."""
    x = tuple(graph.example_inputs)
    with torch.no_grad(), quiet("coremltools"):
        ours = graph.gm(*x)
        theirs = gm(*x)
    ours, theirs = (t[0] if isinstance(t, (tuple, list)) else t for t in (ours, theirs))
    diff = float((ours.float() - theirs.float()).abs().max())
    scale = float(ours.float().abs().max()) or 1.0
    return {"program_vs_simulation_max_abs_diff": diff, "simulation_max_abs": scale,
            "examples": int(x[0].shape[0])}


# ---------------------------------------------------------------- inspection

def inspect_package(path: Path) -> dict[str, Any]:
    """Spec version, deployment target, MIL op-type counts, quantization ops present and package size
    of a saved .mlpackage, read without loading it into a runtime (so it works on Linux)."""
    ct = _import_coremltools()
    with quiet("coremltools"):
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    counts: Counter[str] = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            _count_ops(block, counts)
    ops = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    inputs = [{"name": i.name, "shape": list(i.type.multiArrayType.shape)} for i in spec.description.input]
    return {
        "spec_version": int(spec.specificationVersion),
        "deployment_target": _target_of(int(spec.specificationVersion)),
        "op_counts": {k: v for k, v in ops.items() if k != "const"},
        "const_ops": ops.get("const", 0),
        "quant_ops": {k: v for k, v in ops.items() if k.startswith(QUANT_OP_PREFIXES)},
        "package_bytes": sum(p.stat().st_size for p in files),
        "inputs": inputs,
    }


def _count_ops(block: Any, counts: Counter[str]) -> None:
    for op in block.operations:
        counts[op.type] += 1
        for inner in op.blocks:  # cond / while bodies
            _count_ops(inner, counts)


def _target_of(spec_version: int) -> str:
    """The iOS/macOS pair a spec version means (what a reader of the report needs to know)."""
    ios = next((k for k, v in SPEC_VERSIONS.items() if v == spec_version and k.startswith("iOS")), None)
    mac = next((k for k, v in SPEC_VERSIONS.items() if v == spec_version and k.startswith("macOS")), None)
    return f"{ios}/{mac}" if ios and mac else f"spec {spec_version}"


def _mil_ops(mlmodel: Any) -> Iterator[Any]:
    def walk(block: Any) -> Iterator[Any]:
        for op in block.operations:
            yield op
            for inner in op.blocks:
                yield from walk(inner)

    for function in mlmodel._mil_program.functions.values():
        yield from walk(function)


def _check_mil(mlmodel: Any, expected: dict[str, Any]) -> dict[str, Any]:
    """Compare the converted MIL program with what the torch program quantized.

    Weight constexpr ops and activation quantize ops must match by count. Scales: every activation
    scale of ours must be the scale of some MIL quantize or dequantize. Not every MIL quantize keeps
    ours: coremltools' `distributive_quantized_binary_op_scale_normalization` rewrites
    add(dq(a, s_a), dq(b, s_b)) -> quantize(s_z) as add(dq(a, s_a/s_b), dq(b, 1)) -> quantize(s_z/s_b),
    the same codes up to float rounding, so those are counted as `quantize_rescaled`, not as errors.
    """
    if not expected:
        return {}
    ops = list(_mil_ops(mlmodel))
    constexpr = [op for op in ops if op.op_type.startswith("constexpr_")]
    quantize = [op for op in ops if op.op_type == "quantize"]
    q_scales = [_scalar(op.scale.val) for op in quantize]
    dq_scales = [_scalar(op.scale.val) for op in ops if op.op_type == "dequantize"]
    mil = np.array([v for v in q_scales + dq_scales if v is not None], dtype=np.float64)
    ours = np.array(expected["activation_scales"], dtype=np.float64)
    if len(ours) and len(mil):
        rel = np.abs(mil[None, :] - ours[:, None]) / np.abs(ours[:, None])
        nearest = rel.min(axis=1)
        found, err = int((nearest < 1e-3).sum()), float(nearest.max())
        rescaled = sum(v is None or float(np.min(np.abs(ours - v) / np.abs(ours))) >= 1e-3 for v in q_scales)
    else:
        found, err, rescaled = 0, 0.0, len(q_scales)
    return {
        "weights_expected": expected["weights"], "weights_constexpr_in_mil": len(constexpr),
        "activation_quantizers_expected": expected["activation_quantizers"], "quantize_in_mil": len(quantize),
        "activation_scales_found": found, "activation_scales_max_rel_err": err, "quantize_rescaled": rescaled,
        "ok": (len(constexpr) == expected["weights"] and len(quantize) == expected["activation_quantizers"]
               and found == len(ours)),
    }


def _scalar(value: Any) -> float | None:
    arr = None if value is None else np.asarray(value, dtype=np.float64).reshape(-1)
    return float(arr[0]) if arr is not None and arr.size == 1 else None


def _weights_meta(quantized: bool, o: CoreMLOptions) -> str:
    if quantized:
        return "int8 per-channel codes and scales from quant.int8_ptq (ours)"
    if o.weights == "none":
        return f"float ({o.compute_precision})"
    if o.weights == "int8":
        return "int8 per-channel symmetric, coremltools linear_quantize_weights (its scales)"
    return f"{o.weights.split('-')[1]}-bit palettized ({o.palettize_mode}), coremltools palettize_weights"


def _activations_meta(quantized: bool, expected: dict[str, Any]) -> str:
    if quantized and expected.get("activation_quantizers"):
        return "int8 per tensor with our calibrated scales (MIL quantize/dequantize)"
    if quantized:
        return "float: the activation quantize/dequantize pairs were removed (activations: float)"
    return "float"


def _verified(quantized: bool, reference: dict[str, Any] | None, checks: dict[str, Any]) -> list[str]:
    done = ["converted by coremltools and reloaded from disk (skip_model_load=True)", "MIL op mix and package size"]
    if quantized and reference is not None:
        diff, scale = reference["program_vs_simulation_max_abs_diff"], reference["simulation_max_abs"]
        state = "matches" if diff <= 1e-5 * scale + 1e-6 else "DIFFERS FROM"
        done.append(f"the quantized_decomposed program handed to coremltools {state} our simulation on "
                    f"{reference['examples']} example inputs (max abs diff {diff:.3g})")
    if checks:
        state = "match" if checks.get("ok") else "DO NOT match"
        done.append(f"MIL constexpr weight ops, quantize ops and activation scales {state} ours: {checks}")
    return done


def _not_verified(quantized: bool, o: CoreMLOptions) -> list[str]:
    missing = ["Core ML's own outputs, accuracy and latency: MLModel.predict exists only on macOS"]
    if o.compute_precision == "fp16":
        missing.append("the effect of fp16 compute on accuracy (Core ML only)")
    if not quantized and o.weights != "none":
        missing.append(f"the accuracy of coremltools' {o.weights} weight compression: its decompressed weights "
                       "are not run anywhere on this machine")
    if quantized:
        missing.append("whether the device runs int8 x int8 kernels or dequantizes to fp16 (A17 Pro / M4 and newer "
                       "are documented to use int8 activations on the Neural Engine)")
    return missing


def _macos_check(path: Path, graph: Graph) -> dict[str, Any]:
    """On macOS only: the package's outputs against the torch graph on the example batch, so the
    numbers the report shows come with evidence that the package is the same model."""
    if sys.platform != "darwin":
        return {}
    try:
        run = CoreMLArtifact("coreml", path, "").runner(1)
        x = graph.example_inputs[0]
        with torch.no_grad():
            ref = graph.gm(x)
        ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).float().numpy()
        return {"macos_predict_max_abs_diff": float(np.abs(run(x.numpy()) - ref).max())}
    except Exception as e:  # evidence, not a reason to fail the export
        return {"macos_predict_error": f"{type(e).__name__}: {str(e)[:200]}"}
