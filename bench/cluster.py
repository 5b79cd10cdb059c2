"""The sweep on a Dask cluster (experiments/cluster_sweep.py) against DVC's queue: the same
8-experiment grid on a local cluster of 2 workers and with `dvc queue start -j 2`, where one
experiment's time goes on a worker, and how gathering grows from 8 to 32 experiments."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from common import Table, fresh_copy, measured, stage_costs

# isort: split
# common puts experiments/ on the path
from cluster_sweep import connect, expand_grid, gather, prepare, run_grid, table, varying_keys
from sweep import set_params
from sweeps import GRID, N_GRID, RERUN, timed_sweep

WORKERS = 2
# Gathering only: tiny training, so that 32 experiments cost little; the grid differs from the
# timed one, so nothing is found already done.
GATHER_GRIDS = {
    8: ("train.lr=0.011,0.012,0.013,0.014", "train.seed=0,1", "train.epochs=5"),
    32: (
        "train.lr=0.021,0.022,0.023,0.024,0.025,0.026,0.027,0.028",
        "train.seed=0,1,2,3",
        "train.epochs=5",
    ),
}


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def new_baseline(repo: Path) -> None:
    """An empty commit pushed to origin: a baseline without experiments, so every point runs."""
    git(repo, "commit", "-q", "--allow-empty", "-m", "sweep baseline")
    git(repo, "push", "-q", "origin", "HEAD:main")


def dask_sweep(repo: Path, grid: tuple[str, ...], scratch: Path) -> dict:
    """The command's steps, in process, timed: local cluster start, tasks, gather + table."""
    start = time.perf_counter()
    points = expand_grid(grid)
    sweep = prepare(repo)
    with connect(None, WORKERS) as client:
        started = time.perf_counter()
        outcomes, tasks = run_grid(client, sweep, points, str(scratch))
    failed = [o.name for o in outcomes if o.status != "done"]
    if failed:
        raise RuntimeError(f"experiments not run or failed: {failed}: {outcomes}")
    t = time.perf_counter()
    gather(repo, [o.name for o in outcomes])
    table(repo, outcomes, varying_keys(points))
    gathered = time.perf_counter() - t
    return {
        "total": time.perf_counter() - start,
        "cluster": started - start,
        "tasks": tasks,
        "gather": gathered,
        "outcomes": outcomes,
    }


def bench_cluster(table_: Table, repeats: int, work: Path, epochs: int | None) -> None:
    repo = fresh_copy(work / "cluster" / "repo")
    if epochs:
        set_params(repo, train__epochs=epochs)
    # The baseline a user sweeps from: reproduced, committed, on origin, its data in the remote
    # (the repo's default, ../torchreg-dvc-storage, a folder both reach here).
    origin = work / "cluster" / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    git(repo, "remote", "set-url", "origin", str(origin))
    git(repo, "config", "user.name", "bench")
    git(repo, "config", "user.email", "bench@localhost")
    measured(["dvc", "repro"], repo)
    git(repo, "commit", "-qam", "baseline", "--allow-empty")
    measured(["dvc", "push"], repo)
    queue: list[float] = []
    runs: list[dict] = []
    for i in range(repeats):  # interleaved, so a slow spell hits both alike
        queue.append(timed_sweep(repo, GRID, WORKERS)[1])
        new_baseline(repo)
        runs.append(dask_sweep(repo, GRID, work / "cluster" / f"scratch{i}"))  # cold workers
    q = statistics.median(queue)
    d = statistics.median(r["total"] for r in runs)
    n = N_GRID
    table_.add(f"{n} experiments, queueing + `dvc queue start -j {WORKERS}`", f"{q:.1f} s")
    table_.add(
        f"{n} experiments on a local Dask cluster of {WORKERS} workers "
        "(`experiments/cluster_sweep.py`: cluster start, tasks, gather)",
        f"{d:.1f} s = {d / q:.2f}x of the queue",
        "<= 1.0x of the queue",
        d / q <= 1.0,
    )

    # Gathering (dvc exp pull of every experiment, then the table) as the grid grows.
    gathers = {}
    for size, grid in GATHER_GRIDS.items():
        new_baseline(repo)
        gathers[size] = dask_sweep(repo, grid, work / "cluster" / "scratch-gather")["gather"]
    small, big = gathers[8], gathers[32]
    table_.add(
        "gather (dvc exp pull + table), 8 -> 32 experiments",
        f"{small:.1f} s -> {big:.1f} s ({big / small:.1f}x for 4x the experiments; "
        f"{small / 8:.2f} -> {big / 32:.2f} s each)",
    )

    # One experiment, taken apart: means over every experiment of every run (a worker clones
    # once, for its first task: the mean is each experiment's share).
    outcomes = [o for r in runs for o in r["outcomes"]]

    def mean(key: str) -> float:
        return statistics.mean(o.timings[key] for o in outcomes)

    set_params(repo, train__lr=0.003)  # the stages alone, in the workspace
    costs = stage_costs(repo, RERUN, repeats)
    subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, check=True)
    stages = sum(whole for _, whole in costs.values())
    cluster = statistics.median(r["cluster"] for r in runs)
    tasks = statistics.median(r["tasks"] for r in runs)
    gathered = statistics.median(r["gather"] for r in runs)
    busy = mean("clone") + mean("dvc") + mean("push")
    # A worker's share of the tasks' wall time not spent in a task: Dask's scheduling and the
    # round trips between tasks.
    sched = tasks * WORKERS / n - busy
    table_.add(
        "  per experiment (means)",
        f"scheduling {sched:.2f} + clone/fetch {mean('clone'):.2f} + DVC "
        f"{mean('dvc') - stages:.2f} + stages {stages:.2f} + push {mean('push'):.2f} s; "
        f"gather {gathered / n:.2f} s per experiment; cluster start {cluster:.1f} s per sweep",
    )
