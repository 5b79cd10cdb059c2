"""What every benchmark section shares: the results table, timing helpers, fresh repo copies.

Every figure is a median of repeats; every target is a ratio of two things measured side by
side in the same run, because shared machines are noisy.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's python and dvc, whatever PATH says
sys.path.insert(0, str(ROOT / "experiments"))
# dvc.yaml's commands say `python`: the venv's, in every process started from here (the queue's
# workers included), even when the venv is not activated.
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
STAGES = ("validate", "prepare", "train", "evaluate", "plot")  # dvc.yaml's order
QUIET = {"PYTHONPATH": "src", "TORCHREG_LOG_LEVEL": "WARNING"}


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, measured: str, target: str = "", verdict: bool | None = None):
        mark = "" if verdict is None else ("met" if verdict else "NOT met")
        self.rows.append((what, measured, target, mark))
        print(f"  {what}: {measured}  {target} {mark}", flush=True)

    def ratio(self, what: str, ours: float, base: float, base_name: str, limit: float) -> None:
        """A target row: `ours` seconds against `limit` x `base` seconds, with the ratio."""
        self.add(
            what,
            f"{ours:.2f} s = {ours / base:.2f}x {base_name} ({base:.2f} s)",
            f"<= {limit:g}x {base_name}",
            ours / base <= limit,
        )

    def markdown(self) -> str:
        lines = ["| measurement | figure (median) | target | |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    fn()  # warm-up: lazy imports and allocator caches are not what is measured
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# Peak RSS must come from a small parent: a child forked from this process (which holds
# torch) would report this process's memory as its own peak, from before its exec.
_WAIT = """
import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=sys.stderr)
_, status, usage = os.wait4(proc.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int]:
    """Run a command; return its wall seconds and peak resident memory in bytes."""
    env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile() as log:
        result = subprocess.run(
            [sys.executable, "-c", _WAIT, *cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        seconds, rss, code = result.stdout.split()
        if int(code) != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read().decode()[-3000:]}")
    return float(seconds), int(rss)


def median_of(cmd: list[str], cwd: Path, repeats: int, env: dict | None = None) -> float:
    return statistics.median(measured(cmd, cwd, env)[0] for _ in range(repeats))


def run_stage(repo: Path, stage: str) -> tuple[float, int]:
    """One pipeline stage as its own process, as `dvc repro` runs it."""
    return measured([sys.executable, f"stages/{stage}.py"], repo, QUIET)


def stage_costs(
    repo: Path, stages: tuple[str, ...], repeats: int
) -> dict[str, tuple[float, float]]:
    """Per stage, the medians of (interpreter start + the script's module-level imports, the
    whole stage); the difference is the stage's own work (lazy imports such as DVCLive's
    included). Runs in `repo`'s workspace, so its outputs are rewritten in place."""
    costs = {}
    for stage in stages:
        imports = f"import sys; sys.path.insert(0, 'stages'); import {stage}"
        costs[stage] = (
            median_of([sys.executable, "-c", imports], repo, repeats, QUIET),
            statistics.median(run_stage(repo, stage)[0] for _ in range(repeats)),
        )
    return costs


def describe_costs(costs: dict[str, tuple[float, float]]) -> str:
    return ", ".join(
        f"{stage} {whole:.2f} s = {start:.2f} start+imports + {whole - start:.2f} work"
        for stage, (start, whole) in costs.items()
    )


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    dvc_version = subprocess.run(
        [BIN / "dvc", "--version"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__},"
        f" dvc {dvc_version}, {torch.get_num_threads()} torch threads"
    )


def fresh_copy(dest: Path) -> Path:
    """A clone of the committed repo with its own DVC cache, ready for dvc commands."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


PROJECT_OUTPUTS = ("data", "models", "dvclive", "metrics", "plots")


def clean_outputs(repo: Path, outputs: tuple[str, ...] = PROJECT_OUTPUTS) -> None:
    """Back to a fresh clone's state with an empty cache: `dvc repro` then runs every stage."""
    for name in (*outputs, ".dvc/cache"):
        shutil.rmtree(repo / name, ignore_errors=True)
    (repo / "dvc.lock").unlink(missing_ok=True)
    # Put back the tracked files the folders held (data/.gitignore, ...).
    subprocess.run(["git", "checkout", "-q", "--", *outputs], cwd=repo, capture_output=True)
