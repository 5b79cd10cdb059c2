"""sin and exp in float64 from steps that every CPU rounds alike.

NumPy's own `np.sin` and `np.exp` pick their code by the CPU they run on (Intel's SVML on
AVX-512, its own SIMD code on AVX2, the C library elsewhere), and these round the last bit
differently: the same data would get other bytes on another CPU. Here each function is a fixed
sequence of additions, multiplications, `rint` and `ldexp`, which IEEE 754 defines exactly and
NumPy applies one element at a time, so the result does not depend on the CPU. The polynomials
are fdlibm's (sin, cos) and a Taylor series (exp); both are within a few units in the last place.
"""

from __future__ import annotations

import numpy as np

# pi/2 in three parts, the first two with trailing zero bits, so k * part is exact for |k| < 2^20
# (fdlibm's pio2_1, pio2_2, pio2_2t).
PIO2 = (1.57079632673412561417e00, 6.07710050630396597660e-11, 2.02226624879595063154e-21)
SIN = (
    -1.66666666666666324348e-01,
    8.33333333332248946124e-03,
    -1.98412698298579493134e-04,
    2.75573137070700676789e-06,
    -2.50507602534068634195e-08,
    1.58969099521155010221e-10,
)
COS = (
    4.16666666666666019037e-02,
    -1.38888888888741095749e-03,
    2.48015872894767294178e-05,
    -2.75573143513906633035e-07,
    2.08757232129817482790e-09,
    -1.13596475577881948265e-11,
)
SIN_LIMIT = 1e5  # |x| below which the reduction above is exact (k < 2^20)
LN2 = (6.93147180369123816490e-01, 1.90821492927058770002e-10)  # fdlibm's ln2_hi, ln2_lo
EXP_TERMS = 14  # Taylor terms of e^r for |r| <= ln(2) / 2: error under 1e-17


def _horner(z: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    out = np.full_like(z, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * z + c
    return out


def sin(x: np.ndarray) -> np.ndarray:
    """sin(x) for float64 x with |x| < SIN_LIMIT (ValueError beyond)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size and not np.abs(x).max() < SIN_LIMIT:
        raise ValueError(f"fixedmath.sin needs |x| < {SIN_LIMIT:g}")
    k = np.rint(x * (2 / np.pi))
    r = ((x - k * PIO2[0]) - k * PIO2[1]) - k * PIO2[2]
    z = r * r
    sin_r = r + (r * z) * _horner(z, SIN)
    cos_r = (1.0 - 0.5 * z) + (z * z) * _horner(z, COS)
    quadrant = k.astype(np.int64) & 3
    return np.choose(quadrant, [sin_r, cos_r, -sin_r, -cos_r])


def exp(x: np.ndarray) -> np.ndarray:
    """e**x for float64 x (0 below -745, inf above 709.78, as the C library gives)."""
    x = np.asarray(x, dtype=np.float64)
    clipped = np.clip(x, -746.0, 710.0)
    k = np.rint(clipped / LN2[0])
    r = (clipped - k * LN2[0]) - k * LN2[1]
    series = np.ones_like(r)
    for n in range(EXP_TERMS, 0, -1):
        series = 1.0 + series * r / n
    with np.errstate(over="ignore", under="ignore"):
        return np.ldexp(series, k.astype(np.int64))
