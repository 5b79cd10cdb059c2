"""Benchmark `python -m torchreg.predict` on a large CSV: rows per second and peak memory.

Writes a CSV of --gb gigabytes (4 feature columns, numbers as text of varied length) and a
linear model file into a temporary folder, runs the predictor on it as a subprocess with the
output going to a file in the same folder, and prints rows/s and the child's peak RSS.

    python bench/predict.py             # about 1 GB
    python bench/predict.py --gb 0.1    # a quicker run
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from torchreg.config import ModelConfig  # noqa: E402
from torchreg.model import LinearRegression, save_model  # noqa: E402

N_FEATURES = 4
BLOCK_ROWS = 1 << 16
BLOCKS = 8  # distinct blocks of text, written in turn


def write_csv(path: Path, gb: float, seed: int = 0) -> int:
    """Write about `gb` GB of rows; return the number of rows. Formatting numbers is slower than
    predicting them, so a few blocks of text are made once and written in turn."""
    rng = np.random.Generator(np.random.PCG64(seed))
    blocks = []
    for _ in range(BLOCKS):
        text = io.StringIO()
        np.savetxt(text, rng.standard_normal((BLOCK_ROWS, N_FEATURES)), fmt="%.9g", delimiter=",")
        blocks.append(text.getvalue().encode())
    rows = written = 0
    with path.open("wb") as f:
        written += f.write((",".join(f"x{j}" for j in range(N_FEATURES)) + "\n").encode())
        while written < gb * 1e9:
            written += f.write(blocks[(rows // BLOCK_ROWS) % BLOCKS])
            rows += BLOCK_ROWS
    return rows


def write_model(path: Path) -> None:
    model = LinearRegression(N_FEATURES)
    with torch.no_grad():
        model.w.copy_(torch.tensor([2.0, -3.4, 1.5, 0.7]))
        model.b.fill_(4.2)
    cfg = ModelConfig.model_validate({"kind": "linear", "hidden": [], "activation": "none"})
    save_model(path, model, cfg, N_FEATURES)


def measure(gb: float) -> str:
    """Write about `gb` GB of CSV, predict it in a child process; return the figures as text."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        rows = write_csv(folder / "rows.csv", gb)
        size = (folder / "rows.csv").stat().st_size
        write_model(folder / "model.safetensors")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        cmd = [sys.executable, "-m", "torchreg.predict", "--model", "model.safetensors"]
        cmd += ["--input", "rows.csv", "--output", "predicted.csv"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(cmd, cwd=folder, env=env, check=True)
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mib = usage.ru_maxrss / 1024  # KiB on Linux; the largest child so far
        # CPU time is less sensitive than wall time to a busy machine
        cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
        with (folder / "predicted.csv").open() as out:
            out_rows = sum(1 for _ in out) - 1
        if out_rows != rows:
            raise RuntimeError(f"predicted {out_rows:,} rows of {rows:,}")
        return (
            f"{rows:,} rows ({size / 1e9:.2f} GB) in {seconds:.1f} s = "
            f"{rows / seconds:,.0f} rows/s, {size / 1e6 / seconds:.1f} MB/s; "
            f"{rows / cpu:,.0f} rows per CPU second; "
            f"peak RSS {peak_mib:.0f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="CSV size in GB (default: 1.0)")
    args = parser.parse_args()
    print(f"predict: {measure(args.gb)}")


if __name__ == "__main__":
    main()
