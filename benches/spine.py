"""Spine bench: int8-ptq on the bundled MNIST models and a ViT-Small, measured on ONNX artifacts.

Prints one table (and writes it as Markdown with --md): top-1 of the FP32 and INT8 ONNX
artifacts in ONNX Runtime, the drop against the 0.5-point target, the INT8/FP32 latency ratio
at batch 8 with 2 threads (measured side by side, interleaved), and the wall time of
`compress`. With --profile it also lists which ops ONNX Runtime runs after its graph
optimizations and where the time goes, for FP32 and INT8.

    python benches/spine.py [--skip-vit-small] [--profile] [--md FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import compressor
from compressor import zoo
from compressor.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "calibration_data" / "photos"


def photo_crops(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """n random crops (uint8 NHWC) of the bundled photographs, for ImageNet-shaped calibration."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(PHOTOS.glob("*.jpg"))]
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        y = rng.integers(0, img.shape[0] - size + 1)
        x = rng.integers(0, img.shape[1] - size + 1)
        crop = img[y:y + size, x:x + size]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.ascontiguousarray(np.stack(crops))


def run_case(name: str, out: Path, **kwargs) -> dict:
    start = time.perf_counter()
    res = compressor.compress(out_dir=out, progress=False, **kwargs)
    wall = time.perf_counter() - start
    r = res.report
    a = r["artifacts"][0]
    return {"model": name, "metric": r["metric"], "fp32": r["baseline"]["accuracy"], "int8": a["accuracy"],
            "sim": a["sim_accuracy"], "drop": r["accuracy_drop"],
            "fp32_ms": r["baseline"]["latency_ms"]["median"], "int8_ms": a["latency_ms"]["median"],
            "ratio": a["latency_ms"]["median"] / r["baseline"]["latency_ms"]["median"],
            "size_ratio": a["size_ratio_vs_baseline"], "wall_s": wall, "calib": r["data"]["calibration"]["count"],
            "passes_s": r["timings_s"]["passes_s"], "out": out}


def ort_profile(path: Path, shape: tuple[int, ...], threads: int = 2, runs: int = 10) -> tuple[Counter, Counter]:
    """(op counts after ORT's optimizations, total microseconds per op type over `runs`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as d:
        opts.optimized_model_filepath = str(Path(d) / "opt.onnx")
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(d) / "prof")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        for _ in range(runs):
            sess.run(None, {sess.get_inputs()[0].name: x})
        prof = json.loads(Path(sess.end_profiling()).read_text())
        import onnx

        ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    times: Counter = Counter()
    for ev in prof:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            times[ev["args"]["op_name"]] += ev["dur"]
    return ops, times


def print_profile(case: dict, shape: tuple[int, ...]) -> list[str]:
    lines = [f"### {case['model']}: ONNX Runtime after graph optimization, batch {shape[0]}", ""]
    for label, f in (("fp32", "baseline.onnx"), ("int8", "model.onnx")):
        ops, times = ort_profile(case["out"] / f, shape)
        total = sum(times.values())
        lines.append(f"- {label} ops: " + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
        lines.append(f"- {label} time: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in times.most_common(8)))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-vit-small", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-spine-"))
    common = {"batch_sizes": [8], "threads": 2}
    mnist = {"calib": ROOT / "calibration_data/mnist/calib", "eval_data": ROOT / "calibration_data/mnist/test"}
    cases = [run_case("ViT MNIST (vit_mnist.pt)", work / "vit", model=ROOT / "vit_mnist.pt", **mnist, **common),
             run_case("CNN MNIST (cnn_mnist.pt)", work / "cnn", model=ROOT / "cnn_mnist.pt", **mnist, **common)]
    if not args.skip_vit_small:
        torch.manual_seed(0)
        sd_path = work / "deit_small_random.pt"
        torch.save(zoo.build("deit_small_patch16_224").state_dict(), sd_path)
        np.save(work / "calib256.npy", photo_crops(256))
        np.save(work / "eval32.npy", photo_crops(32, seed=1))
        pre = Preprocess(size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        cases.append(run_case("ViT-Small 224 (random init)", work / "vits", model=sd_path,
                              arch="deit_small_patch16_224", calib=work / "calib256.npy",
                              eval_data=work / "eval32.npy", preprocess=pre, **common))
    head = ("| model | metric | FP32 ORT | INT8 ORT | INT8 sim | drop (target ≤ 0.5) | b8 FP32 ms | b8 INT8 ms "
            "| INT8/FP32 (aim ≤ 0.6) | size ratio | calib imgs | passes s | compress wall s |")
    lines = [head, "|" + "---|" * 13]
    for c in cases:
        lines.append(f"| {c['model']} | {c['metric']} | {c['fp32']:.2f} | {c['int8']:.2f} | {c['sim']:.2f} | "
                     f"{c['drop']:+.2f} | {c['fp32_ms']:.2f} | {c['int8_ms']:.2f} | {c['ratio']:.3f} | "
                     f"{c['size_ratio']:.3f} | {c['calib']} | {c['passes_s']:.1f} | {c['wall_s']:.1f} |")
    if args.profile:
        lines.append("")
        for c, shape in zip(cases, [(8, 1, 28, 28), (8, 1, 28, 28), (8, 3, 224, 224)], strict=False):
            lines += [*print_profile(c, shape), ""]
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
