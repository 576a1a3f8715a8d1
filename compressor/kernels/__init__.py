"""Compiled CPU kernels that make compression pay off in latency (issue 5).

Importing this package registers the torch custom ops (`compressor::block_sparse_linear`), which
graphs and `torch.export` programs may call; the C++ code is compiled on first use, not here.
"""

from compressor.kernels.block_sparse import (
    BLOCK_SPARSE_LINEAR,
    BlockSparseWeight,
    KernelUnavailable,
    block_sparse_linear,
    block_sparsity,
    kernel_available,
)

__all__ = ["BLOCK_SPARSE_LINEAR", "BlockSparseWeight", "KernelUnavailable", "block_sparse_linear", "block_sparsity",
           "kernel_available"]
