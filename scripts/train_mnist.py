"""Train the MNIST zoo models whose checkpoints ship in the repo root.

The compression tests need small, already-accurate models whose accuracy drop
under a pass is measurable; this script makes them reproducibly on CPU in a few
minutes: ``python scripts/train_mnist.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from make_data import REPO_ROOT, mnist_split
from torch import nn

sys.path.insert(0, str(REPO_ROOT))  # run as a script, the repo root is not on sys.path
from compressor import zoo

MEAN, STD = 0.1307, 0.3081
SPLIT_NAME = "mnist_5k seed0 3500/500/1000"


@dataclass(frozen=True)
class Recipe:
    """Per-model training knobs; the ViT needs far more epochs than the CNN on 3500 images."""

    preset: str
    out: str
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int = 128
    warmup_epochs: int = 2
    max_shift: int = 2


RECIPES = (
    Recipe("vit_mnist", "vit_mnist.pt", epochs=60, lr=2e-3, weight_decay=0.05, batch_size=64),
    Recipe("vit_mnist_deep", "vit_mnist_deep.pt", epochs=60, lr=1e-3, weight_decay=0.05, batch_size=64),
    # RePaViT twin of vit_mnist (same widths, channel-idle BatchNorm FFN) for `reparam.repavit`
    Recipe("repavit_mnist", "repavit_mnist.pt", epochs=60, lr=2e-3, weight_decay=0.05, batch_size=64),
    Recipe("resnet_mnist", "cnn_mnist.pt", epochs=15, lr=4e-3, weight_decay=5e-4),
)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalized float [N, 1, 28, 28], the checkpoint's recorded preprocess."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    return (x - MEAN) / STD


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` px, filling with background.

    MNIST digits are centred by construction, so small shifts are the cheapest
    augmentation that still stops 3500 samples from being memorised.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-MEAN / STD)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


def deterministic_torch(threads: int = 2) -> None:
    """Seeded, deterministic kernels, a fixed thread count: a rerun reproduces the checkpoint."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # Deterministic mode NaN-fills every torch.empty; we never read uninitialized
    # memory, and the fills cost a large share of these tiny models' step time.
    torch.utils.deterministic.fill_uninitialized_memory = False


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent, rounded to 2 decimals so it is reproducible as recorded."""
    model.eval()
    pred = torch.cat([model(xb).argmax(1) for xb in x.split(500)])
    return round(100.0 * (pred == y).float().mean().item(), 2)


def adamw_warmup_cosine(model: nn.Module, lr: float, weight_decay: float, total: int, warmup: int
                        ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no decay on biases, norms and embeddings' 1-D params) with linear warmup then cosine
    decay to zero over `total` steps, stepped per batch."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def train(model: nn.Module, recipe: Recipe, x: torch.Tensor, y: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    steps_per_epoch = math.ceil(len(y) / recipe.batch_size)
    opt, sched = adamw_warmup_cosine(model, recipe.lr, recipe.weight_decay, recipe.epochs * steps_per_epoch,
                                     recipe.warmup_epochs * steps_per_epoch)
    model.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(y), generator=gen)
        for idx in perm.split(recipe.batch_size):
            xb = random_shift(x[idx], recipe.max_shift, gen)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def checkpoint(recipe: Recipe, model: nn.Module, test_top1: float) -> dict[str, Any]:
    """The ``compressor.checkpoint`` v1 dict: plain types only, so ``weights_only=True`` loads it."""
    arch, config = zoo.preset_config(recipe.preset)
    return {
        "format": "compressor.checkpoint",
        "version": 1,
        "arch": arch,
        "preset": recipe.preset,
        "config": config,
        "state_dict": model.state_dict(),
        "preprocess": {"size": [28, 28], "channels": 1, "mean": [MEAN], "std": [STD]},
        "metrics": {"test_top1": test_top1, "split": SPLIT_NAME},
        "dataset": "mnist",  # compress finds calibration_data/mnist/{calib,test} from this
        "num_classes": config["num_classes"],
    }


def verify(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    """Reload the way consumers will and check the recorded accuracy still holds."""
    ckpt = torch.load(path, weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    acc = top1(model, x, y)
    if acc != ckpt["metrics"]["test_top1"]:
        raise RuntimeError(f"{path}: reloaded top-1 {acc} != recorded {ckpt['metrics']['test_top1']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT)
    parser.add_argument("--only", choices=[r.preset for r in RECIPES], help="train just this preset")
    args = parser.parse_args()

    deterministic_torch()

    splits = mnist_split()
    x_train, y_train = to_tensor(splits["train"][0]), torch.from_numpy(splits["train"][1])
    x_test, y_test = to_tensor(splits["test"][0]), torch.from_numpy(splits["test"][1])

    summary = []
    for recipe in RECIPES:
        if args.only and recipe.preset != args.only:
            continue
        torch.manual_seed(0)
        model = zoo.build(recipe.preset)
        start = time.perf_counter()
        train(model, recipe, x_train, y_train)
        seconds = time.perf_counter() - start
        acc = top1(model, x_test, y_test)
        path = args.out_dir / recipe.out
        torch.save(checkpoint(recipe, model, acc), path)
        verify(path, x_test, y_test)
        params = sum(p.numel() for p in model.parameters())
        summary.append(f"{recipe.preset}: params={params} test_top1={acc:.2f}% train_time={seconds:.1f}s -> {path}")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
