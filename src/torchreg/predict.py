"""Predict with a saved model: python -m torchreg.predict --input rows.csv [--model FILE]

The input is a CSV of feature columns, one row per prediction, with or without a header row
(e.g. x0,x1,x2,x3); for a model trained on a table (data.source: table), a CSV with a header
that names the table's feature columns, in any order, other columns ignored (the model file
carries the names, the categories of its text columns and the standardisation, which predict
applies; a category the training split never had stops the run, or with --unseen zeros gets
all of its column's one-hot inputs at 0). Predictions are in the target's own units.
`--input -` reads standard input. The output is each input row, its cells as given
(surrounding spaces stripped), followed by a `predicted` column, on standard output or in
--output. The model file (safetensors, default models/model.safetensors) holds no code.

Rows are read, predicted and written CHUNK_ROWS at a time, so memory stays flat however long
the input is. A bad row stops the run with one line naming it; --output is then left as it
was (the output is written to a temporary file and renamed into place only when complete), but
on standard output the chunks before the bad row have already been written: the exit status
(2) says the output is incomplete.
"""

from __future__ import annotations

from torchreg.stage import quiet_interrupts, run_main

if __name__ == "__main__":  # first: Ctrl-C during the imports below is one line too
    quiet_interrupts("predict")

import argparse
import csv
import io
import itertools
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from torchreg.data.table import category_text, is_number, parse_number
from torchreg.errors import DataError, shown
from torchreg.evaluation import predict
from torchreg.files import atomic_path, check_writable, open_input
from torchreg.model import TRAIN_HINT, Units, input_layout, load_model

DEFAULT_MODEL = Path("models/model.safetensors")
STDIO = Path("-")
# Rows parsed, predicted and written at a time: large enough that the model call and the
# write are cheap per row, small enough that a chunk (as text and as floats) is a few MB.
CHUNK_ROWS = 65536
# The longest cell a row may have, spaces included: a float32 in any notation needs under 60
# characters; a header name is a short label. It bounds what a row may cost to read.
MAX_CELL_CHARS = 200
FLOAT32_MAX = float(np.finfo(np.float32).max)
# A boolean column's cells, as the table reader (Arrow's CSV parser) reads them.
BOOLEANS = dict.fromkeys(("1", "True", "TRUE", "true"), 1.0) | dict.fromkeys(
    ("0", "False", "FALSE", "false"), 0.0
)
# A table model's input may carry columns besides its features (an id, the target): at most
# this many, which bounds what a row may cost to read.
MAX_COLUMNS = 4096


def is_header(cells: list[str]) -> bool:
    """A header names every column: all cells non-empty and none a number. A row with an
    empty cell is a data row with a missing value, never a header."""
    return all(c and not is_number(c) for c in cells)


class RowReader:
    """The rows of a CSV, checked and parsed a chunk at a time; every problem names the
    input, the row and what was expected. Blank lines are skipped (and not counted)."""

    unseen_as_zeros = False  # a category the model has not seen: an error, or all-zeros

    def __init__(self, f: TextIO, name: str, n_features: int, features: dict | None = None) -> None:
        """`features`: a table model's names and standardisation (model.features): the input
        then needs a header, its columns are found by name (in any order, others ignored)
        and the features are standardised as the training split was."""
        self.name, self.n_features, self.features = name, n_features, features
        # A row is read only up to what its cells can need, before csv sees it.
        self.max_chars = n_features * (MAX_CELL_CHARS + 1) + 2
        if features is not None:
            self.max_chars = MAX_COLUMNS * (MAX_CELL_CHARS + 1) + 2
        self._chars = 0  # characters of the row being read (a quoted cell spans lines)
        self._rows = self._nonblank(csv.reader(self._lines(f)))
        self._number = 0
        try:
            first = next(self._rows, None)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{name}: cannot be read as CSV ({exc})") from None
        if first is None:
            raise self._no_rows()
        cells = [c.strip() for c in first]
        self.has_header = is_header(cells)
        if features is not None:  # by the names as prepare read them: spaces and all
            self._find_columns(first)
        elif self.has_header:
            self._number = 1
            if len(cells) != n_features:
                raise DataError(
                    f"{name}: header has {len(cells)} columns but the model expects "
                    f"{n_features}{separator_hint(first, n_features)}"
                )
            self.header, self._pending = cells, []
        else:
            self.header, self._pending = [f"x{j}" for j in range(n_features)], [first]

    def _find_columns(self, cells: list[str]) -> None:
        self.layout = input_layout(self.features)
        self.categories = {
            column: {text: k for k, text in enumerate(texts)}
            for column, texts in (self.features.get("categories") or {}).items()
        }
        names = list(dict.fromkeys(column for column, _ in self.layout))
        self.booleans = set(self.features.get("booleans") or [])
        if not self.has_header:
            raise DataError(
                f"{self.name}: the first row is not a header: this model was trained on a "
                f"table and finds its features by name ({shown(names, 120)})"
            )
        missing = [n for n in names if n not in cells]
        if missing:
            raise DataError(
                f"{self.name}: no column {shown(missing[0], 40)} in the header "
                f"({len(missing)} of the model's {len(names)} features missing; its header: "
                f"{shown(cells, 120)})"
            )
        twice = [n for n in names if cells.count(n) > 1]
        if twice:
            raise DataError(
                f"{self.name}: column {shown(twice[0], 40)} appears twice in the header"
            )
        self.index = [cells.index(n) for n in names]
        self.columns = names
        self.header, self._pending, self._number = [c.strip() for c in cells], [], 1

    def _lines(self, f: TextIO) -> Iterator[str]:
        """The input's lines; a row longer than `max_chars` is refused before it is read
        whole (/dev/zero has no line break at all)."""
        while line := f.readline(self.max_chars + 1):
            self._chars += len(line)
            if self._chars > self.max_chars:
                raise DataError(
                    f"{self.name}: row {self._number + 1} is longer than {self.max_chars:,} "
                    f"characters, more than {self.n_features} cells of at most "
                    f"{MAX_CELL_CHARS} can need: not a CSV of numbers (binary, or no line breaks?)"
                )
            yield line

    def _nonblank(self, rows: Iterator[list[str]]) -> Iterator[list[str]]:
        for row in rows:
            self._chars = 0
            if row:
                yield row

    def _no_rows(self) -> DataError:
        return DataError(
            f"{self.name}: no rows to predict (expected {self.n_features} numeric columns)"
        )

    def chunks(self, size: int | None = None) -> Iterator[tuple[list[str], torch.Tensor]]:
        """(each row's cells as given, joined by commas; float32 features) for up to `size`
        (CHUNK_ROWS) rows at a time."""
        size = size or CHUNK_ROWS
        rows = itertools.chain(self._pending, self._rows)
        while True:
            try:
                batch = list(itertools.islice(rows, size))
            except (UnicodeDecodeError, csv.Error) as exc:
                raise DataError(f"{self.name}: cannot be read as CSV ({exc})") from None
            if not batch:
                break
            texts, values = self._parse(batch)
            self._number += len(batch)
            yield texts, torch.from_numpy(values)
        if self._number == int(self.has_header):
            raise self._no_rows()

    def _parse(self, batch: list[list[str]]) -> tuple[list[str], np.ndarray]:
        """Parse a chunk in one go; if that fails, row by row, to name the first bad row.

        The fast path parses every cell of the chunk with one map(float) over the joined text;
        a cell holding a comma (quoted) changes the cell count and takes the slow path.
        """
        if self.features is not None:
            return self._parse_named(batch)
        n = self.n_features
        if all(len(row) == n for row in batch):
            texts = [",".join(row) for row in batch]
            joined = ",".join(texts)
            if _has_space(joined):  # spaces around cells: echo them stripped
                texts = [",".join([c.strip() for c in row]) for row in batch]
                joined = ",".join(texts)
            cells = joined.split(",")
            if len(cells) == len(batch) * n and "_" not in joined:  # `1_000`: the slow path
                try:
                    parsed = np.fromiter(map(float, cells), np.float64, len(cells))
                except ValueError:
                    parsed = None
                if parsed is not None:
                    with np.errstate(over="ignore"):  # beyond float32: inf, then the slow path
                        values = parsed.astype(np.float32).reshape(len(batch), n)
                    if np.isfinite(values).all():
                        return texts, values
        rows = [self._check(row, self._number + 1 + i) for i, row in enumerate(batch)]
        return [text for text, _ in rows], np.array([v for _, v in rows], dtype=np.float32)

    def _parse_named(self, batch: list[list[str]]) -> tuple[list[str], np.ndarray]:
        """A table model's chunk: its feature cells by name, parsed in float64 and standardised
        exactly as the prepare stage standardised the training rows, then float32."""
        values = np.zeros((len(batch), self.n_features), dtype=np.float64)
        width, names = len(self.header), self.columns
        for i, row in enumerate(batch):
            where = f"{self.name}: row {self._number + 1 + i}"
            if len(row) != width:
                raise DataError(f"{where} has {len(row)} columns, the header has {width}")
            j = 0  # the input the next column starts at
            for name, k in zip(names, self.index, strict=True):
                if name in self.categories:
                    known = self.categories[name]
                    text = _category(row[k], known)
                    if text in known:
                        values[i, j + known[text]] = 1.0
                    elif text is None or not self.unseen_as_zeros:
                        raise self._unseen(where, name, row[k], list(known))
                    j += len(known)
                    continue
                cell = row[k].strip()
                try:
                    values[i, j] = BOOLEANS[cell] if name in self.booleans else parse_number(cell)
                except (KeyError, ValueError):
                    if name in self.booleans:
                        raise DataError(
                            f"{where}, column {shown(name, 40)} holds {shown(cell, 40)}, not "
                            "true or false"
                        ) from None
                    what = "is empty" if not cell else f"holds {shown(cell, 40)}, not a number"
                    raise DataError(f"{where}, column {shown(name, 40)} {what}") from None
                if not abs(values[i, j]) <= FLOAT32_MAX:
                    raise DataError(
                        f"{where}, column {shown(name, 40)}: {cell} is not a finite number "
                        f"within float32 (+-{FLOAT32_MAX:.4g})"
                    )
                j += 1
        scale = self.features.get("standardize")
        if scale is not None:
            values = (values - np.array(scale["mean"])) / np.array(scale["std"])
        return [_csv_row([c.strip() for c in row]) for row in batch], values.astype(np.float32)

    def _unseen(self, where: str, column: str, cell: str, known: list[str]) -> DataError:
        if _category(cell, {}) is None:
            what = "is empty" if not cell.strip() else f"holds {shown(cell, 40)}, a missing value"
            return DataError(f"{where}, column {shown(column, 40)} {what}")
        return DataError(
            f"{where}, column {shown(column, 40)}: {shown(cell, 40)} is not a category the "
            f"model was trained on ({shown(known, 120)}); --unseen zeros predicts such a row "
            "with all of the column's one-hot inputs at 0"
        )

    def _check(self, row: list[str], number: int) -> tuple[str, list[float]]:
        where = f"{self.name}: row {number}"
        if len(row) != self.n_features:
            raise DataError(
                f"{where} has {len(row)} columns, the model expects {self.n_features}"
                f"{separator_hint(row, self.n_features)}"
            )
        cells = [c.strip() for c in row]
        try:
            parsed = [parse_number(c) for c in cells]
        except ValueError:
            if "" in cells:
                raise DataError(
                    f"{where} has an empty cell (column {cells.index('') + 1}): "
                    f"every cell needs a number"
                ) from None
            raise DataError(f"{where} is not all numbers: {row}") from None
        if not all(math.isfinite(v) for v in parsed):
            raise DataError(f"{where} has a NaN or infinite value: {row}")
        if any(abs(v) > FLOAT32_MAX for v in parsed):
            raise DataError(
                f"{where} has a value beyond the model's float32 range (+-{FLOAT32_MAX:.4g}): {row}"
            )
        return ",".join(cells), parsed


# The cells the table reader takes for a missing value: Arrow's CSV parser's default
# null_values (a test checks that they are its list).
MISSING = frozenset(
    [
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "n/a",
        "nan",
        "null",
    ]
)


def _category(cell: str, known: dict[str, int]) -> str | None:
    """A categorical cell's category as prepare read it: the text itself, a number's
    canonical text (a column of numbers: 1.0 is 1), true/false as 1/0; None for a cell the
    reader takes for missing (`NA`, `null`, empty)."""
    if cell in known:
        return cell
    if cell in MISSING:
        return None
    stripped = cell.strip()
    if stripped in BOOLEANS:
        return category_text(BOOLEANS[stripped])
    try:
        return category_text(parse_number(stripped))
    except ValueError:
        return cell


def _csv_row(cells: list[str]) -> str:
    """One row as CSV text, cells quoted where they must be: a quoted cell may hold a line
    break (or a form feed, U+2028), so rows are never found by splitting text into lines."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)  # a cell with "\n" is quoted
    return out.getvalue()[:-1]


def separator_hint(row: list[str], n_features: int) -> str:
    """When a row split on another separator has the model's column count, say so: "header
    has 1 columns" alone blames the columns, not the separator."""
    text = ",".join(row)
    for separator, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
        if separator in text and len(text.split(separator)) == n_features:
            return f": its cells are separated by {name}; the input must be comma-separated"
    if len(text.split()) == n_features and len(row) == 1:
        return ": its cells are separated by spaces; the input must be comma-separated"
    return ""


def _has_space(text: str) -> bool:
    """Whether any cell may have spaces to strip (`in` is far faster than a regex here)."""
    return not text.isascii() or any(c in text for c in " \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f")


def write_header(out: TextIO, header: list[str]) -> None:
    csv.writer(out, lineterminator="\n").writerow([*header, "predicted"])


def write_chunk(out: TextIO, texts: list[str], predicted: torch.Tensor) -> None:
    # Cells that parsed as numbers hold no comma, quote or newline: no CSV quoting is needed.
    out.writelines(f"{text},{p:.7g}\n" for text, p in zip(texts, predicted.tolist(), strict=True))


def check_paths(input_path: Path, output: Path | None, model: Path | None = None) -> None:
    """Refuse an output that is the input or the model, before anything is read or written."""
    if output is None or output == STDIO:
        return
    for what, other in (("the input file", input_path), ("the model file", model)):
        if other is None or other == STDIO:
            continue
        same = other.resolve() == output.resolve()
        if not same and other.exists() and output.exists():
            same = os.path.samefile(other, output)
        if same:
            raise DataError(
                f"--output {output} is {what}: writing it would replace it; choose another "
                "output path"
            )


def run(
    model_path: Path,
    input_path: Path,
    output: Path | None,
    missing_hint: str | None = None,
    unseen: str = "error",
) -> int:
    """Predict every row of `input_path` ("-": standard input) into `output` (None or "-":
    standard output); returns the number of rows predicted."""
    check_paths(input_path, output, model_path)
    to_stdout = output is None or output == STDIO
    if input_path == STDIO and sys.stdin is None:
        raise DataError("--input -: standard input is closed: redirect the rows into it")
    if to_stdout and sys.stdout is None:
        raise DataError("standard output is closed: redirect it, or name a file with --output")
    if not to_stdout:
        check_writable(output)  # before the model and the rows are read
    model, _, n_features = load_model(model_path, missing_hint)
    if input_path == STDIO:
        source: TextIO = io.TextIOWrapper(
            sys.stdin.buffer, encoding="utf-8-sig", newline="", errors="strict"
        )
        name = "standard input"
    else:
        try:
            binary = open_input(input_path)
        except FileNotFoundError:
            raise DataError(f"{input_path} not found") from None
        except DataError as exc:
            if "FIFO" not in str(exc):
                raise
            raise DataError(f"{exc} (to read a pipe, use --input - and redirect it)") from None
        # utf-8-sig: a byte-order mark (as spreadsheets save) is not part of the first name
        source, name = io.TextIOWrapper(binary, encoding="utf-8-sig", newline=""), str(input_path)
    with source:
        reader = RowReader(source, name, n_features, getattr(model, "features", None))
        reader.unseen_as_zeros = unseen == "zeros"
        if to_stdout:
            try:
                return _predict_into(sys.stdout, reader, model)
            except BrokenPipeError:  # the reader left (`| head`): stop quietly, like Unix tools
                _drop_stdout()
                sys.exit(141)
            except OSError as exc:  # /dev/full, a disk that filled up
                _drop_stdout()
                raise DataError(f"cannot write standard output: {exc.strerror or exc}") from None
        with atomic_path(output) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
            return _predict_into(f, reader, model)


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush of what is still
    buffered cannot fail a second time (as a traceback) on the way out."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _predict_into(out: TextIO, reader: RowReader, model: torch.nn.Module) -> int:
    rows = 0
    units = Units.of(getattr(model, "features", None))
    for texts, x in reader.chunks():
        predicted = predict(model, x)
        if units is not None:  # back to the table's units, in float64
            predicted = units.y(predicted)
        finite = torch.isfinite(predicted)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0])
            number = rows + i + 1 + int(reader.has_header)
            raise DataError(
                f"{reader.name}: row {number}: the model predicts {predicted[i].item()} (beyond "
                "float32): its weights are too large for this row"
            )
        if not rows:  # with the first good chunk: a bad first chunk leaves stdout empty
            write_header(out, reader.header)
        write_chunk(out, texts, predicted)
        rows += len(texts)
    out.flush()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m torchreg.predict",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help=f"model file written by the train stage (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="CSV of feature columns, with or without a header row; - reads standard input "
        "(required, no default)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="CSV to write: the input rows plus a `predicted` column; - is standard output "
        "(default: standard output)",
    )
    parser.add_argument(
        "--unseen",
        choices=("error", "zeros"),
        default="error",
        help="a text a categorical column's training split never had: error (stop, naming the "
        "row; the default) or zeros (all of that column's one-hot inputs 0)",
    )
    args = parser.parse_args(argv)
    hint = TRAIN_HINT if args.model == DEFAULT_MODEL else None
    run_main("predict", lambda: run(args.model, args.input, args.output, hint, args.unseen))


if __name__ == "__main__":
    main()
