"""The host CPU as kernels see it: its model name and feature flags, read once from /proc/cpuinfo.

Several decisions depend on the same flags: 7-bit weights where int8 kernels saturate without VNNI
(`quant.int8_ptq`'s `reduce_range: auto`, the integer-only MatMulInteger layout), the TVM target's
`-mcpu`, the block-sparse kernel's build cache (a `-march=native` build must not load on another
CPU) and the machine line every bench table prints. One reader keeps them in agreement.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: int8 dot-product instructions: without them x86 int8 kernels add u8 x s8 pairs in int16
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def _cpuinfo() -> tuple[str, ...]:
    try:
        return tuple(Path("/proc/cpuinfo").read_text(errors="ignore").splitlines())
    except OSError:
        return ()


def _field(*keys: str) -> str | None:
    return next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith(keys) and ":" in ln), None)


def cpu_model() -> str:
    """The CPU's model name (x86 `model name`; elsewhere what the platform reports)."""
    return _field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """Feature flags (x86 `flags`, ARM `Features`); empty where /proc/cpuinfo does not exist."""
    return frozenset((_field("flags", "Features") or "").split())


def has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI or AMX)."""
    return any(flag in cpu_flags() for flag in VNNI_FLAGS)
