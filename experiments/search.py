"""Search params for the best validation metric: Optuna proposes the trials, each trial is one
DVC experiment, run on a Dask cluster by the cluster sweep's machinery, and gathered back.

    python experiments/search.py --space search.yaml --trials 16
    python experiments/search.py --space search.yaml --trials 16 --scheduler tcp://HOST:8786

The space is a small YAML file, a param a line:

    train.lr: {float: [1.0e-4, 0.1], log: true}    # a range of floats, on a log scale
    train.batch_size: {int: [8, 128], log: true}   # a range of integers
    model.hidden: {choice: [[16], [32, 32]]}       # one of these values
    train.optimizer: {choice: [sgd, adam]}

The search is the same every time for the same space, seed, trial count and code: Optuna's TPE
sampler, seeded, is asked for --batch trials at a time (fixed by the search, never by the
cluster), they run in parallel, and their results are told back in trial order, so neither the
number of workers nor the order in which trials finish can change what is proposed next. A
trial is the experiment named by its params (the sweep's names: the same params, the same
experiment), so a trial already on origin is read back, not trained again: a search killed at
any point and run again continues where it stopped and ends with the trials and best of one
that never stopped, and a rerun trains nothing. The metric is read from metrics/evaluate.json
of each trial (default val.mae: the validation split; the test split is never used to choose).

Writes --out (default search/): trials.tsv (a row per trial: its number, experiment, params,
metric and the best so far; `dvc plots show search/trials.tsv -x trial -y best`), search.png
(the metric by trial with the best so far, and against each param) and prints the table of
trials, the best trial and the command that applies it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_sweep  # noqa: E402 - the sweep's machinery, beside this file
from cluster_sweep import SweepError, experiment_name  # noqa: E402

DEFAULT_METRIC = "val.mae"
METRICS_FILE = "metrics/evaluate.json"
MAX_TRIALS = 10_000
MAX_BATCH = 256
MAX_SPACE_BYTES = 64 << 10
MAX_SPACE_VALUES = 10_000

# A trial's params as -S overrides, in the space's order.
Point = tuple[str, ...]
# Runs a batch of distinct points; returns each point's metric (None: it failed).
RunBatch = Callable[[list[Point]], list[float | None]]


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # float, int or choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self):
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        # Optuna's choices must be scalars: a list (model.hidden) goes as its JSON text.
        return CategoricalDistribution([json.dumps(c) for c in self.choices])

    def override(self, value: Any) -> str:
        """`key=value` as `dvc exp run -S` takes it (hydra's syntax)."""
        if self.kind == "choice":
            value = json.loads(value)
            text = json.dumps(value, separators=(",", ":")) if isinstance(value, list) else value
            return f"{self.key}={text}"
        return f"{self.key}={value!r}" if self.kind == "float" else f"{self.key}={int(value)}"


def read_space(path: Path, params_file: Path) -> list[Param]:
    """The space file, each entry checked: one line per mistake, naming the key."""
    from ruamel.yaml import YAML, YAMLError

    from torchreg.errors import UserError
    from torchreg.files import open_input

    try:
        with open_input(path) as f:  # a FIFO or a device is refused, never waited on
            text = f.read(MAX_SPACE_BYTES + 1)
        if len(text) > MAX_SPACE_BYTES:
            raise SweepError(f"{path}: over {MAX_SPACE_BYTES >> 10} KiB: a space is a few lines")
        raw = YAML(typ="safe").load(text.decode("utf-8"))
    except FileNotFoundError:
        raise SweepError(f"--space {path}: not found") from None
    except (OSError, UnicodeDecodeError, YAMLError, UserError, RecursionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SweepError(f"{path}: cannot be read as YAML: {first}") from None
    _check_size(raw, path)
    if not isinstance(raw, dict) or not raw:
        raise SweepError(
            f"{path}: expected a mapping of params, e.g. train.lr: {{float: [1e-4, 0.1]}}"
        )
    known = cluster_sweep.params_keys(params_file)
    return [_param(path, key, spec, known) for key, spec in raw.items()]


def _check_size(raw: Any, path: Path) -> None:
    """Refuse a space of over MAX_SPACE_VALUES values, each YAML alias counted again (a few
    lines of aliases can stand for billions), or one that refers to itself."""
    from torchreg.config import too_many_values

    if too_many_values(raw, MAX_SPACE_VALUES):
        raise SweepError(
            f"{path}: over {MAX_SPACE_VALUES:,} values (each YAML alias counted again): a "
            "space is a few params and their ranges or choices"
        )


def _param(path: Path, key: object, spec: object, known: set[str]) -> Param:
    where = f"{path}: {key}"
    if not isinstance(key, str) or key not in known:
        near = ", ".join(sorted(k for k in known if str(key).split(".")[0] == k.split(".")[0]))
        raise SweepError(
            f"{where}: not a key of params.yaml"
            + (f" (its section has: {near})" if near else " (keys are section.name, e.g. train.lr)")
        )
    if not isinstance(spec, dict) or len({"float", "int", "choice"} & spec.keys()) != 1:
        raise SweepError(
            f"{where}: expected one of {{float: [low, high]}}, {{int: [low, high]}} or "
            "{choice: [values...]} (log: true for a log scale)"
        )
    extra = set(spec) - {"float", "int", "choice", "log"}
    if extra:
        raise SweepError(f"{where}: unknown entry {sorted(extra)[0]!r} (allowed: the kind, log)")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SweepError(f"{where}: log = {log!r}: allowed true or false")
    if "choice" in spec:
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices or log:
            raise SweepError(f"{where}: choice needs a non-empty list of values (and no log)")
        texts = [json.dumps(c) for c in choices]
        if len(set(texts)) != len(texts):
            raise SweepError(f"{where}: a value is listed twice among the choices")
        return Param(key, "choice", choices=tuple(choices))
    kind = "float" if "float" in spec else "int"
    bounds = spec[kind]
    numbers = (int,) if kind == "int" else (int, float)
    if not (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, numbers) and not isinstance(b, bool) for b in bounds)
        and all(math.isfinite(b) for b in bounds)
        and bounds[0] < bounds[1]
    ):
        raise SweepError(f"{where}: {kind} needs [low, high], {kind}s with low < high")
    if log and bounds[0] <= 0:
        raise SweepError(f"{where}: a log scale needs low > 0 (got {bounds[0]})")
    return Param(key, kind, float(bounds[0]), float(bounds[1]), log)


@dataclass
class Trial:
    number: int
    point: Point
    name: str
    value: float | None  # None: the experiment failed


def search(
    space: Sequence[Param],
    trials: int,
    seed: int,
    batch: int,
    run_batch: RunBatch,
    direction: str = "minimize",
    on_batch: Callable[[list[Trial]], None] | None = None,
) -> list[Trial]:
    """Ask `batch` trials at a time, run them, tell their results in trial order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The first batch is drawn at random (TPE needs results to model); TPE proposes the rest.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=batch)
    study = optuna.create_study(direction=direction, sampler=sampler)
    distributions = {p.key: p.distribution() for p in space}
    done: list[Trial] = []
    while len(done) < trials:
        asked = [study.ask(distributions) for _ in range(min(batch, trials - len(done)))]
        points = [tuple(p.override(t.params[p.key]) for p in space) for t in asked]
        unique = list(dict.fromkeys(points))  # the same params twice: one experiment
        values = dict(zip(unique, run_batch(unique), strict=True))
        batch_trials = []
        for t, point in zip(asked, points, strict=True):
            value = values[point]
            if value is None:
                study.tell(t, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(t, value)
            batch_trials.append(Trial(t.number, point, experiment_name(point), value))
        done += batch_trials
        if on_batch is not None:
            on_batch(batch_trials)
    return done


def best_of(trials: Sequence[Trial], direction: str) -> Trial | None:
    scored = [t for t in trials if t.value is not None]
    if not scored:
        return None
    sign = 1 if direction == "minimize" else -1
    return min(scored, key=lambda t: (sign * t.value, t.number))  # ties: the first


def read_metric(repo: Path, commit: str, name: str, metric: str) -> float | None:
    """The metric in METRICS_FILE of an experiment here (pulled), from its git ref."""
    ref = cluster_sweep.exp_ref(commit, name)
    shown = subprocess.run(
        ["git", "show", f"{ref}:{METRICS_FILE}"], cwd=repo, capture_output=True, text=True
    )
    if shown.returncode != 0:
        return None
    value: Any = json.loads(shown.stdout)
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def cluster_runner(client, sweep, metric: str, scratch: str | None) -> RunBatch:
    """Runs a batch as sweep tasks (already-landed trials are only read back)."""

    def run_batch(points: list[Point]) -> list[float | None]:
        outcomes, _ = cluster_sweep.run_grid(client, sweep, points, scratch)
        counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "existed", "failed")}
        print(
            f"search: a batch of {len(points)}: {counts['done']} run, {counts['existed']} already "
            f"on origin, {counts['failed']} failed",
            file=sys.stderr,
        )
        landed = [o.name for o in outcomes if o.status != "failed"]
        cluster_sweep.gather(sweep.repo, landed)
        for out in outcomes:
            if out.status == "failed":
                print(
                    f"search: trial {out.name} ({' '.join(out.point)}) failed on "
                    f"{out.worker or 'a worker'}; the end of its log:\n{out.log_tail}",
                    file=sys.stderr,
                )
        return [
            None if o.status == "failed" else read_metric(sweep.repo, sweep.commit, o.name, metric)
            for o in outcomes
        ]

    return run_batch


def trials_table(
    space: Sequence[Param], trials: Sequence[Trial], metric: str, best: Trial | None
) -> str:
    header = ["trial", "Experiment", *(p.key for p in space), metric]
    rows = []
    for t in trials:
        values = [o.split("=", 1)[1] for o in t.point]
        shown = "failed" if t.value is None else f"{t.value:.5g}"
        mark = " (best)" if best is not None and t.number == best.number else ""
        rows.append([t.number, t.name, *(_short(v) for v in values), shown + mark])
    return cluster_sweep._markdown(header, rows)


def _short(value: str) -> str:
    with contextlib.suppress(ValueError):
        number = float(value)
        if not value.lstrip("-").isdigit():
            return f"{number:.4g}"
    return value


def write_results(
    out: Path, space: Sequence[Param], trials: Sequence[Trial], metric: str, direction: str
) -> None:
    """trials.tsv and search.png in `out` (each written whole, then renamed into place)."""
    from torchreg.files import write_bytes

    better = min if direction == "minimize" else max
    rows, best = [], None
    for t in trials:
        if t.value is not None:
            best = t.value if best is None else better(best, t.value)
        values = [o.split("=", 1)[1] for o in t.point]
        cells = [t.number, t.name, *values, _cell(t.value), _cell(best)]
        rows.append("\t".join(map(str, cells)))
    header = "\t".join(["trial", "experiment", *(p.key for p in space), metric, "best"])
    write_bytes(out / "trials.tsv", ("\n".join([header, *rows]) + "\n").encode())
    write_bytes(out / "search.png", _figure(space, trials, metric, direction))


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def _figure(space: Sequence[Param], trials: Sequence[Trial], metric: str, direction: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    scored = [t for t in trials if t.value is not None]
    better = min if direction == "minimize" else max
    fig, axes = plt.subplots(
        1, 1 + len(space), figsize=(4.2 * (1 + len(space)), 3.8), squeeze=False
    )
    ax = axes[0][0]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xs = [t.number for t in scored]
    ax.scatter(xs, [t.value for t in scored], s=14, color="#4c72b0", label="trial")
    so_far, line = None, []
    for t in scored:
        so_far = t.value if so_far is None else better(so_far, t.value)
        line.append(so_far)
    ax.step(xs, line, where="post", color="#c44e52", lw=1.5, label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="The search")
    ax.legend(loc="best", frameon=False, fontsize=8)
    for ax, (j, p) in zip(axes[0][1:], enumerate(space), strict=True):
        values = [t.point[j].split("=", 1)[1] for t in scored]
        if p.kind == "choice":
            labels = sorted(set(values))
            ax.scatter([labels.index(v) for v in values], [t.value for t in scored], s=14)
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            ax.scatter([float(v) for v in values], [t.value for t in scored], s=14)
            if p.log:
                ax.set_xscale("log")
            ax.tick_params(axis="x", labelsize=8, labelrotation=30)
        ax.set(xlabel=p.key, title=f"{metric} against {p.key}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="search",
        description=__doc__.split("\n\n")[0],
        epilog="Runs the commit checked out here, as it is on origin; see docs/sweeps.md.",
    )
    parser.add_argument("--space", type=Path, required=True, help="the search space (YAML)")
    parser.add_argument("--trials", type=int, default=16, help="trials in all (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    parser.add_argument(
        "--batch",
        type=int,
        default=4,
        help="trials proposed and run together (default 4); part of what defines the search",
    )
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help=f"a metric of {METRICS_FILE} to optimise (default {DEFAULT_METRIC}; not test.*)",
    )
    parser.add_argument(
        "--direction", choices=("minimize", "maximize"), default="minimize", help="default minimize"
    )
    parser.add_argument("--out", type=Path, default=Path("search"), help="folder for the results")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="an existing Dask scheduler")
    parser.add_argument("--workers", type=int, default=None, help="local cluster only: workers")
    parser.add_argument("--scratch", metavar="DIR", help="where each worker keeps its clones")
    args = parser.parse_args(argv)
    if not 1 <= args.trials <= MAX_TRIALS:
        parser.error(f"--trials {args.trials}: allowed 1..{MAX_TRIALS}")
    if not 1 <= args.batch <= MAX_BATCH:
        parser.error(f"--batch {args.batch}: allowed 1..{MAX_BATCH}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed {args.seed}: allowed 0..{2**32 - 1}")
    if args.metric.startswith("test."):
        parser.error(
            f"--metric {args.metric}: the test split is reported, never used to choose: use "
            "val.* (the validation split)"
        )
    if args.workers is not None and (args.scheduler or args.workers < 1):
        parser.error("--workers: 1 or more, for the local cluster only (not with --scheduler)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repo = Path.cwd()
    try:
        space = read_space(args.space, repo / cluster_sweep.PARAMS_FILE)
        sweep = cluster_sweep.prepare(repo)
        with cluster_sweep.connect(args.scheduler, args.workers) as client:
            run_batch = cluster_runner(client, sweep, args.metric, args.scratch)
            trials = search(
                space, args.trials, args.seed, args.batch, run_batch, args.direction,
                on_batch=lambda done: print(
                    f"search: trials {done[0].number}..{done[-1].number} told", file=sys.stderr
                ),
            )  # fmt: skip
        write_results(args.out, space, trials, args.metric, args.direction)
    except SweepError as e:
        print(f"search: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "search: interrupted; the trials already on origin are kept: the same command "
            "continues the search",
            file=sys.stderr,
        )
        return 130
    best = best_of(trials, args.direction)
    print(trials_table(space, trials, args.metric, best))
    failed = sum(t.value is None for t in trials)
    if best is None:
        print(f"search: every trial failed ({failed}); nothing to apply", file=sys.stderr)
        return 1
    print(
        f"search: best trial {best.number}: {best.name} ({args.metric} {best.value:.6g}); "
        f"apply it with: dvc exp apply {best.name}"
    )
    print(f"search: {len(trials)} trials, {failed} failed; results in {args.out}/", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
