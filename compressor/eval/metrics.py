"""Accuracy of a model or artifact on an evaluation set.

With labels: top-1 (percent). Without: fidelity to the float model: top-1 agreement (percent)
and SQNR (dB) of the logits, so a gate can still be set on unlabeled data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from compressor.data.sources import DataSource
from compressor.progress import Progress

#: A model in some runtime: a float32 NCHW batch in, logits out (what every Artifact provides).
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Outputs:
    """Logits of one model over the evaluation set, with the labels if there are any."""

    logits: np.ndarray
    labels: np.ndarray | None


def collect(run: Runner, data: DataSource, batch_size: int, progress: Progress, label: str,
            limit: int | None = None, fixed_batch: bool = False) -> Outputs:
    """Run over the data; `fixed_batch` pads the last batch for models that take one batch size."""
    outs, labels = [], []
    n = min(len(data), limit or len(data))
    batches = data.batches(batch_size, limit, fill=fixed_batch)
    for x, y in progress.track(batches, f"evaluating {label}", total=-(-n // batch_size)):
        outs.append(np.asarray(run(x.numpy())).reshape(x.shape[0], -1))
        if y is not None:
            labels.append(y.numpy())
    return Outputs(np.concatenate(outs)[:n], np.concatenate(labels)[:n] if labels else None)


def torch_runner(fn: Callable[[torch.Tensor], torch.Tensor]) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fn(torch.from_numpy(x)).float().numpy()
    return run


def top1(out: Outputs) -> float:
    return score(out, out, "top1")


def agreement(out: Outputs, reference: Outputs) -> float:
    """Percent of inputs where the top-1 class equals the reference model's."""
    return score(out, reference, "agreement")


def confident_agreement(out: Outputs, reference: Outputs, threshold: float = 0.5) -> float | None:
    """Agreement on the inputs the reference is sure of (its top-1 softmax probability > `threshold`).

    On unlabeled photographs many inputs sit between two classes, where any rounding may flip the
    argmax; the confident subset separates that from a quantizer that really broke the model.
    None when the reference is confident about nothing.
    """
    confident = _softmax(reference.logits).max(1) > threshold
    if not confident.any():
        return None
    agree = out.logits.argmax(1) == reference.logits.argmax(1)
    return float(agree[confident].mean() * 100.0)


def top5_containment(out: Outputs, reference: Outputs) -> float:
    """Percent of inputs whose reference top-1 class is among `out`'s five highest logits."""
    k = min(5, out.logits.shape[1])
    top = np.argpartition(-out.logits, k - 1, axis=1)[:, :k]
    return float((top == reference.logits.argmax(1)[:, None]).any(1).mean() * 100.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def sqnr_db(out: Outputs, reference: Outputs) -> float:
    """Signal-to-quantization-noise ratio of the logits against the reference, in dB."""
    noise = float(((out.logits - reference.logits) ** 2).sum())
    signal = float((reference.logits**2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


def hits(out: Outputs, reference: Outputs, metric: str) -> np.ndarray:
    """Per input, whether it counts for the metric: top-1 correct, or agreeing with the float
    reference. Kept per input so a drop's confidence interval can pair the same images."""
    if metric == "top1":
        if out.labels is None:
            raise ValueError("top-1 needs labels")
        return out.logits.argmax(1) == out.labels
    return out.logits.argmax(1) == reference.logits.argmax(1)


def score(out: Outputs, reference: Outputs, metric: str) -> float:
    """The gate's metric: top1 (needs labels) or agreement with the float reference."""
    return float(hits(out, reference, metric).mean() * 100.0)
