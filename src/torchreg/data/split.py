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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchreg.config import MAX_FEATURES, DataConfig
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


def row_hash(
    values: np.ndarray,
    seed: int,
    order: Sequence[int] | None = None,
    text: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """A uint64 per row of float64 `values` (its columns taken in `order`, default as they
    are) and `seed`. A column j in `text` holds category codes, which stand for the bits
    text[j][code] (a hash of the category's text) instead of their own."""
    order = range(values.shape[1]) if order is None else order
    text = text or {}
    with np.errstate(over="ignore"):
        h = np.full(len(values), np.uint64(stream_seed(seed, "split")), dtype=np.uint64)
        for position, j in enumerate(order):
            if j in text:
                bits = text[j][values[:, j].astype(np.int64)]
            else:
                bits = (values[:, j] + 0.0).view(np.uint64)  # a copy; -0.0 and 0.0 are one
            h = _mix(h ^ (bits + _GOLDEN * np.uint64(position + 1)))
    return h


def assign(
    values: np.ndarray,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    order: Sequence[int] | None = None,
    text: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """0 (train), 1 (val) or 2 (test) for each row: its hash as a uniform number in [0, 1)."""
    u = (row_hash(values, seed, order, text) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))


@dataclass
class Prepared:
    """What prepare found: the columns, the rows of each split, the rows dropped."""

    features: list[str]  # the model's inputs: a categorical column's one-hot columns
    target: str
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    dropped: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None
    target_mean: float | None = None
    target_std: float | None = None
    columns: list[str] = field(default_factory=list)  # the table's feature columns
    categories: dict[str, list[str]] = field(default_factory=dict)
    booleans: list[str] = field(default_factory=list)  # columns of true/false cells

    def record(self, source: str) -> dict:
        out = {
            "source": source,
            "features": self.features,
            "target": self.target,
            "rows": self.rows,
            "dropped_rows": self.dropped,
            **({"columns": self.columns, "categories": self.categories} if self.columns else {}),
            **({"booleans": self.booleans} if self.booleans else {}),
            "standardize": None,
        }
        if self.mean is not None:
            out["standardize"] = {
                "mean": self.mean,
                "std": self.std,
                "target_mean": self.target_mean,
                "target_std": self.target_std,
            }
        return out


def prepare_table(cfg: DataConfig, out: dict[str, Path], features_path: Path) -> Prepared:
    """Read the table, split it, encode and standardise it and write the three data files and
    features.json; nothing is replaced unless every step succeeded."""
    table = Table(cfg.table)
    table.settle()
    t = cfg.table
    kinds = [f"{c} (categorical)" if c in table.categorical else c for c in table.features]
    log.info(
        "%s: target %s, %d feature columns: %s",
        table.name,
        t.target,
        len(table.features),
        ", ".join(kinds),
    )
    if table.ignored:
        log.info("%s: not used: %s", table.name, ", ".join(table.ignored))
    result = Prepared(table.features, t.target)
    result.booleans = table.booleans
    # Hashed in the order of the columns' names: listing the features in another order
    # leaves every row in its split.
    order = np.argsort(np.array([*table.features, t.target], dtype=object), kind="stable")
    with contextlib.ExitStack() as stack:
        raw = {s: stack.enter_context(_scratch(out[s])) for s in SPLITS}
        files = {s: stack.enter_context(raw[s].open("wb")) for s in SPLITS}
        for first_row, block in table.batches():
            block = _handle_missing(block, first_row, table, t.missing, result)
            codes = assign(
                block, cfg.seed, t.val_fraction, t.test_fraction, order, table.hash_bits()
            )
            # One gather for the three splits, each keeping the table's order (a stable sort).
            grouped = block[np.argsort(codes, kind="stable")]
            ends = np.cumsum(np.bincount(codes, minlength=len(SPLITS)))
            for split, part in zip(SPLITS, np.split(grouped, ends[:-1]), strict=True):
                part.tofile(files[split])
                result.rows[split] += len(part)
        for f in files.values():
            f.close()
        _check_counts(result, table.name, t.missing)
        encode = OneHot(table, raw["train"])
        if table.categorical:
            result.features, result.columns = encode.names, list(table.features)
            result.categories = encode.categories
            for name, texts in encode.categories.items():
                log.info("%s: %s one-hot: %s", table.name, name, ", ".join(texts))
        width = len(result.features) + 1
        if width - 1 > MAX_FEATURES:
            many = max(encode.categories.items(), key=lambda c: len(c[1]), default=("", []))
            raise DataError(
                f"{table.name}: {width - 1} model inputs, over the {MAX_FEATURES} allowed (column "
                f"{shown(many[0], 40)} alone has {len(many[1])} categories): leave such a "
                "column out (data.table.exclude), or name fewer in data.table.categorical"
            )
        if t.standardize:
            mean, std = _moments(lambda: encode.chunks(raw["train"]), width)
            result.mean, result.std = mean[:-1], std[:-1]
            result.target_mean, result.target_std = mean[-1], std[-1]
            if result.target_std == 0:
                raise DataError(
                    f"{table.name}: the target {shown(t.target, 40)} is constant on the "
                    f"training split (every value {result.target_mean:g}): there is nothing to "
                    "predict"
                )
            constant = [n for n, s in zip(result.features, result.std, strict=True) if s == 0]
            if constant and constant[0] in encode.column_of:
                column = encode.column_of[constant[0]]
                raise DataError(
                    f"{table.name}: column {shown(column, 40)} has one category on the training "
                    f"split ({shown(encode.categories[column][0], 40)}): it cannot tell rows "
                    "apart; leave it out (data.table.exclude, or name the features in "
                    "data.table.features)"
                )
            if constant:
                raise DataError(
                    f"{table.name}: feature {shown(constant[0], 40)} is constant on the training "
                    f"split (its std is 0): leave it out of data.table.features, or set "
                    "data.table.standardize: false"
                )
        scale = None
        if result.mean is not None:
            scale = ([*result.mean, result.target_mean], [*result.std, result.target_std])
        for split in SPLITS:
            blocks = _standardized(encode.chunks(raw[split], split), scale)
            write_rows(out[split], result.rows[split], width, blocks)
            unseen = encode.unseen.pop(split, 0)
            if unseen:
                log.info(
                    "%s: %d %s rows have a category the training split lacks (its one-hot "
                    "columns are all 0)",
                    table.name,
                    unseen,
                    split,
                )
    write_json(features_path, result.record("table"))
    if result.dropped:
        log.info("dropped %d rows with a missing value (data.table.missing: drop)", result.dropped)
    return result


class OneHot:
    """A table's rows (features, categories as codes, then the target) to the model's inputs:
    each categorical column becomes one 0/1 column per category of the training split, sorted
    by its text; a category the training split lacks gets 0 in all of them."""

    def __init__(self, table: Table, train: Path) -> None:
        self.columns = len(table.features) + 1
        self.names: list[str] = []
        self.categories: dict[str, list[str]] = {}
        self.lookup: dict[int, np.ndarray] = {}  # position -> code -> one-hot column or -1
        self.unseen: dict[str, int] = {}
        self.column_of: dict[str, str] = {}  # a one-hot input's categorical column
        present = {j: set() for j, c in enumerate(table.features) if c in table.categorical}
        if present:
            for chunk in _chunks(train, self.columns):
                for j, codes in present.items():
                    codes.update(np.unique(chunk[:, j]).astype(np.int64).tolist())
        for j, name in enumerate(table.features):
            if j not in present:
                self.names.append(name)
                continue
            texts = sorted(table.texts[name][code] for code in present[j])
            self.categories[name] = texts
            lookup = np.full(len(table.texts[name]), -1, dtype=np.int64)
            for k, text in enumerate(texts):
                lookup[table.codes[name][text]] = k
            self.lookup[j] = lookup
            self.names += [f"{name}={text}" for text in texts]
            self.column_of |= {f"{name}={text}": name for text in texts}

    def chunks(self, path: Path, split: str = "") -> Iterator[np.ndarray]:
        """The rows of a scratch file, CHUNK_ROWS at a time, as the model's inputs; the rows
        of a category the training split lacks are counted in unseen[split]."""
        for chunk in _chunks(path, self.columns):
            yield self(chunk, split)

    def __call__(self, chunk: np.ndarray, split: str = "") -> np.ndarray:
        if not self.lookup:
            return chunk
        parts = []
        for j in range(self.columns):
            if j not in self.lookup:
                parts.append(chunk[:, j : j + 1])
                continue
            k = self.lookup[j][chunk[:, j].astype(np.int64)]
            hot = np.zeros((len(chunk), int(self.lookup[j].max()) + 1))
            seen = k >= 0
            hot[np.flatnonzero(seen), k[seen]] = 1.0
            if not seen.all():
                self.unseen[split] = self.unseen.get(split, 0) + int((~seen).sum())
            parts.append(hot)
        return np.concatenate(parts, axis=1)


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


def _moments(
    chunks: Callable[[], Iterable[np.ndarray]], columns: int
) -> tuple[list[float], list[float]]:
    """Each column's mean and (population) standard deviation, the target's last, two passes
    in float64: the chunks' sums (each numpy's pairwise sum of one contiguous column) added in
    order. A column whose values are all equal has std 0 exactly (its mean may be off by a
    rounding: 0.1 * 3 / 3 is not 0.1, and the std of what is left would not be 0)."""
    n, total = 0, np.zeros(columns)
    low, high = np.full(columns, np.inf), np.full(columns, -np.inf)
    for chunk in chunks():
        n += len(chunk)
        total += [np.add.reduce(np.ascontiguousarray(chunk[:, j])) for j in range(columns)]
        low = np.minimum(low, chunk.min(axis=0))
        high = np.maximum(high, chunk.max(axis=0))
    mean = total / n
    squares = np.zeros(columns)
    for chunk in chunks():
        centred = chunk - mean
        squares += [np.add.reduce(np.ascontiguousarray(centred[:, j] ** 2)) for j in range(columns)]
    std = [  # math.sqrt: the exact instruction
        0.0 if lo == hi else math.sqrt(s / n) for s, lo, hi in zip(squares, low, high, strict=True)
    ]
    return mean.tolist(), std


def _standardized(
    chunks: Iterable[np.ndarray], scale: tuple[list[float], list[float]] | None
) -> Iterator[np.ndarray]:
    """The rows, each column (the target too) centred and scaled by `scale` (means, stds) in
    float64, or as they are."""
    for chunk in chunks:
        if scale is not None:
            chunk = (chunk - np.array(scale[0])) / np.array(scale[1])
        yield chunk
