"""Synthetic data y = f(x) + noise, and the .npy files that hold it.

A data file is one float32 array of shape (rows, features + 1): the features, then y. It is
written in fixed blocks of BLOCK_ROWS rows, each drawn from its own generator seeded by
(data.seed, split, block), so memory stays flat however many rows are asked for and the bytes
depend only on the params. Files are read a range of rows at a time (DataFile), so memory
does not grow with the number of rows.

This module uses NumPy, not torch: the generate stage does not need torch, and importing it
would cost the stage most of its run time. Callers wrap the arrays with torch.from_numpy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from torchreg.config import DataConfig
from torchreg.errors import DataError
from torchreg.io import atomic_path, open_input

BLOCK_ROWS = 65536
GENERATE_HINT = "run the generate stage first (dvc repro generate)"

# y = f(x) before noise; `linear` is the tutorial's x @ w + b, the others need a hidden layer.
TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "quadratic": lambda x: x * x,
    "sine": lambda x: np.sin(2 * x),
}


def stream_seed(seed: int, *stream: object) -> int:
    """A 63-bit seed for one named stream of one seed; streams never share draws."""
    digest = hashlib.sha256("/".join(map(str, (seed, *stream))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
    out[:, -1] = true_function(cfg, out[:, :-1]) + noise
    return out


def nbytes(rows: int, n_features: int) -> int:
    return rows * (n_features + 1) * 4


def check_disk(folder: Path, needed: int) -> None:
    """Refuse before writing anything if the data cannot fit."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(
            f"the data needs {needed / 1e9:.1f} GB but {folder}/ has {free / 1e9:.1f} GB free: "
            "lower data.n_train / data.n_test"
        )


def write_dataset(path: str | Path, cfg: DataConfig, split: str, rows: int) -> None:
    """Write the .npy header, then the blocks one after another: memory stays at one block."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, cfg.n_features + 1)}
        np.lib.format.write_array_header_1_0(f, header)
        for block, start in enumerate(range(0, rows, BLOCK_ROWS)):
            make_block(cfg, split, block, min(BLOCK_ROWS, rows - start)).tofile(f)


class DataFile:
    """A data file, checked on open and read in row ranges: a range is read into memory only
    when asked for, so a pass over a file larger than memory keeps memory flat."""

    def __init__(self, path: str | Path, missing_hint: str | None = GENERATE_HINT) -> None:
        """`missing_hint`: the advice when the file does not exist (the generate stage's advice
        fits only the paths that stage writes)."""
        self.path = Path(path)
        try:
            with open_input(self.path) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
                self._offset = f.tell()
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            advice = f": {missing_hint}" if missing_hint else ""
            raise DataError(f"{self.path} not found{advice}") from None
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{self.path}: not a valid data file ({exc})") from None
        if dtype != np.float32 or len(shape) != 2:
            raise DataError(
                f"{self.path}: expected a 2-D float32 array, got {dtype} array of shape {shape}"
            )
        if shape[0] < 1 or shape[1] < 2 or fortran_order:
            raise DataError(f"{self.path}: expected at least 1 row and 2 columns, got {shape}")
        self.rows, self.columns = shape
        if size < self._offset + self.rows * self.columns * 4:
            raise DataError(
                f"{self.path}: not a valid data file (shorter than its header says: "
                f"{size} bytes, the header needs {self._offset + self.rows * self.columns * 4})"
            )

    @property
    def n_features(self) -> int:
        return self.columns - 1

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) as a new (rows, features + 1) float32 array."""
        stop = self.rows if stop is None else min(stop, self.rows)
        out = np.empty((max(stop - start, 0), self.columns), dtype=np.float32)
        with open_input(self.path) as f:
            f.seek(self._offset + start * self.columns * 4)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise DataError(f"{self.path}: file is shorter than its header says")
        return out

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, rows):
            yield self.read(start, start + rows)
