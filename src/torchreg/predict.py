"""Predict with a saved model: python -m torchreg.predict --input rows.csv [--model FILE]

The input is a CSV of feature columns, one row per prediction, with or without a header row
(e.g. x0,x1,x2,x3). The output is the same rows with a `predicted` column, on stdout or in
--output. The model file (safetensors, default models/model.safetensors) holds no code.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import torch

from torchreg.cli import run_main
from torchreg.errors import DataError
from torchreg.evaluation import predict
from torchreg.io import atomic_path
from torchreg.model import load_model


def read_rows(path: Path, n_features: int) -> tuple[list[str], torch.Tensor]:
    """Parse the CSV; every problem names the file, the line and what was expected."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            lines = [row for row in csv.reader(f) if row]
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None
    header = [f"x{j}" for j in range(n_features)]
    has_header = bool(lines) and not _is_number(lines[0][0].strip())
    if has_header:
        header, lines = [c.strip() for c in lines[0]], lines[1:]
        if len(header) != n_features:
            raise DataError(
                f"{path}: header has {len(header)} columns but the model expects {n_features}"
            )
    if not lines:
        raise DataError(f"{path}: no rows to predict (expected {n_features} numeric columns)")
    values = []
    for number, row in enumerate(lines, start=2 if has_header else 1):
        if len(row) != n_features:
            raise DataError(
                f"{path}: row {number} has {len(row)} columns, the model expects {n_features}"
            )
        try:
            parsed = [float(v) for v in row]
        except ValueError:
            raise DataError(f"{path}: row {number} is not all numbers: {row}") from None
        if not all(math.isfinite(v) for v in parsed):
            raise DataError(f"{path}: row {number} has a NaN or infinite value: {row}")
        values.append(parsed)
    return header, torch.tensor(values, dtype=torch.float32)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_rows(out, header: list[str], x: torch.Tensor, predicted: torch.Tensor) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*header, "predicted"])
    for row, p in zip(x.tolist(), predicted.tolist(), strict=True):
        writer.writerow([*(repr(v) for v in row), f"{p:.7g}"])


def run(model_path: Path, input_path: Path, output: Path | None) -> torch.Tensor:
    model, _, n_features = load_model(model_path)
    header, x = read_rows(input_path, n_features)
    predicted = predict(model, x)
    if output is None:
        write_rows(sys.stdout, header, x, predicted)
    else:
        with atomic_path(output) as tmp, tmp.open("w", newline="") as f:
            write_rows(f, header, x, predicted)
    return predicted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/model.safetensors"))
    parser.add_argument("--input", type=Path, required=True, help="CSV of feature columns")
    parser.add_argument("--output", type=Path, help="CSV to write (default: stdout)")
    args = parser.parse_args(argv)
    run_main("predict", lambda: run(args.model, args.input, args.output))


if __name__ == "__main__":
    main()
