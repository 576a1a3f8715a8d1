"""Integer-only ViT bench (issue 4): accuracy and bit-exactness of the integer artifacts on a bundled
ViT, and latency of integer-only vs float vs Q/DQ in ONNX Runtime and TVM on a ViT-Small.

Accuracy table: top-1 on the 1000 test images of `--model` (vit_mnist.pt at 17 tokens,
vit_digits224.pt at 197) of the float model, the int64 reference (`graph(x)`), the float64
simulation, the ONNX Runtime integer artifact and the TVM integer artifact, plus whether each
artifact's logits equal the reference bit for bit on all of them, for PTQ and after
`--finetune-steps` of STE fine-tuning, at W8A8 and W4A8.

Latency table: the same run, interleaved, batch 1 and 8, 2 threads, a ViT-Small (224, patch
16, embed 384, depth 12, random weights, calibrated on crops of the bundled photographs):
TVM integer-only, TVM float, ORT float, ORT Q/DQ (int8-ptq), ORT integer-only.

attn·v table (`--attn-v`): the attention-value product of a 16-bit Shiftmax output (0..2^15)
against the 8-bit one, in ONNX Runtime at DeiT-Tiny's shape (batch 8, 3 heads, 197 tokens, head
64), as the int-only graph writes it (two uint8 byte planes) and as one int32 MatMul; all three
checked exact against numpy, timed interleaved.

    python benches/int_only.py [--model vit_mnist.pt] [--finetune-steps 100] [--w-bits 8,4] [--softmax-bits 8,16]
                               [--skip-latency] [--skip-accuracy] [--attn-v] [--md FILE]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compressor import zoo
from compressor.data import IMAGENET_MEAN, IMAGENET_STD, DataSource, Preprocess, open_source
from compressor.eval.latency import measure
from compressor.graph import capture
from compressor.io import load_model
from compressor.passes import PASSES, PassContext
from compressor.passes.quant.int_only import simulate
from compressor.progress import Progress
from exporters.onnx import OnnxExporter
from exporters.tvm import TvmExporter

ROOT = Path(__file__).resolve().parent.parent


def top1(logits: np.ndarray, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.numpy()).mean() * 100)


def _in_batches(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    """Logits of `x` in batches of 100: one pass over 1000 images at 224 px would hold GBs of activations."""
    return np.concatenate([run(b).numpy() for b in x.split(100)])


def accuracy_rows(model_file: str, finetune_steps: int, w_bits_list: list[int], work: Path,
                  softmax_bits: tuple[int, ...] = (8,)) -> list[str]:
    loaded = load_model(ROOT / model_file)
    model, spec = loaded.module.eval(), Preprocess(**loaded.preprocess.model_dump())
    data = ROOT / "calibration_data" / str(loaded.dataset)
    calib = open_source(data / "calib", spec)
    x, y = map(torch.cat, zip(*open_source(data / "test", spec).batches(100), strict=True))
    with torch.no_grad():
        base = top1(_in_batches(model, x), y)
    lines = [f"**{model_file}, {len(y)} test images** (FP32 top-1 {base:.2f}; target: within 0.5 at W8A8)", "",
             "| variant | pass s | int64 reference | float64 sim = ref | ORT integer | ORT = ref | TVM integer "
             "| TVM = ref |", "|---|---|---|---|---|---|---|---|"]
    for w_bits, sm_bits in ((w, s) for w in w_bits_list for s in softmax_bits):
        for steps in (0, finetune_steps):
            graph, teacher = capture(model, x[:2]), capture(model, x[:2])
            params = PASSES["quant.intonly"].Params(w_bits=w_bits, finetune_steps=steps, softmax_bits=sm_bits)
            start = time.perf_counter()
            PASSES["quant.intonly"](params).run(graph, PassContext(calib=calib, teacher=teacher))
            seconds = time.perf_counter() - start
            ref = _in_batches(graph, x)
            sim_equal = np.array_equal(_in_batches(functools.partial(simulate, graph), x), ref)
            onnx_run = OnnxExporter().export(graph, work / "int.onnx", "int-only").runner(2)
            ort = np.concatenate([onnx_run(b.numpy()) for b in x.split(250)])
            tvm = TvmExporter(batch=8).export(graph, work / "int.so", "int-only").runner(2)(x.numpy())
            label = f"W{w_bits}A8, {sm_bits}-bit Shiftmax, " + (f"+ {steps}-step fine-tune" if steps else "PTQ")
            lines.append(f"| {label} | {seconds:.0f} | {top1(ref, y):.2f} | {sim_equal} | {top1(ort, y):.2f} | "
                         f"{np.array_equal(ort, ref)} | {top1(tvm, y):.2f} | {np.array_equal(tvm, ref)} |")
            print(lines[-1], flush=True)
            if not finetune_steps:
                break
    return lines


def photo_source(n: int, seed: int) -> DataSource:
    from spine import photo_crops  # benches/ is the script directory

    pre = Preprocess(size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return DataSource("photos", photo_crops(n, seed=seed), preprocess=pre)


def latency_rows(work: Path, runs: int) -> list[str]:
    torch.manual_seed(0)
    model = zoo.build("deit_small_patch16_224").eval()
    calib = photo_source(16, 0)
    example = next(calib.batches(2))[0]
    float_graph = capture(model, example)
    int_graph, qdq_graph = capture(model, example), capture(model, example)
    PASSES["quant.intonly"]().run(int_graph, PassContext(calib=calib, calib_batch_size=8))
    PASSES["quant.int8_ptq"]().run(qdq_graph, PassContext(calib=calib, calib_batch_size=8))
    onnx = OnnxExporter()
    runners = {"ORT float": onnx.export(float_graph, work / "f.onnx", "fp32").runner(2),
               "ORT Q/DQ int8": onnx.export(qdq_graph, work / "q.onnx", "int8").runner(2),
               "ORT integer-only": onnx.export(int_graph, work / "i.onnx", "int-only").runner(2)}
    table: dict[str, dict[int, float]] = {}
    for batch in (1, 8):
        start = time.perf_counter()
        tvm_exporter = TvmExporter(batch=batch)
        tvm = {"TVM float": tvm_exporter.export(float_graph, work / f"f{batch}.so", "fp32").runner(2),
               "TVM integer-only": tvm_exporter.export(int_graph, work / f"i{batch}.so", "int-only").runner(2)}
        print(f"TVM compile, batch {batch}: {time.perf_counter() - start:.0f} s", flush=True)
        if batch == 1:
            top = tvm_kernel_times(work / "i1.so", 1)
            print("TVM integer-only b1, ms per kernel family: " + ", ".join(f"{k} {v:.1f}" for k, v in top), flush=True)
        res = measure({**tvm, **runners}, (batch, 3, 224, 224), [batch], warmup=3, runs=runs, progress=Progress(False))
        for name, by_batch in res.items():
            table.setdefault(name, {})[batch] = by_batch[batch]["median"]
    lines = ["**ViT-Small 224 (random weights), median ms, 2 threads, same run, interleaved**", "",
             "| artifact | b1 ms | b8 ms | vs TVM float (b1 / b8) | vs ORT float (b1 / b8) |", "|---|---|---|---|---|"]
    for name, t in table.items():
        lines.append(f"| {name} | {t[1]:.1f} | {t[8]:.1f} | {t[1] / table['TVM float'][1]:.2f} / "
                     f"{t[8] / table['TVM float'][8]:.2f} | {t[1] / table['ORT float'][1]:.2f} / "
                     f"{t[8] / table['ORT float'][8]:.2f} |")
    return lines


def tvm_kernel_times(path: Path, batch: int, rounds: int = 3) -> list[tuple[str, float]]:
    """Milliseconds per run spent in each compiled TVM kernel (the relax VM's instrument hook;
    this wheel's VM has no profiler), kernels named by their first fused ops."""
    import collections

    import tvm
    from tvm import relax

    from exporters.tvm import _load_fresh

    vm = relax.VirtualMachine(_load_fresh(path), tvm.cpu())
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32))
    vm["main"](x)
    spent: collections.Counter = collections.Counter()
    began: dict[str, float] = {}

    def hook(func, name, before, ret, *args):
        if before:
            began[name] = time.perf_counter()
        else:
            spent["_".join(name.split("_")[:4])] += time.perf_counter() - began.pop(name)
        return 0

    vm.set_instrument(hook)
    for _ in range(rounds):
        vm["main"](x)
    return [(k, v / rounds * 1e3) for k, v in spent.most_common(8)]


class _AttnV(torch.nn.Module):
    """attn·v as the int-only graph computes it (`int_matmul`), or as one int32 matmul."""

    def __init__(self, wide: bool | None) -> None:
        super().__init__()
        self.wide = wide

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from compressor.passes.quant.intonly import INT_MATMUL

        if self.wide is None:
            return (a.int() @ v.int()).long()
        return INT_MATMUL(a, v, True, self.wide)


def attn_v_rows(runs: int, shape: tuple[int, int, int, int] = (8, 3, 197, 64)) -> list[str]:
    """ORT median ms of attn·v: 8-bit probabilities, 16-bit as two byte planes (the int-only
    graph's `int_matmul` translation), 16-bit as an int32 MatMul; each checked exact first."""
    import onnxruntime as ort

    from exporters.onnx import OPSET, TRANSLATIONS

    b, h, n, d = shape
    rng = np.random.default_rng(0)
    v = torch.from_numpy(rng.integers(-128, 128, (b, h, n, d)))
    p16 = torch.from_numpy(rng.integers(0, 2**15 + 1, (b, h, n, n)))
    cases = {"8-bit, uint8 MatMulInteger": (False, torch.from_numpy(rng.integers(0, 129, (b, h, n, n)))),
             "16-bit, two uint8 byte planes": (True, p16), "16-bit, int32 MatMul": (None, p16)}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions, times = {}, {}
    for label, (wide, a) in cases.items():
        proto = torch.onnx.export(_AttnV(wide), (a, v), dynamo=True, opset_version=OPSET,
                                  custom_translation_table=TRANSLATIONS, verbose=False).model_proto
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feed = dict(zip([i.name for i in sess.get_inputs()], (a.numpy(), v.numpy()), strict=True))
        if not np.array_equal(sess.run(None, feed)[0], (a @ v).numpy()):
            raise AssertionError(f"attn·v {label}: ONNX Runtime's product is not exact")
        sessions[label], times[label] = (sess, feed), []
    for _ in range(runs):
        for label, (sess, feed) in sessions.items():
            start = time.perf_counter()
            sess.run(None, feed)
            times[label].append((time.perf_counter() - start) * 1e3)
    base = float(np.median(times["8-bit, uint8 MatMulInteger"]))
    return [f"**attn·v in ONNX Runtime, batch {b} x {h} heads x {n} tokens x {d}, median ms, 2 threads, "
            "interleaved (every product checked exact)**", "", "| probabilities | ms | vs 8-bit |", "|---|---|---|",
            *(f"| {k} | {np.median(t):.1f} | {np.median(t) / base:.2f} |" for k, t in times.items())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_mnist.pt", help="bundled ViT checkpoint of the accuracy rows")
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--w-bits", default="8,4", help="weight widths of the accuracy rows")
    ap.add_argument("--softmax-bits", default="8", help="Shiftmax output widths of the accuracy rows (8,16)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--attn-v", action="store_true", help="also time attn·v with 8- and 16-bit probabilities")
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        if not args.skip_accuracy:
            w_bits = [int(b) for b in args.w_bits.split(",")]
            sm_bits = tuple(int(b) for b in args.softmax_bits.split(","))
            out += [*accuracy_rows(args.model, args.finetune_steps, w_bits, Path(d), sm_bits), ""]
        if not args.skip_latency:
            out += latency_rows(Path(d), args.runs)
        if args.attn_v:
            out += ["", *attn_v_rows(args.runs)]
    text = "\n".join(out)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
