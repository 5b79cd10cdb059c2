"""Drive `dvc exp run --queue` from Python: queue a set, run it with N workers, read results.

Used by experiments/activations.py and the benchmark; everything goes through the dvc CLI, so
what works here works the same typed by hand.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml


def set_params(repo: Path, **changes: object) -> None:
    """Set keys given as section__key=value (e.g. train__epochs=5) in repo/params.yaml."""
    path = repo / "params.yaml"
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        data[section][name] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def dvc(*args: str, check: bool = True) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def queue(experiments: Mapping[str, Iterable[str]], shared: Iterable[str] = ()) -> None:
    """Queue one experiment per name with `-S` overrides; old experiments of a name go first."""
    for name in experiments:  # one by one: a name that is not there fails the whole call
        dvc("exp", "remove", name, check=False)
    for name, overrides in experiments.items():
        sets = [arg for s in (*shared, *overrides) for arg in ("-S", s)]
        dvc("exp", "run", "--queue", "--name", name, *sets)


def run_queue(jobs: int, poll_s: float = 2.0) -> float:
    """Start `jobs` workers and wait until nothing is queued or running; return the wall time.

    Each `dvc queue status` costs about half a CPU-second: polling faster would steal a core
    from the workers on a small machine.
    """
    start = time.perf_counter()
    dvc("queue", "start", "--jobs", str(jobs))
    while True:
        status = dvc("queue", "status")
        if not any(w in status for w in ("Queued", "Running")) and "0 active" in status:
            return time.perf_counter() - start
        time.sleep(poll_s)


def results(names: Iterable[str]) -> dict[str, dict]:
    """For each named experiment: state, rev, params and metrics, from `dvc exp show --json`."""
    wanted, found = set(names), {}
    for baseline in json.loads(dvc("exp", "show", "--json")):
        for exp in baseline.get("experiments") or []:
            if exp.get("name") not in wanted:
                continue
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            found[exp["name"]] = {
                "state": (exp.get("executor") or {}).get("state", "success"),
                "rev": rev["rev"],
                "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {}),
                "metrics": {
                    path: (m or {}).get("data", {})
                    for path, m in (data.get("metrics") or {}).items()
                },
            }
    return found
