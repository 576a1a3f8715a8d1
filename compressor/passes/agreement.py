"""Top-1 agreement with the model before a pass, and the stop rule the passes that change a model share.

A pass that changes what a model computes (N:M pruning, a distillation fine-tune) checks its result
on the calibration images against the logits the model gave before it. When the agreement is below
the pass's `min_agreement` beyond the noise of those few images (the upper end of the 95 % Wilson
interval stays below it), the run stops with the numbers instead of shipping a model the user would
only find broken in the report: on EfficientNet-Lite0 one-shot 2:4 pruning kept 41 % agreement and
block50 after its fine-tune 40 %, both with exit 0 before this check.
"""

from __future__ import annotations

import torch

from compressor.eval import wilson_interval
from compressor.graph.graph import Graph

Pairs = list[tuple[torch.Tensor, torch.Tensor]]  # (images, reference logits)


@torch.no_grad()
def reference_logits(graph: Graph, images: list[torch.Tensor]) -> Pairs:
    """(images, the graph's logits on them) for comparing the graph after a change."""
    return [(x, graph.gm(x)) for x in images]


@torch.no_grad()
def agreement(graph: Graph, pairs: Pairs) -> tuple[float, int]:
    """(top-1 agreement with the reference logits in percent, number of images)."""
    same = sum(int((graph.gm(x).argmax(-1) == t.argmax(-1)).sum()) for x, t in pairs)
    n = sum(len(x) for x, _ in pairs)
    return round(100.0 * same / max(n, 1), 2), n


def upper_bound(percent: float, n: int) -> float:
    """Upper end of the 95 % interval of an agreement measured on n images."""
    return wilson_interval(round(percent * n / 100), n)[1]


def falls_short(percent: float, n: int, minimum: float | None) -> bool:
    """True when even the upper end of the interval is below `minimum` (None: never)."""
    return minimum is not None and upper_bound(percent, n) < minimum
