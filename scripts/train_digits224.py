"""Train ``vit_digits224.pt``: a 197-token DeiT-style ViT on MNIST digits pasted onto photographs.

The MNIST ViTs run 17 tokens; what breaks only at a real ViT's length (Shiftmax rows of 197, the
post-LayerNorm channel ranges RepQ-ViT exists for) needs a 224x224, patch-16 model trained on
images where attention has to search the whole frame. Every batch is composed afresh
(``make_data.compose``: a random crop of a bundled photograph, the digit at a random size and
place), so 3500 training digits never repeat a picture.

Two phases, as DeiT/FixRes fine-tune at a higher resolution than they train: first 112x112 frames
(7x7 patches, 50 tokens, ~3x cheaper per image than 224 on CPU) holding digits of 96-112 px, the
test's stroke scale, so the patch features carry over unchanged; then the positional embedding is
resized bicubically to 14x14 and the last epochs run on the real task at 224x224 (197 tokens),
where the digit (96-160 px) sits anywhere in a frame of photograph. Shrinking the frame instead
(digits scaled with a 64- or 112-px frame, then 224) lost a third of the accuracy at each change
of resolution (63 % -> 44 % calibration top-1 from 64 to 112 px): the patches then saw strokes
of another thickness.

A curriculum at the start (`compose`'s difficulty, CURRICULUM_EPOCHS): the digit fills the frame on
the photo's flat mean colour for two epochs, then shrinks to its range while the photo's detail
returns over eight. Straight on the final task the ViT stayed at chance (loss 2.30-2.32) for 300
steps at every learning rate tried (1e-4 .. 1e-3); on full-frame digits its loss fell to 1.0 in
200. A three-epoch ramp with no hold (the first version) left it at 20 % calibration top-1 after
six epochs; holding the easy task for two epochs and ramping over six reached only 35 % after 13,
and batches of 32 instead of 64 did no better (20 % after 9). A ViT from scratch needs thousands of
optimizer steps on 3500 images (the MNIST ViT took 3300), and at DeiT-Tiny's width (192) 2 cores
run 1.4 steps a second at 112 px: the model is half that width (2.8x faster steps), so the same
40 minutes buy three times the steps.

OpenMP threads wait passively (OMP_WAIT_POLICY, set before torch loads): on a machine shared with
other jobs, spinning threads spent 3x the CPU time per step (6.6 s wall per 64-image 112-px step
instead of 2.2).

The weights are stored in float16 (half the file; the loader casts them back); the recorded
top-1 is measured with the float16-rounded weights on ``calibration_data/digits224/test``.

    python scripts/train_digits224.py [--epochs 60,12] [--out vit_digits224.pt]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import numpy as np
import torch
import torch.nn.functional as F
from make_data import DIGIT_SIDE, REPO_ROOT, background_photos, compose, digits224_split, mnist_split
from train_mnist import adamw_warmup_cosine, deterministic_torch, top1

sys.path.insert(0, str(REPO_ROOT))  # run as a script, the repo root is not on sys.path
from compressor import zoo
from compressor.data import IMAGENET_MEAN, IMAGENET_STD

PRESET = "vit_digits224"
CURRICULUM_EPOCHS = (2, 8)  # of the first phase: difficulty held at 0, then ramped from 0 to 1
LOW_RES, LOW_RES_DIGITS = 112, (96, 112)  # the first phase's frame and digit box, px
SPLIT_NAME = "mnist_5k seed0 3500/500/1000 on bundled photos (make_data.compose, seeds calib 1, test 2)"


@dataclass(frozen=True)
class Phase:
    """One resolution's share of training; each phase has its own warmup + cosine schedule."""

    size: int
    epochs: int
    lr: float
    warmup_epochs: int
    digit_side: tuple[int, int] = DIGIT_SIDE
    curriculum_epochs: tuple[int, int] = (0, 0)  # (held at difficulty 0, ramped to 1)


def to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> ImageNet-normalized float [N, 3, size, size] (the checkpoint's preprocess)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1 + g², C] -> [1, 1 + grid², C]: the class token's entry kept, the patch grid bicubic."""
    cls, patches = pos[:, :1], pos[:, 1:]
    g = math.isqrt(patches.shape[1])
    patches = patches.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def build(size: int, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The preset at `size` with fused attention for training (same weights as the manual one)."""
    model = zoo.build(PRESET, img_size=size, attn_impl="sdpa")
    if state is not None:
        grid = size // model.patch_embed.proj.kernel_size[0]
        model.load_state_dict({**state, "pos_embed": resize_pos_embed(state["pos_embed"], grid)})
    return model


def train_phase(model: torch.nn.Module, phase: Phase, digits: np.ndarray, labels: np.ndarray,
                photos: list[torch.Tensor], batch_size: int, seed: int, log: Any) -> int:
    """Train one phase; every batch is composed with its own seed as the phase says. Logs the
    calibration digits' top-1 per epoch, composed the same way (progress only: nothing is selected
    on it). Returns images seen."""
    calib_x, calib_y = mnist_split()["calib"]
    calib_images = compose(calib_x, photos, seed, phase.size, phase.digit_side)
    calib = to_tensor(calib_images, phase.size), torch.from_numpy(calib_y)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    opt, sched = adamw_warmup_cosine(model, phase.lr, 0.05, phase.epochs * steps_per_epoch,
                                     phase.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    y_all = torch.from_numpy(labels)
    seen = 0
    for epoch in range(phase.epochs):
        model.train()
        start, total = time.perf_counter(), 0.0
        for b, idx in enumerate(torch.randperm(len(labels), generator=gen).split(batch_size)):
            hold, ramp = phase.curriculum_epochs
            difficulty = min(1.0, max(0.0, (epoch + b / steps_per_epoch - hold) / ramp)) if ramp else 1.0
            images = compose(digits[idx.numpy()], photos, seed * 100_000 + epoch * 1000 + b, phase.size,
                             phase.digit_side, difficulty)
            x = to_tensor(images, phase.size)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        log(f"{phase.size}px epoch {epoch + 1}/{phase.epochs}: loss {total / len(labels):.3f}, "
            f"{len(labels) / (time.perf_counter() - start):.1f} img/s, calib top-1 {top1(model, *calib):.1f}")
    return seen


def checkpoint(model: torch.nn.Module, test_top1: float, train_info: dict[str, Any]) -> dict[str, Any]:
    """The ``compressor.checkpoint`` v1 dict with float16 weights (plain types: weights_only loads it)."""
    arch, config = zoo.preset_config(PRESET)
    return {
        "format": "compressor.checkpoint",
        "version": 1,
        "arch": arch,
        "preset": PRESET,
        "config": config,
        "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
        "preprocess": {"size": [224, 224], "channels": 3, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "metrics": {"test_top1": test_top1, "split": SPLIT_NAME, "train": train_info},
        "dataset": "digits224",  # compress finds calibration_data/digits224/{calib,test} from this
        "num_classes": config["num_classes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", default="60,12", help="epochs at 112 and 224 px")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "vit_digits224.pt")
    args = parser.parse_args()
    deterministic_torch()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    digits, labels = mnist_split()["train"]
    photos = background_photos()
    low, full = (int(e) for e in args.epochs.split(","))
    phases = (Phase(LOW_RES, low, 2e-3, 2, LOW_RES_DIGITS, CURRICULUM_EPOCHS), Phase(224, full, 1e-3, 1))
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    model, seen = None, {}
    for i, phase in enumerate(phases):
        torch.manual_seed(i)
        model = build(phase.size, None if model is None else model.state_dict())
        seen[phase.size] = train_phase(model, phase, digits, labels, photos, args.batch_size, i + 1, log)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    assert model is not None

    shipped = zoo.build(PRESET).eval()  # manual attention, float16-rounded weights: what the file holds
    shipped.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    test_x, test_y = digits224_split("test")
    acc = top1(shipped, to_tensor(test_x, 224), torch.from_numpy(test_y))
    info = {"images_seen": seen, "wall_s": round(wall), "cpu_s": round(cpu), "threads": torch.get_num_threads()}
    torch.save(checkpoint(shipped, acc, info), args.out)
    reloaded = torch.load(args.out, weights_only=True)
    again = zoo.build(reloaded["arch"], **reloaded["config"]).eval()
    again.load_state_dict(reloaded["state_dict"])
    if top1(again, to_tensor(test_x, 224), torch.from_numpy(test_y)) != acc:
        raise RuntimeError(f"{args.out}: the reloaded checkpoint does not reproduce top-1 {acc}")
    params = sum(p.numel() for p in shipped.parameters())
    log(f"{PRESET}: params={params} test_top1={acc:.2f}% wall={wall:.0f}s cpu={cpu:.0f}s "
        f"(cpu/wall {cpu / wall:.2f} of {torch.get_num_threads()} threads) -> {args.out}")


if __name__ == "__main__":
    main()
