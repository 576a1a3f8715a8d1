"""The machine a bench table was measured on, printed with every table: ratios are comparable only
within one run, and int8/bf16 speed depends on flags that differ between the CPUs this runs on."""

from __future__ import annotations

import os

from compressor.cpu import cpu_flags, cpu_model

#: flags int8 and bf16 kernels depend on; each is listed as present or absent
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_line(threads: int) -> str:
    """CPU model, core count, the speed flags present and absent, the load average and the threads used."""
    model, flags = cpu_model(), cpu_flags()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"CPU: {model}, {os.cpu_count()} cores; flags: {' '.join(f for f in SPEED_FLAGS if f in flags) or 'none'} "
            f"(absent: {' '.join(f for f in SPEED_FLAGS if f not in flags)}); load average {load}; {threads} threads")
