"""The pipeline's defaults on every table of bench/tables/collection.json, against scikit-learn.

Per table, two pipeline runs in scratch copies of the repo (model.kind: linear, the defaults,
and model.kind: mlp, the defaults otherwise), each changing only the table's settings:
data.source: table, data.table.{path, target, missing}, data.table.exclude (where the table
has one) and plot.feature: 0. Each run is the stages in turn (`PYTHONPATH=src python
stages/<stage>.py`: validate, prepare, train, evaluate, plot), each one timed; every copy is
of one snapshot of the working tree taken at the start (its commit is printed). From each run's
metrics/evaluate.json: test.mae, reference.minimizer_test_mae (the exact least-absolute-
deviations fit on the training split) and reference.test_mae (least squares).

Then, on the same split (the linear run's data/train.npy and data/test.npy: the model inputs
and the standardised target, float32; data/features.json's standardize.target_mean/target_std
take a prediction back to the table's units), scikit-learn fits on the training split alone,
as the pipeline's reference fits do: QuantileRegressor(quantile=0.5, alpha=0, solver="highs")
(the exact LAD fit again), LinearRegression(), and HistGradientBoostingRegressor(random_state=0)
with the squared (default) and the absolute error loss. scikit-learn is not in the project's
environment: it runs in a subprocess of another interpreter (--sklearn-python), e.g.

    .venv/bin/python -m venv ../skvenv
    ../skvenv/bin/pip install scikit-learn==1.9.1 numpy==2.4.6 scipy==1.17.1

All errors are test MAEs in the table's units. "HGB / LAD" is the better of the two HGB fits
over the pipeline's exact LAD fit.

    python bench/collection.py                           # every table, 2 runs at a time
    python bench/collection.py --tables boston,credit -j 1 --keep
    python bench/collection.py --kinds mlp --no-sklearn --set train.optimizer=adam \\
        --set train.lr=0.01                              # settings on top of the defaults
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "bench" / "tables" / "collection.json"
STAGES = ("validate", "prepare", "train", "evaluate", "plot")
KINDS = ("linear", "mlp")
# Not copied into a scratch folder: the environment, the caches and the stores.
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".dvc", "dvc_plots", "checkpoints", ".ruff_cache", ".pytest_cache",
    "__pycache__", "mutants",
)  # fmt: skip
# A copy's outputs from earlier runs, removed so that nothing stale can be read.
OUTPUTS = (
    "data/train.npy", "data/val.npy", "data/test.npy", "data/features.json",
    "models/model.safetensors", "metrics/evaluate.json",
)  # fmt: skip

SKLEARN = r"""
import json, sys, time
import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, QuantileRegressor

data = sys.argv[1]
scale = json.load(open(f"{data}/features.json"))["standardize"]

def load(split):
    rows = np.load(f"{data}/{split}.npy").astype(np.float64)
    return rows[:, :-1], rows[:, -1]

x_train, y_train = load("train")
x_test, y_test = load("test")
models = {
    "quantile": QuantileRegressor(quantile=0.5, alpha=0, solver="highs"),
    "linear": LinearRegression(),
    "hgb_squared": HistGradientBoostingRegressor(random_state=0),
    "hgb_absolute": HistGradientBoostingRegressor(loss="absolute_error", random_state=0),
}
out = {}
for name, model in models.items():
    start = time.perf_counter()
    model.fit(x_train, y_train)
    seconds = time.perf_counter() - start
    error = np.abs(model.predict(x_test) - y_test).mean() * scale["target_std"]
    out[name] = {"test_mae": float(error), "seconds": seconds}
print(json.dumps(out))
"""

_print_lock = threading.Lock()


def note(*parts: object) -> None:
    with _print_lock:
        print(*parts, file=sys.stderr, flush=True)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line),
            "?",
        )
    except (OSError, subprocess.CalledProcessError):
        model = "?"
    return model


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def table_settings(table: dict, root: Path) -> dict[str, object]:
    settings: dict[str, object] = {
        "data.source": "table",
        "data.table.path": str(root / table["path"]),
        "data.table.target": table["target"],
        "data.table.missing": table["missing"],
        "plot.feature": 0,
    }
    if table.get("exclude"):
        settings["data.table.exclude"] = list(table["exclude"])
    return settings


def set_key(params: dict, key: str, value: object) -> None:
    *head, last = key.split(".")
    node = params
    for part in head:
        node = node[part]
    node[last] = value


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(scratch: Path) -> tuple[Path, str]:
    """One copy of the repo, taken at the start: every run copies it, so that edits to the
    working tree during the runs cannot give two runs two versions of the code. Returns it and
    its commit (with "+ uncommitted changes" where the working tree differs)."""
    source = scratch / "source"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %cI %s"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return source, "?"
    return source, head + (f" + uncommitted changes ({len(dirty) // 2} files)" if dirty else "")


def run_pipeline(
    table: dict, kind: str, extra: dict[str, object], scratch: Path, source: Path, python: str
) -> dict:
    """One run of the stages in a fresh copy of the snapshot: its metrics and stage times."""
    work = scratch / f"{table['name']}-{kind}"
    shutil.copytree(source, work)
    for output in OUTPUTS:
        (work / output).unlink(missing_ok=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    settings = {**table_settings(table, work), "model.kind": kind, **extra}
    for key, value in settings.items():
        set_key(params, key, value)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PYTHONPATH="src")
    times: dict[str, float] = {}
    result: dict = {"work": work, "times": times}
    for stage in STAGES:
        start = time.perf_counter()
        proc = subprocess.run(
            [python, f"stages/{stage}.py"], cwd=work, env=env, capture_output=True, text=True
        )
        times[stage] = time.perf_counter() - start
        if proc.returncode:
            result["error"] = f"{stage} failed (exit {proc.returncode}): {proc.stderr[-1500:]}"
            return result
    result["metrics"] = json.loads((work / "metrics" / "evaluate.json").read_text())
    result["split"] = [digest(work / "data" / f"{s}.npy") for s in ("train", "val", "test")]
    return result


def run_sklearn(data: Path, python: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", SKLEARN, str(data)], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        return {"error": f"sklearn failed (exit {proc.returncode}): {proc.stderr[-1500:]}"}
    return {"fits": json.loads(proc.stdout.splitlines()[-1]), "seconds": seconds}


def fmt(value: float | None, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def report(tables: list[dict], results: dict, kinds: list[str]) -> None:
    header = [
        "table", "rows (train/val/test)", "target mean", "linear (defaults) test MAE",
        "exact LAD test MAE", "linear / LAD", "mlp test MAE", "mlp / LAD",
        "sklearn QuantileRegressor", "LinearRegression", "HGB (squared)", "HGB (absolute)",
        "HGB / LAD", "train s (linear)", "train s (mlp)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    checks = []
    failures = []
    for table in tables:
        name = table["name"]
        runs = {k: results.get((name, k)) or {} for k in kinds}
        for kind, run in runs.items():
            if "error" in run:
                failures.append(f"{name} {kind}: {run['error']}")
        metrics = {k: r.get("metrics") for k, r in runs.items() if r.get("metrics")}
        first = next(iter(metrics.values()), None)
        rows = (first or {}).get("data", {}).get("rows") or {}
        rows_text = "/".join(str(rows.get(s, "?")) for s in ("train", "val", "test"))
        lad = (first or {}).get("reference", {}).get("minimizer_test_mae")
        converged = (first or {}).get("reference", {}).get("minimizer_converged")
        lad_text = fmt(lad) + ("" if converged in (True, None) else " (IRLS, not converged)")

        def test_mae(kind: str, metrics: dict = metrics) -> float | None:
            return metrics[kind]["test"]["mae"] if kind in metrics else None

        def train_s(kind: str, runs: dict = runs) -> str:
            run = runs.get(kind) or {}
            if "error" in run:
                return "FAILED"
            return fmt(run.get("times", {}).get("train"), ".1f")

        sk = (results.get((name, "sklearn")) or {}).get("fits") or {}
        if "error" in (results.get((name, "sklearn")) or {}):
            failures.append(f"{name} sklearn: {results[(name, 'sklearn')]['error']}")
        sk_mae = {k: v["test_mae"] for k, v in sk.items()}
        hgb = [sk_mae[k] for k in ("hgb_squared", "hgb_absolute") if k in sk_mae]
        cells = [
            name, rows_text, fmt(table.get("target_mean")),
            fmt(test_mae("linear")), lad_text, fmt(ratio(test_mae("linear"), lad), ".3f"),
            fmt(test_mae("mlp")), fmt(ratio(test_mae("mlp"), lad), ".3f"),
            fmt(sk_mae.get("quantile")), fmt(sk_mae.get("linear")),
            fmt(sk_mae.get("hgb_squared")), fmt(sk_mae.get("hgb_absolute")),
            fmt(ratio(min(hgb), lad) if hgb else None, ".3f"),
            train_s("linear"), train_s("mlp"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
        splits = {tuple(r["split"]) for r in runs.values() if r.get("split")}
        ls = (first or {}).get("reference", {}).get("test_mae")
        times = " ".join(
            f"{k}: " + "+".join(f"{r['times'][s]:.1f}" for s in STAGES if s in r["times"])
            for k, r in runs.items()
            if r.get("times")
        )
        sk_seconds = " ".join(f"{k} {v['seconds']:.1f}" for k, v in sk.items())
        checks.append(
            f"| {name} | {fmt(ls)} | {fmt(sk_mae.get('linear'))} | {fmt(lad)} | "
            f"{fmt(sk_mae.get('quantile'))} | {converged} | "
            f"{'yes' if len(splits) == 1 else 'NO' if splits else '–'} | {times} | "
            f"{sk_seconds} |"
        )
    print("\n".join(lines))
    print()
    print(
        "Checks: the pipeline's references against scikit-learn's fits of the same split, "
        "and stage seconds (validate+prepare+train+evaluate+plot) per run; sklearn fit seconds."
    )
    print()
    print(
        "| table | pipeline LS test MAE | sklearn LinearRegression | pipeline exact LAD | "
        "sklearn QuantileRegressor | LAD converged | same split in every run | stage seconds "
        "| sklearn fit seconds |"
    )
    print("|" + "---|" * 9)
    print("\n".join(checks))
    for failure in failures:
        print(f"\nFAILED {failure}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", help="comma-separated table names (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="pipeline runs at a time")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="model.kind values to run (default linear,mlp)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml setting for every run, on top of the table's (YAML value)",
    )
    parser.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn fits")
    parser.add_argument(
        "--python",
        default=str(ROOT / ".venv" / "bin" / "python"),
        help="the interpreter that runs the stages",
    )
    parser.add_argument(
        "--sklearn-python",
        default=str(ROOT.parent / "skvenv/bin/python"),
        help="an interpreter with scikit-learn, numpy and scipy",
    )
    args = parser.parse_args(argv)

    tables = json.loads(COLLECTION.read_text())
    if args.tables:
        wanted = args.tables.split(",")
        unknown = sorted(set(wanted) - {t["name"] for t in tables})
        if unknown:
            parser.error(f"unknown tables: {', '.join(unknown)}")
        tables = [t for t in tables if t["name"] in wanted]
    kinds = args.kinds.split(",")
    if bad := sorted(set(kinds) - set(KINDS)):
        parser.error(f"unknown kinds: {', '.join(bad)}")
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected KEY=VALUE")
        extra[key] = yaml.safe_load(value)

    print(f"machine: {machine()}, nproc {os.cpu_count()}, load average at start {load_average()}")
    if extra:
        print(f"settings on top of the defaults: {extra}")
    scratch = Path(tempfile.mkdtemp(prefix="collection_"))
    source, commit = snapshot(scratch)
    print(f"code: {commit} (snapshot taken at the start)")
    results: dict = {}
    # The sklearn fits read the first kind's split (the linear run's, by default).
    split_kind = kinds[0]

    def job(table: dict, kind: str) -> None:
        name = table["name"]
        result = run_pipeline(table, kind, extra, scratch, source, args.python)
        results[(name, kind)] = result
        if "error" in result:
            note(f"{name} {kind}: FAILED {result['error'].splitlines()[0]}")
            return
        m = result["metrics"]
        note(
            f"{name} {kind}: test MAE {m['test']['mae']:.5g}, exact LAD "
            f"{m['reference'].get('minimizer_test_mae')}, train {result['times']['train']:.1f}s"
        )
        if kind == split_kind and not args.no_sklearn:
            results[(name, "sklearn")] = run_sklearn(result["work"] / "data", args.sklearn_python)
            note(f"{name} sklearn: {results[(name, 'sklearn')]}")

    # The longest first: the largest tables' runs would otherwise finish last, one at a time.
    order = sorted(tables, key=lambda t: -t["rows"])
    jobs = [(t, k) for t in order for k in kinds]
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for future in [pool.submit(job, t, k) for t, k in jobs]:
                future.result()
    finally:
        if args.keep:
            print(f"scratch folders kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    total = time.perf_counter() - start
    print()
    report(tables, results, kinds)
    print()
    print(
        f"total {total:.0f}s with {args.jobs} runs at a time; "
        f"load average at end {load_average()}, nproc {os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
