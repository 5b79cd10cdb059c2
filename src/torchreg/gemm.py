"""Matrix products with the same bits on every CPU of a family: x86-64-v3 at AVX2/FMA speed,
and arm64 (where torch's own products differ from one CPU model to the next).

MKL's only vendor-neutral code path (`MKL_CBWR=COMPATIBLE`) is its slowest: about 7x the time of
its native path on all cores for a wide product. OpenBLAS's Haswell kernels run on every CPU
with AVX2 and FMA (Intel since Haswell, AMD since Zen) and are the same instructions on each:
FMA rounds exactly, so they give the same bits everywhere, provided that
- the kernel is chosen by name, not by the CPU (`OPENBLAS_CORETYPE=Haswell`, read when the
  library loads: OpenBLAS would pick SkylakeX kernels on an AVX-512 CPU, which round otherwise);
- one thread computes each product (OpenBLAS splits the sum over K by its thread count), and
- the blocking is fixed: for Haswell kernels OpenBLAS compiles it in, it reads no cache size.

The library is the scipy-openblas32 package (the OpenBLAS build NumPy and SciPy ship), loaded
here privately, so NumPy's own copy and its settings are left alone. `mm` is the product; it is
available on the x86-64-v3 family (the Haswell kernels would stop a CPU without AVX2 with an
illegal instruction) and on arm64, with OpenBLAS's ARMV8 kernels (the same reasoning: NEON and
its FMA are in every arm64 CPU, and OpenBLAS would otherwise pick kernels by the CPU's part).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import cache
from pathlib import Path

import torch

from torchreg import cpu
from torchreg.errors import UserError

# The kernels by name, per family: the same instructions on every CPU of it (Haswell: AVX2 and
# FMA; ARMV8: the NEON code every arm64 CPU runs, where OpenBLAS would pick by the CPU's part).
# macOS is left to torch: its scipy-openblas32 build is not known to take kernels by name.
FAMILY_KERNELS = {"x86-64-v3": "Haswell", "arm64 (Linux)": "ARMV8"}
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_INT_MAX = 2**31 - 1  # scipy-openblas32 takes 32-bit sizes


@cache
def _library() -> ctypes.CDLL | None:
    """The private OpenBLAS with its family's kernels and one thread; None on a family
    without (x86-64 without AVX2/FMA), which computes its products with torch."""
    kernels = FAMILY_KERNELS.get(cpu.family())
    if kernels is None:
        return None
    spec = importlib.util.find_spec("scipy_openblas32")
    paths = [] if spec is None else spec.submodule_search_locations or []
    found = [lib for p in paths for lib in (Path(p) / "lib").glob("libscipy_openblas*.so")]
    if not found:
        raise UserError(
            "scipy-openblas32 is not installed (or has no library): the portable mode needs it "
            "for its matrix products; install what requirements.lock pins (./run.sh setup)"
        )
    saved = {key: os.environ.get(key) for key in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")}
    os.environ.update(OPENBLAS_CORETYPE=kernels, OPENBLAS_NUM_THREADS="1")
    try:
        lib = ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_LOCAL)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
    got = lib.scipy_openblas_get_corename().decode()
    if got.lower() != kernels.lower():  # loaded before, by code that let OpenBLAS pick
        raise UserError(
            f"{found[0].name} was loaded before torchreg.gemm, with its {got} kernels: the "
            f"portable mode needs the {kernels} ones (call torchreg.gemm.available() before "
            "anything else loads scipy-openblas32, or use compute.cpu: native)"
        )
    lib.scipy_openblas_set_num_threads(1)  # also where it was loaded before, with more
    # Both calls end alike: alpha, A, lda, B or x, ldb or incx, beta, C or y, ldc or incy.
    tail = [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    tail += [ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    for name, flags_and_sizes in (("scipy_cblas_sgemm", 6), ("scipy_cblas_sgemv", 4)):
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = [ctypes.c_int] * flags_and_sizes + tail
    return lib


def available() -> bool:
    return _library() is not None


def _operand(t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """t as cblas sees a row-major matrix: (tensor, transpose flag, leading dimension)."""
    if t.stride(1) == 1 and t.stride(0) >= t.size(1):
        return t, _NO_TRANS, t.stride(0)
    if t.stride(0) == 1 and t.stride(1) >= t.size(0):
        return t, _TRANS, t.stride(1)
    t = t.contiguous()
    return t, _NO_TRANS, t.size(1)


def _vector(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A 1-d t as cblas sees a vector: (tensor, increment)."""
    return (t, t.stride(0)) if t.stride(0) >= 1 else (t.contiguous(), 1)


def _check(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(
            f"gemm.mm: {name} must be a 2-d float32 CPU tensor, not {t.dim()}-d {t.dtype} on "
            f"{t.device}"
        )
    if max(*t.shape, *t.stride()) > _INT_MAX:
        raise ValueError(f"gemm.mm: {name}'s sizes and strides must fit in 32 bits")


def mm(
    a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None, accumulate: bool = False
) -> torch.Tensor:
    """a @ b for float32 CPU matrices, by the family's kernels on one thread; into `out` when
    given, as torch.mm(a, b, out=out), or added to it with `accumulate` (out.addmm_(a, b)).
    `out`'s rows must be contiguous and apart (stride (>= n, 1)).

    A product with one row or one column is a matrix-vector product (sgemv: packing the matrix
    for sgemm would cost more than the product), and one with k = 1 is an outer product: each
    element is one rounded multiplication, which torch's mul gives as exactly.
    """
    lib = _library()
    if lib is None:
        raise ValueError("gemm.mm: no fixed kernels for this CPU's family (gemm.available())")
    _check("a", a)
    _check("b", b)
    (m, k), n = a.shape, b.size(1)
    if b.size(0) != k:
        raise ValueError(f"gemm.mm: shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit")
    if out is None:
        if accumulate:
            raise ValueError("gemm.mm: accumulate needs out, the matrix to add the product to")
        out = torch.empty(m, n)
    _check("out", out)
    if out.shape != (m, n) or out.stride(1) != 1 or (m > 1 and out.stride(0) < n):
        raise ValueError(
            f"gemm.mm: out must be {m} x {n} with contiguous rows apart, not "
            f"{tuple(out.shape)} with strides {out.stride()}"
        )
    beta = 1.0 if accumulate else 0.0
    if m == 0 or n == 0:
        return out
    if k <= 1:
        if accumulate:
            return out.addcmul_(a, b) if k else out
        return torch.mul(a, b, out=out) if k else out.zero_()
    if n == 1:  # out[:, 0] = a @ b[:, 0]
        (a, ta, lda), (x, incx) = _operand(a), _vector(b[:, 0])
        rows, cols = (m, k) if ta == _NO_TRANS else (k, m)
        lib.scipy_cblas_sgemv(
            _ROW_MAJOR, ta, rows, cols, 1.0, a.data_ptr(), lda, x.data_ptr(), incx, beta,
            out.data_ptr(), out.stride(0) if m > 1 else 1,
        )  # fmt: skip
        return out
    if m == 1:  # out[0] = b.T @ a[0]
        (b, tb, ldb), (x, incx) = _operand(b), _vector(a[0])
        flag, rows, cols = (_TRANS, k, n) if tb == _NO_TRANS else (_NO_TRANS, n, k)
        lib.scipy_cblas_sgemv(
            _ROW_MAJOR, flag, rows, cols, 1.0, b.data_ptr(), ldb, x.data_ptr(), incx, beta,
            out.data_ptr(), 1,
        )  # fmt: skip
        return out
    (a, ta, lda), (b, tb, ldb) = _operand(a), _operand(b)
    lib.scipy_cblas_sgemm(
        _ROW_MAJOR, ta, tb, m, n, k, 1.0, a.data_ptr(), lda, b.data_ptr(), ldb, beta,
        out.data_ptr(), out.stride(0),
    )  # fmt: skip
    return out
