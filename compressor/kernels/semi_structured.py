"""2:4 semi-structured sparse Linear on NVIDIA GPUs (sparse tensor cores, compute capability ≥ 8.0).

PyTorch's `to_sparse_semi_structured` compresses a 2:4 weight into values + metadata and runs
it through cuSPARSELt (or CUTLASS). It raises "Only CUDA tensors are currently supported" on
CPU (../shared/deps.md §5), so `semi_structured_available` says why it cannot run before a
caller tries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def semi_structured_available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA GPU (2:4 sparse tensor cores need an NVIDIA GPU with compute capability >= 8.0)"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return False, f"GPU compute capability {major}.{minor} < 8.0 has no sparse tensor cores"
    return True, ""


def semi_structured_weight(w: torch.Tensor, cutlass: bool = False) -> torch.Tensor:
    """A 2:4-pruned (out, in) fp16/bf16 CUDA weight as a SparseSemiStructuredTensor for `F.linear`."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    groups = w.reshape(w.shape[0], -1, 4)
    if bool(((groups != 0).sum(-1) > 2).any()):
        raise ValueError("weight is not 2:4 sparse along its input dimension; run prune.nm first")
    SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
    return to_sparse_semi_structured(w)


def semi_structured_linear(x: torch.Tensor, w_sparse: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear with a semi-structured weight; inputs are flattened to 2-D, which the kernels require."""
    out = F.linear(x.reshape(-1, x.shape[-1]), w_sparse, bias)
    return out.reshape(*x.shape[:-1], out.shape[-1])
