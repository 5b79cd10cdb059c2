"""A user's table as the data source: the prepare stage against pyarrow's reader alone.

Writes a CSV of about --gb GB (8 numeric feature columns, the target y and a short text
column; seeded, a chunk at a time) and the same rows as Parquet (a row group per chunk), and
both again at 1/8 of the rows. Then, per file, in fresh processes taking turns, repeated:

- reader: pyarrow's streaming reader alone over the columns prepare keeps, with the options
  torchreg.data.table uses (a CSV: open_csv, BLOCK_BYTES blocks, newlines in values, float64
  columns; a Parquet file: iter_batches of CHUNK_ROWS rows), every column of every batch
  turned into a NumPy array, as prepare must;
- prepare: the prepare stage's run() (stages/prepare.py) with data.source: table on the file;
- pandas: pandas.read_csv (read_parquet for a Parquet file) of the same columns as float64,
  for reference: it holds the whole table in memory.

A figure is the process's wall time (interpreter start and imports included) and its peak
resident memory (VmHWM, read by the process itself at its end: a process started from a parent
that holds torch would otherwise count the parent's pages as its own). "work" is the time
inside the process after its imports (the reading loop, prepare's run(), the pandas call); CPU
seconds (user + system) vary less than wall time on a shared machine. The files are read once
before timing, so every run finds them in the page cache. Then one more prepare run per large file,
its time taken apart by phase (wrapped functions, exclusive times) and by cProfile.

    python bench/table.py               # about 1 GB (several minutes on 2 cores)
    python bench/table.py --gb 0.1      # a quicker run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from common import QUIET, ROOT, Table

from torchreg.data.datafile import CHUNK_ROWS
from torchreg.data.table import BLOCK_BYTES

FEATURES = tuple(f"x{j}" for j in range(8))
TARGET = "y"
COLUMNS = [*FEATURES, TARGET]
GEN_ROWS = 1 << 18  # rows generated at once; also a Parquet row group
# Features of unlike scales, written with 4 decimals (y with 6), as a measured table would be.
SCALES = np.array([1.0, 10.0, 0.1, 100.0, 1.0, 5.0, 2.0, 1000.0])
TRUE_W = np.linspace(-1.0, 1.0, len(FEATURES))
LABELS = 1000  # distinct values of the text column
PREPARE_LIMIT = 1.3  # prepare at most this many times the reader alone
FLAT_LIMIT = 1.1  # peak RSS at 8x the file: at most this many times the small file's


def chunks(seed: int) -> Iterator[pa.Table]:
    """Endless Arrow tables of GEN_ROWS rows: the same rows for the same seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    labels = pa.array([f"k{i:03d}" for i in range(LABELS)])
    while True:
        x = np.round(rng.standard_normal((GEN_ROWS, len(FEATURES))) * SCALES, 4)
        y = np.round(x @ TRUE_W + 0.5 + 0.1 * rng.standard_normal(GEN_ROWS), 6)
        label = labels.take(pa.array(rng.integers(0, LABELS, GEN_ROWS)))
        yield pa.table({**{n: x[:, j] for j, n in enumerate(FEATURES)}, TARGET: y, "label": label})


def write_tables(folder: Path, gb: float, seed: int = 0) -> dict[str, dict]:
    """A CSV of about `gb` GB and about `gb` / 8, each with its rows as Parquet, in one pass
    (the small files hold the large ones' first rows); memory stays at one chunk. Returns per
    file name its path, format, rows and bytes."""
    sizes = {"large": gb * 1e9, "small": gb * 1e9 / 8}
    files: dict[str, dict] = {}
    sinks = {}
    for size in sizes:
        for kind in ("csv", "parquet"):
            path = folder / f"{size}.{kind}"
            files[f"{size} {kind}"] = {"path": str(path), "format": kind, "rows": 0}
    schema = None
    written = dict.fromkeys(sizes, 0)
    for chunk in chunks(seed):
        if schema is None:
            schema = chunk.schema
            for size in sizes:
                sinks[size] = (
                    open(files[f"{size} csv"]["path"], "wb"),  # noqa: SIM115 (closed below)
                    pq.ParquetWriter(files[f"{size} parquet"]["path"], schema),
                )
        open_sizes = [s for s in sizes if written[s] < sizes[s]]
        if not open_sizes:
            break
        text = pa.BufferOutputStream()
        pcsv.write_csv(chunk, text, pcsv.WriteOptions(include_header=not written["large"]))
        text = text.getvalue()
        for size in open_sizes:
            csv_file, parquet = sinks[size]
            written[size] += csv_file.write(text)
            parquet.write_table(chunk, row_group_size=GEN_ROWS)
            files[f"{size} csv"]["rows"] += chunk.num_rows
            files[f"{size} parquet"]["rows"] += chunk.num_rows
    for csv_file, parquet in sinks.values():
        csv_file.close()
        parquet.close()
    for info in files.values():
        info["bytes"] = Path(info["path"]).stat().st_size
    return files


# Each child prints one JSON line: its work seconds, rows read and peak RSS (VmHWM, bytes).
PEAK = """
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

READER = (
    PEAK
    + """
import json, sys, time
import pyarrow as pa, pyarrow.csv as pcsv, pyarrow.parquet as pq
spec = json.loads(sys.argv[1])
columns = spec["columns"]
start = time.perf_counter()
rows = 0
with open(spec["path"], "rb") as f:
    if spec["format"] == "csv":
        batches = pcsv.open_csv(
            f,
            read_options=pcsv.ReadOptions(block_size=spec["block_bytes"]),
            parse_options=pcsv.ParseOptions(delimiter=",", newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                include_columns=columns, column_types=dict.fromkeys(columns, pa.float64())
            ),
        )
    else:
        batches = pq.ParquetFile(f).iter_batches(batch_size=spec["chunk_rows"], columns=columns)
    for batch in batches:
        for column in batch.columns:
            column.to_numpy(zero_copy_only=False)
        rows += batch.num_rows
print(json.dumps({"work": time.perf_counter() - start, "rows": rows, "peak": peak()}))
"""
)

# The prepare stage's run(), as stages/prepare.py calls it, with data.source: table; profiled
# (PROFILE, REPORT below) in one more run per large file.
PREPARE_SETUP = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, "stages")
import prepare
from torchreg.config import TableConfig, load_params
spec = json.loads(sys.argv[1])
base = load_params("params.yaml").data
table = TableConfig(path=spec["path"], target="y")
cfg = base.model_copy(update={"source": "table", "table": table})
out = Path(spec["out"])
outputs = {split: out / f"{split}.npy" for split in ("train", "val", "test")}
run = prepare.run
"""

PREPARE_RUN = """
start = time.perf_counter()
prepared = run(cfg, outputs, out / "features.json")
work = time.perf_counter() - start
result = {"work": work, "rows": sum(prepared.rows.values()), "peak": peak()}
"""

PANDAS = (
    PEAK
    + """
import json, sys, time
import pandas as pd
spec = json.loads(sys.argv[1])
start = time.perf_counter()
if spec["format"] == "csv":
    frame = pd.read_csv(spec["path"], usecols=spec["columns"], dtype="float64")
else:
    frame = pd.read_parquet(spec["path"], columns=spec["columns"])
print(json.dumps({"work": time.perf_counter() - start, "rows": len(frame), "peak": peak()}))
"""
)

# The profiled prepare run: exclusive wall time per wrapped function (a generator's time is
# that of its next() calls), the rest being prepare's own loop (row masks, scratch writes);
# and cProfile's top functions by their own time.
PROFILE = """
import cProfile, pstats
from collections import defaultdict
from torchreg.data import split
from torchreg.data.table import Table as Source
spent, stack = defaultdict(float), []
def enter(name):
    stack.append([name, time.perf_counter(), 0.0])
def leave():
    name, began, inner = stack.pop()
    took = time.perf_counter() - began
    spent[name] += took - inner
    if stack:
        stack[-1][2] += took
def timed(name, fn):
    def wrapper(*args, **kwargs):
        enter(name)
        try:
            return fn(*args, **kwargs)
        finally:
            leave()
    return wrapper
def timed_gen(name, fn):
    def wrapper(*args, **kwargs):
        items = fn(*args, **kwargs)
        while True:
            enter(name)
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                leave()
            yield item
    return wrapper
PHASES = {
    "open + schema": (Source, "__init__", timed),
    "arrow read + parse": (Source, "_arrow_batches", timed_gen),
    "to numpy + range check": (Source, "_as_array", timed),
    "file unchanged check": (Source, "batches", timed_gen),
    "missing check": (split, "_handle_missing", timed),
    "row hash + split": (split, "assign", timed),
    "scratch re-read": (split, "_chunks", timed_gen),
    "moments": (split, "_moments", timed),
    "standardise": (split, "_standardized", timed_gen),
    "float32 + sha256 + write": (split, "write_rows", timed),
}
for label, (owner, name, wrap) in PHASES.items():
    setattr(owner, name, wrap(label, getattr(owner, name)))
run = timed("masks + scratch write + rest", run)
profiler = cProfile.Profile()
profiler.enable()
"""

REPORT = """
profiler.disable()
stats = pstats.Stats(profiler).stats
top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:6]
result["phases"] = dict(spent)
result["top"] = [
    [name if file == "~" else f"{Path(file).name}:{name}", tt]
    for (file, _, name), (_, _, tt, _, _) in top
]
"""


def child(code: str, spec: dict) -> tuple[float, dict]:
    """Run a child script in the repo; its wall seconds and what it printed, with its CPU
    seconds (user + system) added as "cpu": on a shared machine they vary less than wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        cwd=ROOT,
        env={**os.environ, **QUIET},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{spec}: failed\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.splitlines()[-1])
    report["cpu"] = sum(getattr(after, k) - getattr(before, k) for k in ("ru_utime", "ru_stime"))
    return seconds, report


MODES = ("reader", "prepare", "pandas")


def script(mode: str, profile: bool = False) -> str:
    if mode == "reader":
        return READER
    if mode == "pandas":
        return PANDAS
    return "".join(
        [
            PEAK,
            PREPARE_SETUP,
            PROFILE if profile else "",
            PREPARE_RUN,
            REPORT if profile else "",
            "print(json.dumps(result))\n",
        ]
    )


def measure_file(info: dict, out: Path, repeats: int) -> dict[str, list[tuple[float, dict]]]:
    """Every mode on one file, in turn, `repeats` times: per mode the (wall s, child's report)
    of each run. Each run's rows are checked against the file's."""
    spec = {
        "path": info["path"],
        "format": info["format"],
        "columns": COLUMNS,
        "block_bytes": BLOCK_BYTES,
        "chunk_rows": CHUNK_ROWS,
        "out": str(out),
    }
    runs: dict[str, list] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            got = child(script(mode), spec)
            if got[1]["rows"] != info["rows"]:
                raise RuntimeError(f"{mode} read {got[1]['rows']:,} rows of {info['rows']:,}")
            runs[mode].append(got)
            shutil.rmtree(out, ignore_errors=True)  # no dirty pages left for the next run
            out.mkdir()
    return runs


def profile_file(info: dict, out: Path) -> dict:
    spec = {"path": info["path"], "format": info["format"], "out": str(out)}
    _, report = child(script("prepare", profile=True), spec)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    return report


def warm(path: str) -> None:
    """Read a file once so that every timed run finds it in the page cache."""
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def summary(runs: list[tuple[float, dict]]) -> dict[str, float]:
    walls = [wall for wall, _ in runs]
    works = [report["work"] for _, report in runs]
    return {
        "wall": statistics.median(walls),
        "wall_min": min(walls),
        "work": statistics.median(works),
        "work_min": min(works),
        "cpu": statistics.median(report["cpu"] for _, report in runs),
        "peak": max(report["peak"] for _, report in runs),
    }


REFERENCE = {"csv": "pandas.read_csv", "parquet": "pandas.read_parquet"}
READER_NAME = {"csv": "pyarrow.csv.open_csv", "parquet": "pyarrow ParquetFile.iter_batches"}


def bench_table(table: Table, repeats: int, work: Path, gb: float) -> None:
    """Time and peak memory of prepare against the reader alone (and pandas), on a CSV of about
    `gb` GB and one of `gb` / 8, each also as Parquet, written under `work` and removed after."""
    folder = work / "table"
    folder.mkdir()
    try:
        started = time.perf_counter()
        files = write_tables(folder, gb)
        print(f"  (wrote the tables in {time.perf_counter() - started:.0f} s)", flush=True)
        out = folder / "out"
        out.mkdir()
        results = {}
        for name, info in files.items():
            warm(info["path"])
            results[name] = {m: summary(r) for m, r in measure_file(info, out, repeats).items()}
            add_file_rows(table, name, info, results[name])
        for kind in ("csv", "parquet"):
            small, large = results[f"small {kind}"], results[f"large {kind}"]
            for mode in ("reader", "prepare"):
                ratio = large[mode]["peak"] / small[mode]["peak"]
                table.add(
                    f"  peak RSS, {kind} {files[f'small {kind}']['rows']:,} -> "
                    f"{files[f'large {kind}']['rows']:,} rows: {mode}",
                    f"{small[mode]['peak'] / 2**20:.0f} -> {large[mode]['peak'] / 2**20:.0f} "
                    f"MiB = {ratio:.2f}x",
                    f"flat (<= {FLAT_LIMIT}x)" if mode == "prepare" else "",
                    ratio <= FLAT_LIMIT if mode == "prepare" else None,
                )
        for kind in ("csv", "parquet"):
            report = profile_file(files[f"large {kind}"], out)
            phases = sorted(report["phases"].items(), key=lambda kv: -kv[1])
            total = sum(report["phases"].values())
            table.add(
                f"  where prepare's time goes, {kind} {files[f'large {kind}']['bytes'] / 1e9:.2f}"
                f" GB (one run, exclusive s; {total:.1f} s in all)",
                ", ".join(f"{label} {secs:.2f}" for label, secs in phases),
            )
            table.add(
                f"  cProfile, {kind}: top functions by own time (s)",
                ", ".join(f"`{name}` {secs:.2f}" for name, secs in report["top"]),
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def add_file_rows(table: Table, name: str, info: dict, got: dict[str, dict]) -> None:
    kind, size = info["format"], info["bytes"]
    reader = got["reader"]
    what = f"table, {kind} {size / 1e9:.3f} GB ({info['rows']:,} rows x 10 columns)"

    def figures(s: dict) -> str:
        return (
            f"{s['wall']:.2f} s (min {s['wall_min']:.2f}; work {s['work']:.2f}, min "
            f"{s['work_min']:.2f}; {s['cpu']:.2f} CPU s), peak RSS {s['peak'] / 2**20:.0f} MiB = "
            f"{s['peak'] / size:.2f}x the file"
        )

    table.add(f"{what}: {READER_NAME[kind]} alone", figures(reader))
    judged = name.startswith("large")
    for mode, label in (("prepare", "prepare stage"), ("pandas", f"{REFERENCE[kind]} (reference)")):
        s = got[mode]
        ratio = s["wall"] / reader["wall"]
        table.add(
            f"  {label}",
            f"{figures(s)}; {ratio:.2f}x the reader (min {s['wall_min'] / reader['wall_min']:.2f}x"
            f", work {s['work'] / reader['work']:.2f}x, CPU {s['cpu'] / reader['cpu']:.2f}x)",
            f"<= {PREPARE_LIMIT}x the reader" if mode == "prepare" and judged else "",
            ratio <= PREPARE_LIMIT if mode == "prepare" and judged else None,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="CSV size in GB (default: 1.0)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = Table()
    with tempfile.TemporaryDirectory(prefix="torchreg-bench-") as tmp:
        bench_table(results, args.repeats, Path(tmp), args.gb)
    print(f"\n{results.markdown()}")


if __name__ == "__main__":
    main()
