"""The tutorial's synthetic data: y = f(x) + noise, x ~ N(0, 1), drawn in fixed blocks.

Each split is written in blocks of CHUNK_ROWS rows, each drawn from its own generator seeded by
(data.seed, split, block), so memory stays flat however many rows are asked for and the bytes
depend only on the params. The splits are drawn independently: adding the validation split
left the train and test files as they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from torchreg import fixedmath
from torchreg.config import DataConfig
from torchreg.data.datafile import CHUNK_ROWS, write_rows
from torchreg.errors import DataError


def stream_seed(seed: int, *stream: object) -> int:
    """A 63-bit seed for one named stream of one seed; streams never share draws."""
    digest = hashlib.sha256("/".join(map(str, (seed, *stream))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# y = f(x) before noise; `linear` is the tutorial's x @ w + b, the others need a hidden layer.
TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "quadratic": lambda x: x * x,
    "sine": lambda x: fixedmath.sin(2 * x),  # not np.sin: its last bit depends on the CPU
}


def true_function(cfg: DataConfig, x: np.ndarray) -> np.ndarray:
    """The noise-free target, in float64 with an explicit sum so no BLAS threading is involved."""
    fx = TARGETS[cfg.target](np.asarray(x, dtype=np.float64))
    return (fx * np.asarray(cfg.true_w)).sum(axis=1) + cfg.true_b


def make_block(cfg: DataConfig, split: str, block: int, rows: int) -> np.ndarray:
    """Rows of one block as a (rows, features + 1) float32 array."""
    rng = np.random.Generator(np.random.PCG64(stream_seed(cfg.seed, split, block)))
    out = np.empty((rows, cfg.n_features + 1), dtype=np.float32)
    out[:, :-1] = rng.standard_normal((rows, cfg.n_features), dtype=np.float32)
    noise = rng.standard_normal(rows) * cfg.noise_std
    with np.errstate(over="ignore", invalid="ignore"):
        out[:, -1] = true_function(cfg, out[:, :-1]) + noise
    if not np.isfinite(out[:, -1]).all():
        raise DataError(
            "data: y overflows float32 (beyond +-3.4e38) with these data.true_w, data.true_b "
            "and data.noise_std: use smaller values"
        )
    return out


def write_dataset(path: str | Path, cfg: DataConfig, split: str, rows: int) -> None:
    """Draw one split, a block at a time, into a data file."""
    blocks = (
        make_block(cfg, split, block, min(CHUNK_ROWS, rows - start))
        for block, start in enumerate(range(0, rows, CHUNK_ROWS))
    )
    write_rows(path, rows, cfg.n_features + 1, blocks)
