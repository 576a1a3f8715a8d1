"""Block-sparse Linear on CPU that beats dense sgemm at the sparsities block pruning produces.

torch's own BSR matmul is 2-4x slower than dense at 50-75 % block sparsity (deps.md §5), so
pruning would cost latency instead of saving it. This module packs a weight as block-CSR and runs
it through our C++ kernel (`csrc/block_sparse.cpp`), which skips the zero blocks and keeps an
output tile in registers.

The kernel is compiled on first use with the machine's C++ compiler (`-O3 -march=native`, since
it is built where it runs) and cached per user under `~/.cache/compressor/kernels/<key>/`, the
key hashing the source, the flags, the compiler's version and the CPU's feature flags, so a
second process loads it in milliseconds and another CPU gets its own build. Without a compiler,
or if the build fails, the op computes the same result with dense `F.linear` and warns once with
the reason: a model that uses the op never fails to run.

The library is plain C (called through ctypes), built with one compiler command rather than
`torch.utils.cpp_extension`: torch's C++ headers alone took ~20 s to compile here against ~1 s
for the kernel, the build needs no ninja, and the library does not depend on torch's C++ ABI.
The op is registered from Python, which is also what `torch.export` needs.

`compressor::block_sparse_linear` is a torch custom op whose arguments are plain tensors and
ints, so it can sit in a `torch.export` graph and survive `torch.export.save`/`load` (importing
`compressor.kernels` registers it; nothing is compiled at import).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from compressor.cpu import cpu_flags, cpu_model

SOURCE = Path(__file__).parent / "csrc" / "block_sparse.cpp"
CFLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-shared", "-std=c++17")
ABI_VERSION = 2  # must match compressor_bsr_abi_version() in the C++ source
LIB_NAME = "block_sparse.so"
#: Block heights the kernel's vector tiles take (output features per block).
ROW_MULTIPLE = 8


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here; the message says why."""


@dataclass(frozen=True)
class BlockSparseWeight:
    """A Linear weight (out_features, in_features) as block-CSR, the layout the kernel reads.

    `values[j]` is kept block j transposed to (block_w, block_h), so one input feature's block_h
    output weights are contiguous (whole vector loads); `row_ptr[r]:row_ptr[r+1]` are the blocks
    of block row r and `col_idx` their block columns. Ragged edges are zero-padded.
    """

    values: torch.Tensor
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    shape: tuple[int, int]
    block: tuple[int, int]

    @classmethod
    def from_dense(cls, w: torch.Tensor, block: tuple[int, int] | list[int]) -> BlockSparseWeight:
        """Pack `w`, dropping every block that is all zeros."""
        bh, bw = check_block(block)
        if w.dim() != 2:
            raise ValueError(f"expected a 2-D Linear weight (out_features, in_features), got shape {tuple(w.shape)}")
        n, k = w.shape
        grid = _blocks(w.detach().float(), bh, bw)  # (nbr, nbc, bh, bw)
        keep = grid.flatten(2).ne(0).any(2)
        rows, cols = keep.nonzero(as_tuple=True)
        row_ptr = torch.zeros(grid.shape[0] + 1, dtype=torch.int64)
        row_ptr[1:] = keep.sum(1).cumsum(0)
        values = grid[rows, cols].transpose(1, 2).contiguous()
        return cls(values, row_ptr, cols.clone(), (n, k), (bh, bw))  # clone: nonzero's columns share storage

    @property
    def blocks(self) -> int:
        """Blocks in the full grid (kept or not)."""
        return (len(self.row_ptr) - 1) * -(-self.shape[1] // self.block[1])

    @property
    def block_sparsity(self) -> float:
        """Fraction of the blocks that are all zeros (the work the kernel skips)."""
        return 1.0 - self.values.shape[0] / max(self.blocks, 1)

    def to_dense(self) -> torch.Tensor:
        return dense_from_blocks(self.values, self.row_ptr, self.col_idx, self.shape, self.block)


def check_block(block: tuple[int, int] | list[int]) -> tuple[int, int]:
    """(block_h, block_w) the kernel can run, or ValueError saying what it takes."""
    if len(block) != 2 or min(block) < 1:
        raise ValueError(f"block must be [rows, cols] of positive ints, got {list(block)}")
    bh, bw = int(block[0]), int(block[1])
    if bh % ROW_MULTIPLE:
        raise ValueError(f"block height (output features per block) must be a multiple of {ROW_MULTIPLE} for the "
                         f"kernel's vector tiles, got {bh}x{bw}; use e.g. 16x16 or 32x32 blocks")
    return bh, bw


def block_sparsity(w: torch.Tensor, block: tuple[int, int] | list[int]) -> float:
    """Fraction of (bh × bw) blocks of a 2-D weight that are all zeros (ragged edges count as blocks)."""
    grid = _blocks(w.detach(), int(block[0]), int(block[1]))
    return 1.0 - float(grid.flatten(2).ne(0).any(2).float().mean())


def _blocks(w: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """(N, K) → (ceil(N/bh), ceil(K/bw), bh, bw), zero-padded at the ragged edges."""
    n, k = w.shape
    nbr, nbc = -(-n // bh), -(-k // bw)
    if (nbr * bh, nbc * bw) != (n, k):
        w = F.pad(w, (0, nbc * bw - k, 0, nbr * bh - n))
    return w.reshape(nbr, bh, nbc, bw).transpose(1, 2)


def dense_from_blocks(values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, shape: tuple[int, int],
                      block: tuple[int, int]) -> torch.Tensor:
    """The dense (out_features, in_features) weight back from its block-CSR arrays."""
    (n, k), (bh, bw) = shape, block
    nbr, nbc = len(row_ptr) - 1, -(-k // bw)
    grid = values.new_zeros(nbr, nbc, bh, bw)
    rows = torch.repeat_interleave(torch.arange(nbr, device=row_ptr.device), row_ptr.diff())
    grid[rows, col_idx] = values.transpose(1, 2)
    return grid.transpose(1, 2).reshape(nbr * bh, nbc * bw)[:n, :k]


# -- building and loading the C++ kernel ----------------------------------------------------------

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: tuple[bool, str] | None = None
_warned = False


def cache_root() -> Path:
    """Where built kernels live: $COMPRESSOR_CACHE_DIR, else $XDG_CACHE_HOME/compressor, else ~/.cache."""
    if os.environ.get("COMPRESSOR_CACHE_DIR"):
        return Path(os.environ["COMPRESSOR_CACHE_DIR"]) / "kernels"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "compressor" / "kernels"


def _compiler() -> tuple[str, str]:
    """(compiler path, its version line), or KernelUnavailable naming what is missing."""
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        raise KernelUnavailable(f"no C++ compiler: {name!r} is not on PATH (install g++ or set CXX)")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"C++ compiler {path!r} does not run ({type(e).__name__}: {e})") from e
    return path, (out.splitlines() or ["?"])[0]


def _build(cxx: str, version: str) -> Path:
    """Compile into the cache (or find it there); returns the library's path."""
    if not SOURCE.is_file():
        raise KernelUnavailable(f"kernel source {SOURCE} is missing (package installed without compressor/kernels/"
                                "csrc; reinstall from the source tree)")
    source = SOURCE.read_bytes()
    cpu = " ".join(sorted(cpu_flags()) or [cpu_model()])  # a -march=native build never loads on another CPU
    key = hashlib.sha256(b"\0".join([source, " ".join(CFLAGS).encode(), version.encode(), cpu.encode(),
                                     str(ABI_VERSION).encode()])).hexdigest()[:16]
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    for root in (cache_root(), Path(tempfile.gettempdir()) / f"compressor-{user}" / "kernels"):
        target = root / key / LIB_NAME
        if target.exists():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue  # read-only home: try the temp dir
        tmp = target.with_name(f"{LIB_NAME}.{os.getpid()}.tmp")  # concurrent builds each write their own
        cmd = [cxx, *CFLAGS, str(SOURCE), "-o", str(tmp)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            raise KernelUnavailable(f"could not run {cxx} ({type(e).__name__}: {e})") from e
        if res.returncode != 0:
            tmp.unlink(missing_ok=True)
            tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-4:])
            raise KernelUnavailable(f"{Path(cxx).name} failed to build {SOURCE.name}: {tail}")
        os.replace(tmp, target)  # atomic: another process sees no library or a whole one
        return target
    raise KernelUnavailable(f"no writable cache directory ({cache_root()} and the temp dir both failed)")


def _load() -> ctypes.CDLL:
    cxx, version = _compiler()
    path = _build(cxx, version)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        path.unlink(missing_ok=True)  # a broken file would otherwise be found again next time
        raise KernelUnavailable(f"built {path} but could not load it ({e})") from e
    lib.compressor_bsr_abi_version.restype = ctypes.c_int
    if lib.compressor_bsr_abi_version() != ABI_VERSION:
        raise KernelUnavailable(f"{path} has ABI version {lib.compressor_bsr_abi_version()}, expected {ABI_VERSION}")
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.compressor_bsr_linear_f32.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, i64,
                                              ctypes.c_int]
    lib.compressor_bsr_linear_f32.restype = ctypes.c_int
    lib.compressor_bsr_info.restype = ctypes.c_char_p
    return lib


def kernel_available() -> tuple[bool, str]:
    """(whether the compiled kernel runs here, what it is or why not); builds it on first call."""
    global _lib, _status
    with _lock:
        if _status is None:
            if os.environ.get("COMPRESSOR_NO_KERNELS"):
                _status = (False, "disabled by COMPRESSOR_NO_KERNELS")
            else:
                try:
                    _lib = _load()
                    _status = (True, _lib.compressor_bsr_info().decode())
                except KernelUnavailable as e:
                    _status = (False, str(e))
                except Exception as e:  # an unforeseen platform quirk must cost speed, never the run
                    _status = (False, f"{type(e).__name__}: {e}")
        return _status


def _kernel() -> ctypes.CDLL | None:
    """The loaded library, or None after warning (once per process) why the dense path runs."""
    global _warned
    ok, why = kernel_available()
    if ok:
        return _lib
    if not _warned:
        _warned = True
        warnings.warn(f"block-sparse kernel unavailable, running dense F.linear instead: {why}", RuntimeWarning,
                      stacklevel=3)
    return None


# -- the op -----------------------------------------------------------------------------------------

@torch.library.custom_op("compressor::block_sparse_linear", mutates_args=())
def _block_sparse_linear_op(x: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                            bias: torch.Tensor | None, out_features: int, block_h: int,
                            block_w: int) -> torch.Tensor:
    """F.linear(x, W, bias) with W given as block-CSR (see BlockSparseWeight)."""
    k = x.shape[-1]
    if (row_ptr.numel() != -(-out_features // block_h) + 1 or tuple(values.shape[1:]) != (block_w, block_h)
            or col_idx.numel() != values.shape[0] or (bias is not None and bias.numel() != out_features)):
        raise ValueError(f"block_sparse_linear: arrays do not describe a {out_features}x{k} weight in "
                         f"{block_h}x{block_w} blocks (row_ptr {row_ptr.numel()}, values {tuple(values.shape)}, "
                         f"col_idx {col_idx.numel()}, bias {None if bias is None else bias.numel()})")
    lib = _kernel()
    if (lib is None or x.dtype != torch.float32 or values.dtype != torch.float32 or block_h % ROW_MULTIPLE
            or x.device.type != "cpu" or values.device.type != "cpu"):  # what the kernel does not take runs dense
        w = dense_from_blocks(values, row_ptr, col_idx, (out_features, k), (block_h, block_w))
        return F.linear(x, w.to(x.dtype), bias)
    x2 = x.reshape(-1, k).contiguous()
    values, row_ptr, col_idx = values.contiguous(), row_ptr.cpu().long().contiguous(), col_idx.cpu().long().contiguous()
    b = bias.cpu().float().contiguous() if bias is not None else None
    y = torch.empty(x2.shape[0], out_features, dtype=torch.float32)
    rc = lib.compressor_bsr_linear_f32(x2.data_ptr(), x2.shape[0], k, values.data_ptr(), row_ptr.data_ptr(),
                                       col_idx.data_ptr(), values.shape[0], None if b is None else b.data_ptr(),
                                       y.data_ptr(), out_features, block_h, block_w, torch.get_num_threads())
    if rc:
        raise ValueError("block_sparse_linear: " + ("row_ptr must rise from 0 to the number of blocks" if rc == 1
                                                     else f"a block column is outside the {k} input features"))
    return y.reshape(*x.shape[:-1], out_features)


@_block_sparse_linear_op.register_fake
def _(x: torch.Tensor, values: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, bias: torch.Tensor | None,
      out_features: int, block_h: int, block_w: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


#: The overload graph nodes call (a custom op's Python wrapper cannot be a node target).
BLOCK_SPARSE_LINEAR = torch.ops.compressor.block_sparse_linear.default


def block_sparse_linear(x: torch.Tensor, packed: BlockSparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, packed.to_dense(), bias) for x of shape (..., in_features), skipping zero blocks."""
    if x.shape[-1] != packed.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects {packed.shape[1]}")
    return BLOCK_SPARSE_LINEAR(x, packed.values, packed.row_ptr, packed.col_idx, bias, packed.shape[0],
                               packed.block[0], packed.block[1])
