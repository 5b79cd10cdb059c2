"""Sweeps, what users wait for: 8 queued experiments with 1 and 2 queue workers, against the
tutorial script, and where one queued experiment's time goes."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, Table, describe_costs, fresh_copy, measured, stage_costs
from sweep import queue_grid, results, run_queue, set_params, stop_workers

# 8 experiments that change train params only: data comes from the cache, not regenerated.
# Queued as a user would, in one call: dvc exp run --queue -S train.lr=... -S train.seed=0,1
GRID = ("train.lr=0.001,0.002,0.005,0.01", "train.seed=0,1")
N_GRID = 8  # 4 x 2
# What a train-params experiment runs: prepare is restored from the cache.
RERUN = ("validate", "train", "evaluate", "plot")


def timed_sweep(repo: Path, sweeps: tuple[str, ...], jobs: int) -> tuple[float, float]:
    """Queue the grid of `sweeps` in one call and run it; return (seconds queueing, seconds from
    queueing to the last experiment's end). Every experiment must have succeeded."""
    start = time.perf_counter()
    experiments = queue_grid(repo, *sweeps)
    queued = time.perf_counter() - start
    total = queued + run_queue(repo, jobs, poll_s=0.5)
    stop_workers(repo)
    states = {name: row["state"] for name, row in results(repo, experiments).items()}
    if states != dict.fromkeys(experiments, "Success"):
        log = (repo / ".dvc/tmp/queue-start.log").read_text()[-2000:]
        raise RuntimeError(f"experiments did not all succeed: {states}\n{log}")
    return queued, total


def bench_sweep(table: Table, repeats: int, work: Path, epochs: int | None) -> None:
    repo = fresh_copy(work / "sweep")
    if epochs:
        set_params(repo, train__epochs=epochs)
    # The baseline a user sweeps from: reproduced and committed, its data in the cache.
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    measured(["dvc", "repro"], repo)
    subprocess.run([*git, "commit", "-qam", "baseline", "--allow-empty"], cwd=repo, check=True)
    tutorial = [sys.executable, str(ROOT / "bench/tutorial.py"), str(work / "tutorial.png")]
    t_tut: list[float] = []
    walls: dict[int, list[float]] = {1: [], 2: []}
    queueing: list[float] = []
    for _ in range(repeats):  # interleaved, so a slow spell hits all alike
        t_tut.append(measured(tutorial, work)[0])
        for jobs in walls:
            queued, total = timed_sweep(repo, GRID, jobs)
            queueing.append(queued)
            walls[jobs].append(total)
    tut, one, two = (statistics.median(t) for t in (t_tut, walls[1], walls[2]))
    n = N_GRID
    table.add(
        f"{n} queued experiments (train params), queueing + `dvc queue start -j 1`",
        f"{one:.1f} s ({one / n:.2f} s each; queueing {statistics.median(queueing):.1f} s)",
    )
    table.add(
        f"{n} queued experiments, queueing + `dvc queue start -j 2`",
        f"{two:.1f} s = {two / one:.2f}x of -j 1",
        "<= 0.6x of -j 1",
        two / one <= 0.6,
    )
    table.ratio(f"{n} experiments with -j 2 against one tutorial run", two, tut, "tutorial", n)

    # One experiment, taken apart: its wall time less its stages run alone is DVC's own work
    # (stash, celery worker pick-up, temp workspace copy, cache checkout, hashing, commit).
    runs = [timed_sweep(repo, ("train.lr=0.003",), 1) for _ in range(repeats)]
    queued = statistics.median(q for q, _ in runs)
    wall = statistics.median(t for _, t in runs)
    set_params(repo, train__lr=0.003)  # the same work in the workspace, stage by stage
    costs = stage_costs(repo, RERUN, repeats)
    stages = sum(whole for _, whole in costs.values())
    starts = sum(start for start, _ in costs.values())
    table.add(
        "one queued experiment (-j 1), queueing to end",
        f"{wall:.2f} s = queueing {queued:.2f} + DVC in the worker {wall - queued - stages:.2f}"
        f" + stages {stages:.2f} (of which start+imports {starts:.2f})",
    )
    table.add("  its stages, each alone", describe_costs(costs))
