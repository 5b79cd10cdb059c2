"""torchreg.gemm: matrix products by OpenBLAS's Haswell kernels on one thread, loaded privately.

That they give the same bits on other CPUs is shown under emulated CPUs
(test_cpu_independence.py); here: that they compute the product, in every shape it takes, and
that the library is the one the bits depend on (Haswell kernels, one thread) or is refused.
"""

import itertools
import os
import re
import subprocess
import sys

import pytest
import torch

from support import ROOT, subprocess_env
from torchreg import cpu, gemm

pytestmark = pytest.mark.skipif(
    cpu.family() != "x86-64-v3", reason="the Haswell kernels need an AVX2/FMA CPU"
)


LAYOUTS = ("plain", "transposed", "rows apart", "columns apart", "one row repeated")


def operand(rows: int, cols: int, layout: str, g: torch.Generator) -> torch.Tensor:
    """A rows x cols matrix stored as `layout` says: contiguous, as the transpose of a
    contiguous one, every other row or column of a larger one, or one row broadcast (stride 0)."""
    if layout == "transposed":
        return torch.randn(cols, rows, generator=g).T
    if layout == "rows apart":
        return torch.randn(2 * rows, cols, generator=g)[::2]
    if layout == "columns apart":
        return torch.randn(rows, 2 * cols, generator=g)[:, ::2]
    if layout == "one row repeated":
        return torch.randn(1, cols, generator=g).expand(rows, cols)
    return torch.randn(rows, cols, generator=g)


# No rows or columns, one row or column (matrix-vector products), k of 0 and 1 (no product,
# an outer product), and full products; each operand in each layout.
@pytest.mark.parametrize(
    "m,k,n", list(itertools.product([0, 1, 2, 33], [0, 1, 2, 257], [0, 1, 2, 130]))
)
def test_it_is_the_product(m, k, n):
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    for la, lb in itertools.product(LAYOUTS, repeat=2):
        a, b = operand(m, k, la, g), operand(k, n, lb, g)
        exact = a.double() @ b.double()
        tol = {"rtol": 1e-5, "atol": 1e-5 * (k + 1), "msg": f"{la} a, {lb} b"}
        torch.testing.assert_close(gemm.mm(a, b), exact.float(), **tol)
        # Into the rows of a wider matrix, and added to what it holds.
        wide = torch.randn(m, n + 3, generator=g)
        before = wide[:, :n].clone()
        gemm.mm(a, b, out=wide[:, :n], accumulate=True)
        torch.testing.assert_close(wide[:, :n], (before.double() + exact).float(), **tol)
        # Into rows that hold NaN (as torch.empty's memory may): overwritten, never added to;
        # the columns beside them are left alone.
        wide.fill_(float("nan"))
        gemm.mm(a, b, out=wide[:, :n])
        torch.testing.assert_close(wide[:, :n], exact.float(), **tol)
        assert wide[:, n:].isnan().all()


def test_one_row_may_have_any_row_stride():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 5, generator=g), torch.randn(5, 7, generator=g)
    out = torch.empty(7).as_strided((1, 7), (1, 1))
    torch.testing.assert_close(gemm.mm(a, b, out=out), a @ b)


def test_it_runs_the_haswell_kernels_on_one_thread_and_leaves_the_environment_alone():
    lib = gemm._library()
    assert lib.scipy_openblas_get_corename() == b"Haswell"
    assert lib.scipy_openblas_get_num_threads() == 1
    assert "OPENBLAS_CORETYPE" not in os.environ and "OPENBLAS_NUM_THREADS" not in os.environ


LOAD_FIRST = """
import scipy_openblas32
scipy_openblas32.get_openblas_config()  # loads the library with the kernels of this CPU
import torch
from torchreg import gemm
from torchreg.errors import UserError
try:
    gemm.mm(torch.ones(2, 2), torch.ones(2, 2))
except UserError as exc:
    print(exc)
"""


def test_a_library_loaded_before_with_other_kernels_is_refused():
    # Sandybridge's kernels run on any AVX2 CPU too, and give other bits.
    env = subprocess_env(ROOT / "src", OPENBLAS_CORETYPE="Sandybridge")
    done = subprocess.run(
        [sys.executable, "-c", LOAD_FIRST], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == (
        "libscipy_openblas.so was loaded before torchreg.gemm, with its Sandybridge kernels: "
        "the portable mode needs the Haswell ones (call torchreg.gemm.available() before anything "
        "else loads scipy-openblas32, or use compute.cpu: native)"
    )


LOAD_FIRST_ON_TWO_THREADS = """
import ctypes, scipy_openblas32
scipy_openblas32.get_openblas_config()  # loads it: Haswell kernels, two threads
from torchreg import gemm
gemm.available()
lib = ctypes.CDLL(scipy_openblas32.get_lib_dir() + "/libscipy_openblas.so")
print(lib.scipy_openblas_get_num_threads())
"""


def test_a_library_loaded_before_on_more_threads_is_set_to_one():
    env = subprocess_env(ROOT / "src", OPENBLAS_CORETYPE="Haswell", OPENBLAS_NUM_THREADS="2")
    done = subprocess.run(
        [sys.executable, "-c", LOAD_FIRST_ON_TWO_THREADS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "1"


def test_without_the_package_the_portable_mode_says_what_to_install(monkeypatch):
    monkeypatch.setattr(gemm.importlib.util, "find_spec", lambda name: None)
    gemm._library.cache_clear()
    try:
        with pytest.raises(gemm.UserError, match="^scipy-openblas32 is not installed"):
            gemm.available()
    finally:
        gemm._library.cache_clear()


REFUSED = {
    "float64 a": (lambda: torch.ones(4, 3, dtype=torch.float64), lambda: torch.ones(3, 4), None),
    "half b": (lambda: torch.ones(4, 3), lambda: torch.ones(3, 4, dtype=torch.half), None),
    "3-d a": (lambda: torch.ones(1, 4, 3), lambda: torch.ones(3, 4), None),
    "k that does not fit": (lambda: torch.ones(4, 3), lambda: torch.ones(2, 4), None),
    "float64 out": (
        lambda: torch.ones(4, 3),
        lambda: torch.ones(3, 4),
        lambda: torch.empty(4, 4, dtype=torch.float64),
    ),
    "out of another shape": (
        lambda: torch.ones(4, 3),
        lambda: torch.ones(3, 4),
        lambda: torch.empty(4, 8),
    ),
    "out's rows overlapping": (
        lambda: torch.ones(2, 3),
        lambda: torch.ones(3, 6),
        lambda: torch.empty(40).as_strided((2, 6), (3, 1)),
    ),
    "out of one column, all one element": (
        lambda: torch.ones(5, 3),
        lambda: torch.ones(3, 1),
        lambda: torch.empty(1).as_strided((5, 1), (0, 1)),
    ),
    "out in columns": (
        lambda: torch.ones(4, 3),
        lambda: torch.ones(3, 5),
        lambda: torch.empty(5, 4).T,
    ),
    "a past 32-bit sizes": (
        lambda: torch.ones(1, 1).expand(2**31, 1),
        lambda: torch.ones(1, 1),
        None,
    ),
    "b with a stride past 32 bits": (
        lambda: torch.ones(1, 1),
        lambda: torch.ones(1).as_strided((1, 1), (2**31, 1)),
        None,
    ),
}


SAID = {
    "float64 a": "a must be a 2-d float32 CPU tensor, not 2-d torch.float64 on cpu",
    "half b": "b must be a 2-d float32 CPU tensor, not 2-d torch.float16 on cpu",
    "3-d a": "a must be a 2-d float32 CPU tensor, not 3-d torch.float32 on cpu",
    "k that does not fit": "shapes (4, 3) and (2, 4) do not fit",
    "float64 out": "out must be a 2-d float32 CPU tensor, not 2-d torch.float64 on cpu",
    "out of another shape": "out must be 4 x 4 with contiguous rows apart, not (4, 8) with",
    "out's rows overlapping": "out must be 2 x 6 with contiguous rows apart, not (2, 6) with",
    "out of one column, all one element": "out must be 5 x 1 with contiguous rows apart",
    "out in columns": "out must be 4 x 5 with contiguous rows apart, not (4, 5) with",
    "a past 32-bit sizes": "a's sizes and strides must fit in 32 bits",
    "b with a stride past 32 bits": "b's sizes and strides must fit in 32 bits",
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_it_cannot_compute_is_refused_before_any_call(case):
    a, b, out = (make() if make else None for make in REFUSED[case])
    with pytest.raises(ValueError, match=f"^gemm.mm: {re.escape(SAID[case])}"):
        gemm.mm(a, b, out=out)


def test_accumulating_needs_something_to_add_to():
    with pytest.raises(ValueError, match="^gemm.mm: accumulate needs out"):
        gemm.mm(torch.ones(2, 2), torch.ones(2, 2), accumulate=True)


def test_without_fixed_kernels_for_the_family_it_says_so(monkeypatch):
    monkeypatch.setattr(gemm, "_library", lambda: None)
    assert not gemm.available()
    with pytest.raises(ValueError, match=r"^gemm.mm: no fixed kernels for this CPU's family"):
        gemm.mm(torch.ones(2, 2), torch.ones(2, 2))


def test_a_mac_keeps_torchs_products(monkeypatch):
    """macOS's scipy-openblas32 build is not known to take kernels by name: the Mac family is
    left to torch rather than stopped by a kernel check."""
    monkeypatch.setattr(cpu, "family", lambda: "arm64 (Darwin)")
    gemm._library.cache_clear()
    try:
        assert gemm._library() is None and not gemm.available()
    finally:
        gemm._library.cache_clear()
