"""How torch computes on the CPU: `compute.cpu` in params.yaml (README, "Same bytes on any CPU").

- portable (the default): the same bytes on every x86-64 CPU of a family. The family is
  x86-64-v3 (AVX2 and FMA: Intel since Haswell, 2013; AMD since Zen, 2017; and Excavator), or,
  on a CPU without them, the baseline family, whose bytes differ from v3's (one log line says
  so, and the environment file records it, so DVC reruns what it affects).
- native: torch's own choices (the CPU's widest kernels, one thread per core); the fastest,
  but the bytes may differ from one machine to another.

Torch picks its kernels by the CPU it finds, and three of those choices change bits:
- MKL (matrix products) has code paths per instruction set and vendor that round differently;
  `MKL_CBWR=COMPATIBLE` takes the one path every x86-64 CPU runs alike (its AVX2 path is the
  same only across Intel CPUs: an AMD CPU takes another one and gives other bits). It is also
  MKL's slowest, so on the v3 family the mlp's large products go to OpenBLAS's Haswell kernels
  instead (torchreg.gemm, torchreg.parallel);
- ATen's own kernels (sums, activations, the optimizers) are compiled per instruction set and
  sum or round differently in each; `ATEN_CPU_CAPABILITY` pins one (avx2 on v3, else default);
- a reduction split across threads adds its partial sums in an order set by the thread count,
  which follows the number of cores: one thread per process (`train.nproc` is a param).
Both variables are read when torch first computes, not when it is imported: `use()` must run
before any computation (each stage calls it right after reading params).

This module must not import torch at import time (the plot stage does not use torch).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

_mode = "portable"  # what `use` set last; the package's import sets the portable mode
V3_FLAGS = {"avx2", "fma"}  # with AVX, which both imply: what ATen's avx2 kernels execute


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's features as CPUID reports them (NumPy asks it at import), lower case. Not
    /proc/cpuinfo: under an emulated CPU (qemu-user) that file still describes the host."""
    from numpy._core._multiarray_umath import __cpu_features__

    names = {"FMA3": "fma"}
    return frozenset(names.get(k, k.lower()) for k, on in __cpu_features__.items() if on)


ARM64 = ("aarch64", "arm64")  # platform.machine() on Linux, on macOS


def family() -> str:
    """The family of CPUs that give the same bytes as this one in the portable mode: the
    x86-64-v3 one, the x86-64 baseline, arm64 per operating system (macOS builds torch with
    another compiler: not known to agree with Linux), or another architecture on its own."""
    machine = platform.machine()
    if machine in ARM64:
        return f"arm64 ({platform.system()})"
    if machine not in ("x86_64", "AMD64"):
        return f"portable on {machine} (not x86-64: its own bytes)"
    return "x86-64-v3" if cpu_flags() >= V3_FLAGS else "x86-64 baseline"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def portable_settings() -> dict[str, str]:
    """The environment that pins torch's kernels for the portable mode on this CPU (on arm64
    `default` is ATen's NEON code, which every arm64 CPU runs, where SVE ones would differ)."""
    v3 = family() == "x86-64-v3"
    return {
        "MKL_CBWR": "COMPATIBLE",
        "ATEN_CPU_CAPABILITY": "avx2" if v3 else "default",
        "ONEDNN_MAX_CPU_ISA": "AVX2" if v3 else "SSE41",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def current() -> str:
    return _mode


def use(mode: str) -> None:
    """Set torch up for `mode` ("portable" or "native"), before it computes anything."""
    global _mode
    _mode = mode
    if mode == "native":
        for key in portable_settings():
            os.environ.pop(key, None)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(os.cpu_count() or 1)
        return
    os.environ.update(portable_settings())
    if "torch" in sys.modules:  # its thread pool was sized at import
        sys.modules["torch"].set_num_threads(1)
    if family() == "x86-64 baseline":
        log.warning(
            "this CPU (%s) has no AVX2/FMA: its bytes are those of the %s family, which differ "
            "from those of CPUs with AVX2/FMA (compute.cpu = portable)",
            cpu_name(),
            family(),
        )
    elif family() != "x86-64-v3":
        log.warning(
            "this CPU (%s) is not x86-64: its bytes are those of the %s family, not those of "
            "x86-64 CPUs (compute.cpu = portable)",
            cpu_name(),
            family(),
        )
