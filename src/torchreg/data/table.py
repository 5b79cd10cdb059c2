"""A user's table (CSV or Parquet) read a batch at a time with pyarrow, as float64 columns.

pyarrow's streaming readers keep memory flat whatever the file's size: a CSV is parsed a block
of BLOCK_BYTES at a time (a row longer than that is refused), a Parquet file a batch of
CHUNK_ROWS rows at a time. Text is turned into numbers by Arrow's parser, which rounds
correctly (the same float64 on every CPU).

Text columns become features one-hot encoded (data.table.categorical, or chosen when
data.table.features is empty: a text column with 2 to data.table.max_categories distinct
values, and fewer than half as many as the table's rows). Here a category is read as a code:
the position of its text among the texts the column has shown so far, in the order of the
file; the split turns codes into one-hot columns of the training split's categories. A boolean
column (true/false cells) is a number, 1 or 0.

Rows are numbered as a person reading the file would: in a CSV the header is row 1 and the
first data row is row 2 (a quoted cell spanning lines still counts as one row); in a Parquet
file the first row is row 1. Every problem names the file, the column and the row.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from torchreg.config import TableConfig
from torchreg.data.datafile import CHUNK_ROWS
from torchreg.errors import DataError, first_line, shown
from torchreg.files import open_input

# A CSV block: rows are parsed this many bytes at a time, and no row may be longer. Arrow reads
# up to a few dozen blocks ahead, so this also sets the reader's memory: 16 MiB blocks took
# 770 MiB on a 1 GB file, 1 MiB blocks 170 MiB, at the same speed (BENCHMARKS.md).
BLOCK_BYTES = 1 << 20
PARQUET = (".parquet", ".pq")
CSV = (".csv", ".tsv", ".txt")
MAX_NAMED_ROWS = 3  # row numbers named in one message
FLOAT32_MAX = float(np.finfo(np.float32).max)
NOT_UTF8 = "save the table as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


def is_numeric(kind: pa.DataType) -> bool:
    """Numbers, and booleans (1 and 0)."""
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
    )


def is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def category_text(value: float | int | bool) -> str:
    """The category a number stands for, the same from any file: its shortest float64 text,
    without a trailing `.0` (1, 1.0 and 01 are `1`; 3.5 is `3.5`). predict reads a number
    in a categorical column so too."""
    number = float(value)
    text = repr(number)
    return text[:-2] if text.endswith(".0") else text


def text_hash(text: str) -> int:
    """A category's part in a row's hash (split.row_hash): 64 bits of BLAKE2b of its UTF-8."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Table:
    """The table a `data.table` section names: its columns, the features chosen from them, and
    its rows as float64 arrays (features, then the target; NaN where a cell is missing)."""

    def __init__(self, cfg: TableConfig, root: Path = Path()) -> None:
        self.cfg, self.path = cfg, root / cfg.path
        self.name = cfg.path
        suffix = self.path.suffix.lower()
        if suffix not in PARQUET + CSV:
            raise DataError(
                f"{self.name}: data.table.path must be a CSV ({', '.join(CSV)}) or a Parquet "
                f"({', '.join(PARQUET)}) file"
            )
        self.parquet = suffix in PARQUET
        self.header_rows = 0 if self.parquet else 1
        with self._open() as f:
            self.identity = _identity(os.fstat(f.fileno()))
            if not self.parquet:
                self._check_encoding(f.read(4096))
                f.seek(0)
            schema = self._schema(f)
        self.columns = list(schema.names)
        odd = [c for c in self.columns if not c.strip() or is_number(c)]
        if odd:
            raise DataError(
                f"{self.name}: column name {shown(odd[0], 40)} is empty or a number: predict "
                "finds columns by name in a header, and could not tell such a header from a "
                "row; name every column"
            )
        twice = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if twice:
            where = [i + 1 for i, c in enumerate(self.columns) if c == twice[0]]
            raise DataError(
                f"{self.name}: column name {shown(twice[0], 40)} appears {len(where)} times "
                f"(columns {', '.join(map(str, where))}): every column needs its own name"
            )
        self._check_named(cfg.target, "data.table.target")
        for name in cfg.features:
            self._check_named(name, "data.table.features")
        if not self.parquet and all(pa.types.is_null(kind) for kind in schema.types):
            raise DataError(  # a header alone: no column has a type
                f"{self.name}: no values below its header row (columns: {shown(self.columns, 200)})"
            )
        for name in cfg.categorical:
            self._check_named(name, "data.table.categorical")
        for name in cfg.exclude:
            self._check_named(name, "data.table.exclude")
        left_out = {cfg.target, *cfg.exclude}
        self.schema = schema
        # Numbers named in data.table.categorical are read as text too (a code such as a
        # postcode); a text column named in data.table.features alone is read as numbers
        # (its first cell that is not one is named).
        text = {f.name for f in schema if is_text(f.type)}
        if cfg.features:
            self.features = list(cfg.features)
            self.categorical = set(cfg.categorical)
            self.candidates: list[str] = []
        else:
            self.categorical = set(cfg.categorical)
            self.candidates = [  # settled by settle(): at most max_categories distinct values
                f.name
                for f in schema
                if f.name not in left_out and f.name in text and f.name not in self.categorical
            ]
            self.features = [
                f.name
                for f in schema
                if f.name not in left_out
                and (is_numeric(f.type) or f.name in self.categorical or f.name in self.candidates)
            ]
            if not self.features:
                raise DataError(
                    f"{self.name}: no numeric or text column besides the target "
                    f"{shown(cfg.target, 40)} (columns: {shown(self.columns, 200)}): name the "
                    "features in data.table.features"
                )
        self.ignored = [c for c in self.columns if c not in {*self.features, cfg.target}]
        for name in [*self.features, cfg.target]:
            kind = schema.field(name).type
            if name in self.categorical or name in self.candidates:
                continue
            if self.parquet and pa.types.is_null(kind):
                continue
            if name == cfg.target and is_text(kind) and not self.parquet:
                continue  # a CSV's cells are read as numbers: the first bad cell is named
            if not is_numeric(kind) and (self.parquet or name == cfg.target):
                raise DataError(
                    f"{self.name}: column {shown(name, 40)} holds {kind}, not numbers: "
                    + (
                        "the target must be a numeric column"
                        if name == cfg.target
                        else "name it in data.table.categorical to one-hot encode it"
                    )
                )
        self.booleans = [
            c
            for c in self.features
            if c not in self.categorical and pa.types.is_boolean(schema.field(c).type)
        ]
        # A categorical column's texts by code, each text's code and each code's hash.
        self.texts: dict[str, list[str]] = {c: [] for c in self.categorical}
        self.codes: dict[str, dict[str, int]] = {c: {} for c in self.categorical}
        self.hashes: dict[str, list[int]] = {c: [] for c in self.categorical}

    @property
    def numeric_features(self) -> list[str]:
        """The features that are numbers (booleans too), in order: what plot.feature counts.
        Known from the header alone (a text column is never one)."""
        return [
            c
            for c in self.features
            if c not in self.categorical
            and c not in self.candidates
            and not is_text(self.schema.field(c).type)
        ]

    def settle(self) -> None:
        """Decide the candidate text columns (data.table.features empty): a column is a
        feature when it has at least 2 and at most data.table.max_categories distinct values,
        and fewer than half as many as the table has rows; the others are ignored. Reads those
        columns once (a column past the limit in the first block is decided without reading
        on)."""
        if not self.candidates:
            return
        limit, rows = self.cfg.max_categories, 0
        seen: dict[str, set[str]] = {c: set() for c in self.candidates}
        with self._open() as f, _arrow_file(f) as source:
            for batch in self._checked(self._read_csv_or_parquet(source, self.candidates)):
                rows += batch.num_rows
                for name in list(seen):
                    values = pc.unique(batch.column(name).cast(pa.string())).drop_null()
                    seen[name].update(v for v in values.to_pylist() if v)
                    if len(seen[name]) > limit:
                        del seen[name]
                if not seen:
                    break
        chosen = {c for c, values in seen.items() if len(values) >= 2 and 2 * len(values) < rows}
        self.categorical |= chosen
        self.features = [c for c in self.features if c not in self.candidates or c in chosen]
        self.ignored = [c for c in self.columns if c not in {*self.features, self.cfg.target}]
        self.texts |= {c: [] for c in chosen}
        self.codes |= {c: {} for c in chosen}
        self.hashes |= {c: [] for c in chosen}
        self.candidates = []
        self.booleans = [c for c in self.booleans if c in self.features]
        if not self.features:
            raise DataError(
                f"{self.name}: no numeric column, and no text column with at most "
                f"{limit} distinct values (data.table.max_categories), besides the target "
                f"{shown(self.cfg.target, 40)}: name the features in data.table.features"
            )

    def _checked(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """`batches`, with a problem past the first block (a row of another length, a cell
        that is not UTF-8) told in one line, as the main read tells it."""
        try:
            yield from batches
        except (pa.ArrowException, OSError) as exc:
            if "invalid UTF8" in str(exc) or "UTF-8" in str(exc):
                raise DataError(
                    f"{self.name}: not UTF-8 text ({first_line(exc)}): {NOT_UTF8}"
                ) from None
            if self.parquet:
                raise DataError(f"{self.name}: cannot be read ({first_line(exc)})") from None
            raise self._csv_error(exc) from None

    def _read_csv_or_parquet(
        self, source: pa.NativeFile, columns: list[str]
    ) -> Iterator[pa.RecordBatch]:
        if self.parquet:
            parquet = pq.ParquetFile(source)
            for group in range(parquet.num_row_groups):
                yield from parquet.iter_batches(
                    batch_size=CHUNK_ROWS, columns=columns, row_groups=[group]
                )
            return
        options = self._csv_options()
        options["convert_options"] = pcsv.ConvertOptions(
            include_columns=columns,
            column_types=dict.fromkeys(columns, pa.string()),
            strings_can_be_null=True,
        )
        yield from pcsv.open_csv(source, **options)

    def _open(self) -> BinaryIO:
        try:
            return open_input(self.path)
        except FileNotFoundError:
            if Path(f"{self.path}.dvc").exists():
                raise DataError(
                    f"{self.name} not found: it is tracked by DVC ({self.name}.dvc) but not "
                    f"in this workspace: `dvc pull {self.name}` fetches it (or `dvc exp run "
                    "--pull`)"
                ) from None
            raise DataError(
                f"{self.name} not found: data.table.path names the table to read (track it "
                f"with `dvc add {self.name}`)"
            ) from None
        except OSError as exc:
            raise DataError(f"{self.name}: cannot be read ({exc.strerror or exc})") from None

    def _schema(self, f: BinaryIO) -> pa.Schema:
        with _arrow_file(f) as source:
            if self.parquet:
                try:
                    return pq.ParquetFile(source).schema_arrow
                except (pa.ArrowException, OSError) as exc:
                    raise DataError(
                        f"{self.name}: not a Parquet file ({first_line(exc)})"
                    ) from None
            try:  # the column types are inferred from the first block
                schema = pcsv.open_csv(source, **self._csv_options()).schema
                schema.names  # noqa: B018 - decoded here: a header that is not UTF-8 fails now
                return schema
            except pa.ArrowInvalid as exc:
                raise self._csv_error(exc) from None
            except UnicodeDecodeError:
                raise DataError(f"{self.name}: its header is not UTF-8 text: {NOT_UTF8}") from None

    def _check_encoding(self, start: bytes) -> None:
        """Refuse, by their first bytes, the files a CSV reader would misread: compressed
        ones and UTF-16/32 text (a byte-order mark, or NUL bytes between the characters)."""
        if start.startswith(b"\x1f\x8b"):
            raise DataError(
                f"{self.name}: gzip-compressed, not a CSV: decompress it (gunzip -k "
                f"{self.name}) and name the .csv it gives, or save the table as Parquet"
            )
        if start.startswith((b"PK\x03\x04", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ")):
            raise DataError(
                f"{self.name}: a compressed archive (zip, zstd, bzip2 or xz), not a CSV: "
                "extract the table and name it"
            )
        utf16 = start.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in start
        if utf16:
            raise DataError(
                f"{self.name}: not UTF-8 text (UTF-16 or UTF-32: it has NUL bytes): save the "
                "table as UTF-8 (e.g. iconv -f utf-16 -t utf-8)"
            )

    def _check_named(self, name: str, key: str) -> None:
        if name not in self.columns:
            raise DataError(
                f"{self.name}: no column {shown(name, 40)} ({key}); its columns: "
                f"{shown(self.columns, 200)}{self._delimiter_hint()}"
            )

    def _delimiter_hint(self) -> str:
        if len(self.columns) == 1 and not self.parquet:
            for mark, label in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
                if mark in self.columns[0] and mark != self.cfg.delimiter:
                    return f" (its header is separated by {label}: set data.table.delimiter)"
        return ""

    def _csv_options(self, types: pa.DataType | None = None) -> dict:
        columns = [*self.features, self.cfg.target] if types is not None else None
        kinds = None
        if columns:
            kinds = dict.fromkeys(columns, types)
        if columns and types == pa.float64():  # booleans stay booleans, categories text
            for name in columns:
                if name in self.categorical and not is_numeric(self.schema.field(name).type):
                    kinds[name] = pa.string()
                elif pa.types.is_boolean(self.schema.field(name).type):
                    kinds[name] = pa.bool_()
        return {
            "read_options": pcsv.ReadOptions(block_size=BLOCK_BYTES),
            "parse_options": pcsv.ParseOptions(
                delimiter=self.cfg.delimiter, newlines_in_values=True
            ),
            "convert_options": pcsv.ConvertOptions(
                include_columns=columns,
                column_types=kinds,
                # read as text (_not_a_number), an empty cell is null too, not '' (no number)
                strings_can_be_null=True,
            ),
        }

    def _csv_error(self, exc: Exception) -> DataError:
        text = first_line(exc)
        # No row in a whole first block: the file is empty, or its first line is that long.
        longer = "Empty CSV file" in text and self.identity[2] > BLOCK_BYTES
        if "Empty CSV file" in text and not longer:
            return DataError(f"{self.name}: empty file (expected a header row, then rows)")
        if "straddles two block boundaries" in text or longer:
            return DataError(
                f"{self.name}: a row longer than {BLOCK_BYTES >> 20} MiB: not a table of rows "
                "(no line breaks, or a quote that is never closed)"
            )
        if "Expected" in text and "columns, got" in text:
            return DataError(f"{self.name}: a row with another number of cells ({text})")
        return DataError(f"{self.name}: cannot be read as CSV ({text})")

    def batches(self) -> Iterator[tuple[int, np.ndarray]]:
        """(the row number of its first row, rows x (features + 1) float64 with NaN where a
        cell is missing) for each batch, in the table's order. Raises DataError naming the
        row and column of a value that is not a number, and if the file changed meanwhile."""
        row = self.header_rows + 1
        with self._open() as f:
            for batch in self._arrow_batches(f):
                yield row, self._as_array(batch, row)
                row += batch.num_rows
            if _identity(os.fstat(f.fileno())) != self.identity or not self._same_file(f):
                raise DataError(
                    f"{self.name}: changed while it was read: run again once it is written"
                )

    def _same_file(self, f: BinaryIO) -> bool:
        try:
            return _identity(os.stat(self.path)) == _identity(os.fstat(f.fileno()))
        except OSError:
            return False

    def _arrow_batches(self, f: BinaryIO) -> Iterator[pa.RecordBatch]:
        columns = [*self.features, self.cfg.target]
        with _arrow_file(f) as source:
            if self.parquet:
                try:
                    parquet = pq.ParquetFile(source)
                    # A row group at a time: one reader over the whole file keeps what it has
                    # read until it is closed, so its memory grew with the file.
                    for group in range(parquet.num_row_groups):
                        yield from parquet.iter_batches(
                            batch_size=CHUNK_ROWS, columns=columns, row_groups=[group]
                        )
                except (pa.ArrowException, OSError) as exc:
                    raise DataError(f"{self.name}: cannot be read ({first_line(exc)})") from None
                return
            try:
                yield from pcsv.open_csv(source, **self._csv_options(pa.float64()))
            except pa.ArrowInvalid as exc:
                if "conversion error" not in str(exc):
                    raise self._csv_error(exc) from None
                raise self._not_a_number() from None

    def _not_a_number(self) -> DataError:
        """Find the first cell that is not a number, reading the columns again as text (only
        on the way to an error: the fast path parses them as numbers directly)."""
        row = self.header_rows + 1
        with self._open() as f, _arrow_file(f) as source:
            batches = self._text_batches(source)
            while True:
                try:
                    batch = next(batches, None)
                except pa.ArrowInvalid as exc:  # a cell that is not even text: another encoding
                    return DataError(f"{self.name}: not UTF-8 text ({first_line(exc)}): {NOT_UTF8}")
                if batch is None:
                    break
                bad = [
                    (_first_bad(c, self._kind(name)), name)
                    for name, c in zip(batch.schema.names, batch.columns, strict=True)
                    if name not in self.categorical or is_numeric(self.schema.field(name).type)
                ]
                bad = [(i, name) for i, name in bad if i is not None]
                if bad:
                    i, name = min(bad)
                    cell = batch.column(name)[i].as_py()
                    what = "true or false" if self._kind(name) == pa.bool_() else "a number"
                    hint = ""
                    if what == "a number" and re.fullmatch(r"[-+]?\d*,\d+", str(cell).strip()):
                        hint = (
                            " (a decimal comma: this reader takes a decimal point, e.g. "
                            f"{str(cell).strip().replace(',', '.')}; convert the file's numbers)"
                        )
                    elif what == "a number" and name != self.cfg.target:
                        hint = " (a column of categories: name it in data.table.categorical)"
                    return DataError(
                        f"{self.name}: row {row + i}, column {shown(name, 40)}: "
                        f"{shown(cell, 40)} is not {what}{hint}"
                    )
                row += batch.num_rows
        return DataError(f"{self.name}: a value is not a number")

    def _kind(self, name: str) -> pa.DataType:
        """What a feature's or the target's cells must be: booleans or numbers."""
        return pa.bool_() if pa.types.is_boolean(self.schema.field(name).type) else pa.float64()

    def _text_batches(self, source: pa.NativeFile) -> Iterator[pa.RecordBatch]:
        yield from pcsv.open_csv(source, **self._csv_options(pa.string()))

    def _codes(self, name: str, column: pa.Array) -> np.ndarray:
        """A categorical column's codes (float64, NaN where a cell is missing), new texts
        getting the next codes."""
        if is_numeric(column.type):  # codes: one text per number, from a CSV or a Parquet file
            text = pa.array(
                [None if v is None else category_text(v) for v in column.to_pylist()],
                pa.string(),
            )
        else:
            text = column.cast(pa.string())
        # An empty text is a missing cell, as in a CSV (a Parquet file can hold one).
        encoded = pc.dictionary_encode(pc.if_else(pc.equal(text, ""), None, text))
        codes, texts = self.codes[name], self.texts[name]
        lookup = []
        for text in encoded.dictionary.to_pylist():
            if text not in codes:
                codes[text] = len(texts)
                texts.append(text)
                self.hashes[name].append(text_hash(text))
            lookup.append(codes[text])
        indices = encoded.indices.to_numpy(zero_copy_only=False)  # float64, NaN where null
        out = np.full(len(indices), np.nan)
        known = ~np.isnan(indices)
        out[known] = np.array(lookup, dtype=np.float64)[indices[known].astype(np.int64)]
        return out

    def hash_bits(self) -> dict[int, np.ndarray]:
        """For each categorical column (by its position among the features), the 64 bits its
        codes stand for in a row's hash: a hash of the text, so a row's split depends on what
        its cells say, never on the order in which the file showed the categories."""
        return {
            j: np.array(self.hashes[name], dtype=np.uint64)
            for j, name in enumerate(self.features)
            if name in self.categorical
        }

    def _as_array(self, batch: pa.RecordBatch, row: int) -> np.ndarray:
        columns, beyond = [], []
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if name in self.categorical:
                columns.append(self._codes(name, column))
                continue
            try:
                values = column if column.type == pa.float64() else pc.cast(column, pa.float64())
            except pa.ArrowException as exc:  # a decimal beyond float64, an odd Parquet type
                raise DataError(
                    f"{self.name}: column {shown(name, 40)} cannot be read as numbers "
                    f"({first_line(exc)})"
                ) from None
            array = values.to_numpy(zero_copy_only=False)  # a null becomes NaN
            with np.errstate(invalid="ignore"):
                out_of_range = np.abs(array) > FLOAT32_MAX  # inf too; NaN (missing) is not
            if out_of_range.any():
                beyond.append((int(np.argmax(out_of_range)), len(columns), name, array))
            columns.append(array)
        if beyond:  # the first such cell, row by row
            i, _, name, array = min(beyond, key=lambda b: b[:2])
            what = "is not a finite number" if np.isinf(array[i]) else "is beyond float32"
            raise DataError(
                f"{self.name}: row {row + i}, column {shown(name, 40)}: {array[i]:g} {what} "
                f"(the model computes in float32: at most +-{FLOAT32_MAX:.4g})"
            )
        return np.column_stack(columns)


def _parses(column: pa.Array, kind: pa.DataType) -> bool:
    try:
        pc.cast(column, kind)
    except pa.ArrowInvalid:
        return False
    return True


def _first_bad(column: pa.Array, kind: pa.DataType) -> int | None:
    """The index of the first cell Arrow cannot read as `kind` (by halves: a few casts)."""
    if _parses(column, kind):
        return None
    lo, hi = 0, len(column)  # column[:lo] parses, column[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _parses(column.slice(0, mid), kind) else (lo, mid)
    return lo


def _arrow_file(f: BinaryIO) -> pa.NativeFile:
    """Arrow's own file on `f`'s open file (the same file, not its path looked up again).
    Arrow reads ahead on threads of its own; through a Python file those threads call into
    Python, and a read still under way when the process exits (after an error) hangs the
    exit or aborts it."""
    return pa.OSFile(f"/dev/fd/{f.fileno()}")


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def parse_number(text: str) -> float:
    """A cell's number as a table's cells are read: Python's float, but not its `1_000`
    (digit grouping, which Arrow's reader takes for text). predict reads cells with this."""
    if "_" in text:
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def is_number(text: str) -> bool:
    try:
        parse_number(text)
    except ValueError:
        return False
    return True
