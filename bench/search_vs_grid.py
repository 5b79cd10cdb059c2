"""The adaptive search against a grid of the same params, on a real table.

The task: the cars table (examples/tables/cars.csv, rows with a missing value dropped), the
linear model, the validation MAE after training with early stopping. The grid: train.lr at six
values x train.batch_size at four x train.optimizer at two = 48 trials. The search: the same
params as ranges and choices, at most a third of the grid's trials (16), for several seeds.
Every trial is computed in this process by the stages' own run() functions (the bytes a DVC
experiment of those params would give), so the comparison is of the search's choices, not of
the cluster. The search's own cost per trial (Optuna's ask and tell, and reading a trial's
metric back from its git ref, which a search does and a sweep does not) is timed apart.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Table

sys.path.insert(0, str(ROOT / "experiments"))
from search import Param, best_of, search  # noqa: E402

GRID = {
    "train.lr": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
    "train.batch_size": [8, 16, 32, 64],
    "train.optimizer": ["sgd", "adam"],
}
SPACE = [
    Param("train.lr", "float", 0.001, 0.3, True),
    Param("train.batch_size", "choice", choices=(8, 16, 32, 64)),
    Param("train.optimizer", "choice", choices=("sgd", "adam")),
]
BATCH = 4
SEEDS = (0, 1, 2)
WITHIN = 0.01  # the search's best within 1 % of the grid's


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_stage", ROOT / f"stages/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Objective:
    """val.mae of a point (a tuple of `key=value`), trained in this process, cached by point."""

    def __init__(self, work: Path, epochs: int) -> None:
        import torch

        from torchreg.config import parse_params, read_params_file
        from torchreg.context import RunContext

        self.prepare, self.train, self.evaluate = map(_stage, ("prepare", "train", "evaluate"))
        raw = read_params_file(ROOT / "params.yaml")
        raw["data"]["source"] = "table"
        raw["data"]["table"].update(
            {"path": str(ROOT / "examples/tables/cars.csv"), "missing": "drop"}
        )
        raw["train"].update({"epochs": epochs, "patience": max(10, epochs // 10)})
        self.raw, self.parse, self.work = raw, parse_params, work
        self.ctx = RunContext(torch.device("cpu"))
        self.data = {s: work / f"{s}.npy" for s in ("train", "val", "test")}
        self.features = work / "features.json"
        self.prepare.run(parse_params(raw).data, self.data, self.features)
        self.cache: dict[tuple[str, ...], float] = {}

    def __call__(self, point: tuple[str, ...]) -> float:
        if point in self.cache:
            return self.cache[point]
        raw = json.loads(json.dumps(self.raw))
        for override in point:
            key, value = override.split("=", 1)
            section, name = key.split(".")
            raw[section][name] = json.loads(value) if value[0] in "[0123456789." else value
        params = self.parse(raw)
        out = self.work / "run"
        self.train.run(
            params, self.ctx, self.data["train"], out / "model.safetensors", out / "live", None,
            self.data["val"], self.features,
        )  # fmt: skip
        files = {k: out / f"{k}.out" for k in ("metrics", "predictions", "curves")}
        metrics = self.evaluate.run(
            params.data, out / "model.safetensors", self.data["train"], self.data["test"], files,
            params.train.loss, frozenset(), self.features, self.data["val"],
        )  # fmt: skip
        self.cache[point] = metrics["val"]["mae"]
        return self.cache[point]


def bench_search(table: Table, quick: bool = False) -> None:
    import logging

    logging.disable(logging.INFO)  # the stages' progress lines
    epochs = 20 if quick else 400
    with tempfile.TemporaryDirectory(prefix="torchreg-search-") as tmp:
        objective = Objective(Path(tmp), epochs)
        grid = [
            tuple(f"{k}={v}" for k, v in zip(GRID, values, strict=True))
            for values in itertools.product(*GRID.values())
        ]
        start = time.perf_counter()
        scores = [objective(p) for p in grid]
        grid_s = time.perf_counter() - start
        grid_best = min(scores)
        grid_point = grid[scores.index(grid_best)]
        table.add(
            f"search: the grid, {len(grid)} trials (cars table, linear, {epochs} epochs max)",
            f"best val.mae {grid_best:.5g} at {' '.join(grid_point)}; {grid_s:.1f} s",
        )
        budget = len(grid) // 3
        for seed in SEEDS:
            trials = search(SPACE, budget, seed, BATCH, lambda ps: [objective(p) for p in ps])
            best = best_of(trials, "minimize")
            reached = next(
                (t.number + 1 for t in trials if t.value <= grid_best * (1 + WITHIN)), None
            )
            needed = f"within 1 % after {reached} trials" if reached else "not within 1 %"
            table.add(
                f"  search, seed {seed}: {budget} trials ({budget / len(grid):.2g} of the grid's)",
                f"best val.mae {best.value:.5g} = {best.value / grid_best:.4f}x the grid's; "
                f"{needed}",
                "<= 1.01x the grid's best, <= 1/3 of its trials",
                best.value <= grid_best * (1 + WITHIN),
            )
        # The search's own cost per trial, with free trials: Optuna's ask and tell.
        start = time.perf_counter()
        search(SPACE, budget, 0, BATCH, lambda ps: [float(len(p[0])) for p in ps])
        ask_tell = (time.perf_counter() - start) / budget
        read = _read_back_cost(Path(tmp))
        table.add(
            "  search's overhead per trial over a sweep's",
            f"Optuna ask + tell {ask_tell * 1e3:.1f} ms; reading the metric from the trial's "
            f"git ref {read * 1e3:.1f} ms (and one `dvc exp pull` per batch instead of one per "
            "sweep)",
        )


def _read_back_cost(tmp: Path, n: int = 20) -> float:
    """`git show REF:metrics/evaluate.json`, as the search reads each trial."""
    repo = tmp / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "metrics").mkdir()
    (repo / "metrics/evaluate.json").write_text('{"val": {"mae": 1.0}}\n')
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "m"], cwd=repo, check=True)
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run(
            ["git", "show", "HEAD:metrics/evaluate.json"], cwd=repo, capture_output=True, check=True
        )
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    result = Table()
    bench_search(result, quick="--quick" in sys.argv)
    print(result.markdown())
