"""Benchmark the pipeline against the tutorial and print one table; write it to BENCHMARKS.md.

Every figure is the median of --repeats runs; every target is a ratio of two things measured
side by side in this same run, because shared machines are noisy.

    python bench/run.py                 # everything (about 25 minutes on 2 cores)
    python bench/run.py --only loop     # sections: loop, pipeline, sweep, cluster, tests, scale,
                                        #   huge, ddp, predict, cpu, checkpoints, table, search
                                        #   (repeatable)
    python bench/run.py --quick         # a smoke run with tiny sizes (used by the tests)

The sections live in bench/loop.py, pipeline.py, sweeps.py, cluster.py, suite.py, scale.py,
predict.py, cpu_settings.py, checkpoints.py, table.py and search_vs_grid.py; bench/common.py
holds the table and the timing helpers they share.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cpu_settings
import predict
from checkpoints import bench_checkpoints
from cluster import bench_cluster
from common import ROOT, Table, machine
from loop import bench_loop
from pipeline import bench_pipeline
from scale import bench_ddp, bench_huge, bench_scale
from search_vs_grid import bench_search
from suite import bench_suite
from sweeps import bench_sweep
from table import bench_table

SECTIONS = (
    "loop",
    "pipeline",
    "sweep",
    "cluster",
    "tests",
    "scale",
    "huge",
    "ddp",
    "predict",
    "cpu",
    "checkpoints",
    "table",
    "search",
)
PREDICT_GB = 0.25  # 1 GB (bench/predict.py's default) takes minutes on 2 cores
TABLE_GB = 1.0  # the size: a CSV of 1 GB (and one of 1/8 GB), each also as Parquet


def bench_predict(table: Table, gb: float) -> None:
    table.add(f"`python -m torchreg.predict` on a {gb:g} GB CSV", predict.measure(gb))


# compute.cpu: portable at most this many times native, on every workload of the CPU bench.
PORTABLE_LIMIT = 1.5


def bench_cpu(table: Table, repeats: int) -> None:
    header, rows = cpu_settings.measure(repeats)
    table.add("compute.cpu: portable (same bytes on any CPU) vs native", header)
    for key, native, pinned, native_median, pinned_median in rows:
        cost = cpu_settings.ratio(key, native, pinned)
        median = cpu_settings.ratio(key, native_median, pinned_median)
        table.add(
            f"  {key}: native / portable (best of {repeats})",
            f"{native:.3g} / {pinned:.3g} = portable {cost:.2f}x native (medians: {median:.2f}x)",
            f"<= {PORTABLE_LIMIT}x",
            cost <= PORTABLE_LIMIT,
        )
    variants, profiles = cpu_settings.breakdown(repeats)
    base = dict(variants)["native"]
    for name, got in variants:
        cells = "; ".join(f"{k.split(' (')[0]} {got[k] / base[k]:.2f}x" for k in base)
        table.add(f"  where it goes: {name}, against native", cells)
    for workload in ("profile wide", "profile evaluate"):
        for mode in ("native", "portable"):
            ops = cpu_settings.top_ops(profiles[mode][workload], 5)
            shown = ", ".join(f"`{k}` {v:,.0f}" for k, v in ops)
            table.add(f"  {workload}, {mode}: top ops, self CPU us", shown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", action="append", choices=SECTIONS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    quick = args.quick
    repeats = 1 if quick else args.repeats
    epochs = 5 if quick else None  # None: the params.yaml default (1000)
    table = Table()
    desc = machine()
    print(f"Machine: {desc}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="torchreg-bench-") as tmp:
        work = Path(tmp)
        if "loop" in sections:
            bench_loop(table, repeats, epochs=5 if quick else 1000)
        if "pipeline" in sections:
            bench_pipeline(table, repeats, work, epochs)
        if "sweep" in sections:
            bench_sweep(table, repeats, work, epochs)
        if "cluster" in sections:
            bench_cluster(table, repeats, work, epochs)
        if "tests" in sections:
            bench_suite(table, work)
        if "scale" in sections:
            sizes = [10_000, 100_000] if quick else [1_000_000, 10_000_000]
            bench_scale(table, min(repeats, 3), work, sizes)
        if "huge" in sections:
            sizes = [100_000, 1_000_000] if quick else [10_000_000, 100_000_000]
            bench_huge(table, min(repeats, 3), work, sizes)
        if "ddp" in sections:
            bench_ddp(table, repeats, work, rows=20_000 if quick else 1_000_000)
        if "predict" in sections:
            bench_predict(table, 0.01 if quick else PREDICT_GB)
        if "cpu" in sections:
            bench_cpu(table, repeats)
        if "checkpoints" in sections:
            rows, epochs = (20_000, 10) if quick else (10_000_000, 10)
            bench_checkpoints(table, repeats, work, rows, epochs)
        if "table" in sections:
            bench_table(table, repeats, work, 0.01 if quick else TABLE_GB)
        if "search" in sections:
            bench_search(table, quick)
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        f"# Benchmarks\n\nMachine: {desc}\n\nCommand: `{command.strip()}` "
        f"(median of {repeats} runs per figure)\n\n{table.markdown()}\n\n"
        + (ROOT / "bench/notes.md").read_text()
    )
    args.out.write_text(text)
    print(f"\n{table.markdown()}\n\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
