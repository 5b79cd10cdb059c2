"""Drive DVC experiments from Python: set params, queue a set, run it with N workers, read the
results. Used by experiments/activations.py, the benchmark and the tests; every call takes the
repository it works on, and everything goes through DVC (CLI or `dvc.api`), so what works here
works the same typed by hand.

A library, not a command: import it (`sys.path.insert(0, "experiments")`, then `from sweep
import queue, run_queue, results`), as experiments/activations.py does.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ruamel.yaml import YAML

BIN = Path(sys.executable).parent  # the venv's dvc, whatever PATH says


def set_params(repo: Path, **changes: object) -> None:
    """Set keys given as section__key=value (e.g. train__epochs=5) in repo/params.yaml, keeping
    its comments (a round trip through ruamel.yaml, which reads YAML 1.2 as DVC does)."""
    yaml = YAML()
    path = Path(repo) / "params.yaml"
    data = yaml.load(path.read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        data[section][name] = value
    with path.open("w") as f:
        yaml.dump(data, f)


def dvc(repo: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run([BIN / "dvc", *args], cwd=repo, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def queue(repo: Path, experiments: Mapping[str, Iterable[str]], shared: Iterable[str] = ()) -> None:
    """Queue one experiment per name with `-S` overrides; old experiments of a name go first.
    Through the CLI, one call per experiment (a name each), exactly as typed by hand; a grid
    without names goes in one call (queue_grid)."""
    for name in experiments:  # one by one: a name that is not there fails the whole call
        dvc(repo, "exp", "remove", name, check=False)
    for name, overrides in experiments.items():
        sets = [arg for s in (*shared, *overrides) for arg in ("-S", s)]
        dvc(repo, "exp", "run", "--queue", "--name", name, *sets)


def queue_grid(repo: Path, *sweeps: str) -> list[str]:
    """Queue the grid of `-S` sweeps (e.g. "train.lr=0.001,0.01", "train.seed=0,1": 4
    experiments) with one `dvc exp run --queue` call, as typed by hand; return the names DVC
    gave them. One DVC start for the whole grid, not one per experiment."""
    out = dvc(repo, "exp", "run", "--queue", *(arg for s in sweeps for arg in ("-S", s)))
    names = re.findall(r"^Queued experiment '([^']+)'", out, flags=re.MULTILINE)
    if not names:
        raise RuntimeError(f"no queued experiment named in dvc's output:\n{out}")
    return names


# How long experiments may wait queued with no DVC worker before the run gives up: a worker
# takes seconds to start, and a minute or more on a loaded machine (seen at load 7 on 2 cores).
NO_WORKER_S = 120


def pending(repo: Path) -> int:
    """Experiments queued or running, from DVC's own queue (what `dvc queue status` lists)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        tasks = dvc_repo.experiments.celery_queue.status()
    return sum(task["status"] in ("Queued", "Running") for task in tasks)


def run_queue(
    repo: Path, jobs: int, poll_s: float = 1.0, progress: Callable[[int], None] | None = None
) -> float:
    """Start `jobs` workers and wait until nothing is queued or running; return the wall time
    from the start to the end of the last experiment. `progress`, if given, is called with the
    number of experiments still queued or running whenever it changes.

    The workers' output goes to a file: they outlive `dvc queue start`, and a pipe they inherit
    would keep its reader waiting until they exit. The end is when the last experiment's git
    ref was written (its file's time), so the poll's period adds nothing to the figure.
    """
    started, start = time.time(), time.perf_counter()
    with open(Path(repo) / ".dvc" / "tmp" / "queue-start.log", "w") as log:
        subprocess.run(
            [BIN / "dvc", "queue", "start", "--jobs", str(jobs)],
            cwd=repo,
            stdout=log,
            stderr=log,
            check=True,
        )
    idle_since, left = None, None
    while now := pending(repo):
        if progress and now != left:
            progress(now)
        left = now
        time.sleep(poll_s)
        if _workers(repo):
            idle_since = None
        elif (idle_since := idle_since or time.monotonic()) < time.monotonic() - NO_WORKER_S:
            raise RuntimeError(
                f"experiments still queued in {repo} but no worker for {NO_WORKER_S} s"
            )
    polled = time.perf_counter() - start
    refs = Path(repo) / ".git" / "refs" / "exps"
    ends = [p.stat().st_mtime for p in refs.rglob("*") if p.is_file()] if refs.is_dir() else []
    ends = [end for end in ends if end >= started]
    return min(polled, max(ends) - started) if ends else polled


def _workers(repo: Path) -> int:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return len(dvc_repo.experiments.celery_queue.worker_status())


def stop_workers(repo: Path, timeout_s: float = 60.0) -> None:
    """Wait until the queue's workers are gone, so that a later `run_queue` starts its own: an
    idle DVC worker lingers for 10 s (DVC's TemporaryWorker timeout) and would take tasks queued
    for it (a `-j 1` run right after a `-j 2` one would get two workers).

    Never `dvc queue stop`: sent when one of the workers has already gone, its shutdown message
    stays in the queue's broker and stops the next worker of that name the moment it starts,
    after one task, leaving the rest of the queue unrun."""
    deadline = time.monotonic() + timeout_s
    while _workers(repo):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"queue workers in {repo} still running {timeout_s:g} s after the queue emptied"
            )
        time.sleep(0.5)


def results(repo: Path, names: Iterable[str]) -> dict[str, dict]:
    """For each named experiment: its state, params and metrics, from `dvc.api.exp_show`."""
    import dvc.api

    wanted, found = set(names), {}
    for row in dvc.api.exp_show(repo=str(repo)):
        if row.get("Experiment") in wanted:
            found[row["Experiment"]] = {
                "state": row.get("State") or "Success",
                "rev": row.get("rev"),
                "row": row,
            }
    return found


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    sys.exit("sweep: a library with nothing to run; see --help")
