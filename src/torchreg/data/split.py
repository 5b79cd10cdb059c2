"""A table's rows into train, validation and test splits, and the features' standardisation.

A row's split is decided by a hash of the row itself (the float64 values of its features and
target, in the order of their column names) and data.seed, never by its position: rows appended
to a table leave every old row in its split, and identical rows always share one split (a
duplicated row can never be both trained on and tested on). The hash is integer arithmetic
(splitmix64's mixer), the same on every CPU.

The splits are written as data files (datafile.py). With data.table.standardize, each feature
is centred and scaled by its mean and standard deviation on the training split only (float64,
summed in a fixed order of fixed chunks: the same bits on every CPU); the statistics go to
data/features.json, and from there into the model file, which applies them in predict.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchreg.config import DataConfig
from torchreg.data.datafile import CHUNK_ROWS, write_rows
from torchreg.data.synthetic import stream_seed
from torchreg.data.table import MAX_NAMED_ROWS, Table
from torchreg.errors import DataError, shown
from torchreg.files import TEMP_SUFFIX, remove_stale_temps, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit moves every output bit."""
    h = (h ^ (h >> np.uint64(30))) * _MIX[0]
    h = (h ^ (h >> np.uint64(27))) * _MIX[1]
    return h ^ (h >> np.uint64(31))


def row_hash(values: np.ndarray, seed: int, order: Sequence[int] | None = None) -> np.ndarray:
    """A uint64 per row of float64 `values` (its columns taken in `order`, default as they
    are) and `seed`."""
    order = range(values.shape[1]) if order is None else order
    with np.errstate(over="ignore"):
        h = np.full(len(values), np.uint64(stream_seed(seed, "split")), dtype=np.uint64)
        for position, j in enumerate(order):
            column = values[:, j] + 0.0  # a contiguous copy; -0.0 and 0.0 are one value
            h = _mix(h ^ (column.view(np.uint64) + _GOLDEN * np.uint64(position + 1)))
    return h


def assign(
    values: np.ndarray,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    order: Sequence[int] | None = None,
) -> np.ndarray:
    """0 (train), 1 (val) or 2 (test) for each row: its hash as a uniform number in [0, 1)."""
    u = (row_hash(values, seed, order) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))


@dataclass
class Prepared:
    """What prepare found: the columns, the rows of each split, the rows dropped."""

    features: list[str]
    target: str
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    dropped: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None

    def record(self, source: str) -> dict:
        out = {
            "source": source,
            "features": self.features,
            "target": self.target,
            "rows": self.rows,
            "dropped_rows": self.dropped,
            "standardize": None,
        }
        if self.mean is not None:
            out["standardize"] = {"mean": self.mean, "std": self.std}
        return out


def prepare_table(cfg: DataConfig, out: dict[str, Path], features_path: Path) -> Prepared:
    """Read the table, split it, standardise it and write the three data files and
    features.json; nothing is replaced unless every step succeeded."""
    table = Table(cfg.table)
    t = cfg.table
    log.info(
        "%s: target %s, %d features (%s)%s",
        table.name,
        t.target,
        len(table.features),
        shown(table.features, 120),
        f"; ignored: {shown(table.ignored, 120)}" if table.ignored else "",
    )
    result = Prepared(table.features, t.target)
    # Hashed in the order of the columns' names: listing the features in another order
    # leaves every row in its split.
    order = np.argsort(np.array([*table.features, t.target], dtype=object), kind="stable")
    with contextlib.ExitStack() as stack:
        raw = {s: stack.enter_context(_scratch(out[s])) for s in SPLITS}
        files = {s: stack.enter_context(raw[s].open("wb")) for s in SPLITS}
        for first_row, block in table.batches():
            block = _handle_missing(block, first_row, table, t.missing, result)
            codes = assign(block, cfg.seed, t.val_fraction, t.test_fraction, order)
            # One gather for the three splits, each keeping the table's order (a stable sort).
            grouped = block[np.argsort(codes, kind="stable")]
            ends = np.cumsum(np.bincount(codes, minlength=len(SPLITS)))
            for split, part in zip(SPLITS, np.split(grouped, ends[:-1]), strict=True):
                part.tofile(files[split])
                result.rows[split] += len(part)
        for f in files.values():
            f.close()
        _check_counts(result, table.name, t.missing)
        columns = len(table.features) + 1
        if t.standardize:
            result.mean, result.std = _moments(raw["train"], columns)
            constant = [n for n, s in zip(table.features, result.std, strict=True) if s == 0]
            if constant:
                raise DataError(
                    f"{table.name}: feature {shown(constant[0], 40)} is constant on the training "
                    f"split (its std is 0): leave it out of data.table.features, or set "
                    "data.table.standardize: false"
                )
        for split in SPLITS:
            blocks = _standardized(raw[split], columns, result.mean, result.std)
            write_rows(out[split], result.rows[split], columns, blocks)
    write_json(features_path, result.record("table"))
    if result.dropped:
        log.info("dropped %d rows with a missing value (data.table.missing: drop)", result.dropped)
    return result


def _handle_missing(
    block: np.ndarray, first_row: int, table: Table, missing: str, result: Prepared
) -> np.ndarray:
    absent = np.isnan(block)
    if not absent.any():
        return block
    if missing == "drop":
        keep = ~absent.any(axis=1)
        result.dropped += int((~keep).sum())
        return block[keep]
    j = int(np.argwhere(absent)[0][1])  # the column of the first missing cell, row by row
    rows = (np.flatnonzero(absent[:, j])[:MAX_NAMED_ROWS] + first_row).tolist()
    name = [*table.features, table.cfg.target][j]
    more = " ..." if absent[:, j].sum() > MAX_NAMED_ROWS else ""
    raise DataError(
        f"{table.name}: column {shown(name, 40)} has missing values (rows "
        f"{', '.join(map(str, rows))}{more}): set data.table.missing: drop to leave such rows "
        "out, or fill them in"
    )


def _check_counts(result: Prepared, name: str, missing: str) -> None:
    need = {"train": 2, "val": 1, "test": 1}  # 2: a standard deviation needs two rows
    short = [s for s in SPLITS if result.rows[s] < need[s]]
    if short:
        counts = ", ".join(f"{s} {result.rows[s]}" for s in SPLITS)
        dropped = f" after dropping {result.dropped} with missing values" if result.dropped else ""
        raise DataError(
            f"{name}: too few rows for the splits ({counts}{dropped}): the training split "
            "needs 2 rows and the others 1; a table needs more rows, or other "
            "data.table.val_fraction / test_fraction"
        )


@contextlib.contextmanager
def _scratch(final: Path) -> Iterator[Path]:
    """A scratch file next to an output (the same disk), locked as `atomic_path` locks its
    temporary files (so no sweep takes it while it is used, and the next run's sweep takes
    what a killed run left), and removed whatever happens."""
    remove_stale_temps(final)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=TEMP_SUFFIX)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
        os.close(fd)


def _chunks(path: Path, columns: int) -> Iterator[np.ndarray]:
    """A scratch file's float64 rows, CHUNK_ROWS at a time."""
    with path.open("rb") as f:
        while True:
            chunk = np.fromfile(f, dtype=np.float64, count=CHUNK_ROWS * columns)
            if not len(chunk):
                return
            yield chunk.reshape(-1, columns)


def _moments(path: Path, columns: int) -> tuple[list[float], list[float]]:
    """Each feature's mean and (population) standard deviation, two passes in float64: the
    chunks' sums (each numpy's pairwise sum of one contiguous column) added in order. A feature
    whose values are all equal has std 0 exactly (its mean may be off by a rounding: 0.1 * 3
    / 3 is not 0.1, and the std of what is left would not be 0)."""
    features = columns - 1
    n, total = 0, np.zeros(features)
    low, high = np.full(features, np.inf), np.full(features, -np.inf)
    for chunk in _chunks(path, columns):
        n += len(chunk)
        total += [np.add.reduce(np.ascontiguousarray(chunk[:, j])) for j in range(features)]
        low = np.minimum(low, chunk[:, :features].min(axis=0))
        high = np.maximum(high, chunk[:, :features].max(axis=0))
    mean = total / n
    squares = np.zeros(features)
    for chunk in _chunks(path, columns):
        centred = chunk[:, :features] - mean
        squares += [
            np.add.reduce(np.ascontiguousarray(centred[:, j] ** 2)) for j in range(features)
        ]
    std = [  # math.sqrt: the exact instruction
        0.0 if lo == hi else math.sqrt(s / n) for s, lo, hi in zip(squares, low, high, strict=True)
    ]
    return mean.tolist(), std


def _standardized(
    path: Path, columns: int, mean: list[float] | None, std: list[float] | None
) -> Iterator[np.ndarray]:
    for chunk in _chunks(path, columns):
        if mean is not None:
            chunk[:, :-1] = (chunk[:, :-1] - np.array(mean)) / np.array(std)
        yield chunk
