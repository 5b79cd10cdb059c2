"""The tutorial's multi-layer lesson as a reproducible experiment set.

On a nonlinear target (data.target = quadratic) it queues, and runs with `dvc queue start`:
  linear           the tutorial's x @ w + b
  mlp, none        stacked Linear layers with nothing between them: still one linear map
  mlp, sigmoid / tanh / relu   the same stack with an activation
then writes activations/activations.json (each run's metrics and learned curve),
activations/activations.png (the figure) and activations/activations.md (the table): a folder
git ignores, so the lesson leaves the repo clean (a sweep after it still runs). The page
docs/activations.md shows a committed run: `--out-dir docs --page docs/activations.md` rewrites
its table (between its `activations` markers) and figure. The
experiments start from the committed params.yaml (git HEAD's) plus the settings below; a
workspace params.yaml that differs is refused unless --workspace says to use it. Run from the
repo root, with a committed baseline:
  python experiments/activations.py [--jobs 2]
`--redraw` rebuilds the table and figure from OUT_DIR/activations.json alone, without running the
experiments again.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from torchreg.files import write_bytes, write_json  # noqa: E402
from torchreg.plotting import TRUTH, save  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import queue, results, run_queue  # noqa: E402

SHARED = [
    "data.target=quadratic",
    "data.n_train=2000",
    "model.hidden=[16, 16]",
    "train.optimizer=adam",
    "train.lr=0.01",
]
VARIANTS = {
    "lesson-linear": ["model.kind=linear"],
    "lesson-mlp-none": ["model.kind=mlp", "model.activation=none"],
    "lesson-mlp-sigmoid": ["model.kind=mlp", "model.activation=sigmoid"],
    "lesson-mlp-tanh": ["model.kind=mlp", "model.activation=tanh"],
    "lesson-mlp-relu": ["model.kind=mlp", "model.activation=relu"],
}
FEATURE = 0  # the feature with the largest weight (8.1): the clearest curve
START, END = "<!-- activations:start -->", "<!-- activations:end -->"


def label(row: dict) -> str:
    """`linear` or `mlp <activation>`, from an experiment's row of `dvc.api.exp_show`."""
    kind = row["model.kind"]
    return "linear" if kind == "linear" else f"mlp {row['model.activation']}"


def table(record: dict) -> str:
    lines = [
        "| model | test MAE | train MAE | closed-form linear fit, test MAE | noise floor |",
        "|---|---|---|---|---|",
    ]
    for r in record["runs"]:
        lines.append(
            f"| {r['label']} | {r['test_mae']:.4g} | {r['train_mae']:.4g}"
            f" | {r['reference_test_mae']:.4g} | {r['noise_floor_mae']:.3g} |"
        )
    return "\n".join(lines)


def curves(rev: str) -> dict[str, list[float]]:
    text = subprocess.run(
        ["git", "show", f"{rev}:plots/curves.tsv"], capture_output=True, text=True, check=True
    ).stdout
    rows = [
        r
        for r in csv.DictReader(io.StringIO(text), delimiter="\t")
        if int(float(r["feature"])) == FEATURE
    ]
    return {k: [float(r[k]) for r in rows] for k in ("x", "model", "truth")}


def collect(found: dict, settings: list[str]) -> dict:
    """What the table and figure need from the finished experiments, in one JSON-able dict."""
    runs = []
    for name in VARIANTS:
        row = found[name]["row"]
        c = curves(found[name]["rev"])
        runs.append(
            {
                "name": name,
                "label": label(row),
                "test_mae": row["test.mae"],
                "train_mae": row["train.mae"],
                "reference_test_mae": row["reference.test_mae"],
                "noise_floor_mae": row["noise_floor_mae"],
                "x": c["x"],
                "model": c["model"],
                "truth": c["truth"],
            }
        )
    return {"settings": settings, "feature": FEATURE, "runs": runs}


COLORS = {
    "linear": "#AAAAAA",
    "mlp none": "#E08A2E",
    "mlp sigmoid": "#2CA02C",
    "mlp tanh": "#D62728",
    "mlp relu": "#9467BD",
}


def figure(record: dict) -> plt.Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), width_ratios=[3, 2])
    runs = record["runs"]
    for r in runs:
        # linear goes under as a wide pale band, so "mlp none" stays visible where they cross
        wide = r["label"] == "linear"
        left.plot(
            r["x"],
            r["model"],
            color=COLORS.get(r["label"]),
            lw=6 if wide else 1.8,
            alpha=0.6 if wide else 1.0,
            solid_capstyle="butt",
            label=r["label"],
            zorder=1 if wide else 2,
        )
    left.plot(runs[0]["x"], runs[0]["truth"], "--", color=TRUTH, lw=1.2, label="true f", zorder=3)
    flat = [r for r in runs if r["label"] in ("linear", "mlp none")]
    if len(flat) == 2:
        # Both are straight lines (the collapse), but not the same one: say so with their slopes.
        slopes = [(r["model"][-1] - r["model"][0]) / (r["x"][-1] - r["x"][0]) for r in flat]
        x, y = flat[0]["x"][0], min(flat[0]["model"][0], flat[1]["model"][0])
        left.annotate(
            "linear and mlp none: both straight lines\n"
            f"(slopes {slopes[0]:.2f} and {slopes[1]:.2f}), no bend",
            xy=(x, y),
            xytext=(2, -8),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=8.5,
        )
    left.set(
        xlabel=f"feature x{record['feature']} (other features at 0)",
        ylabel="y",
        title="What each model learned along one feature",
    )
    # Below the axes: inside, any corner would hide part of a curve.
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, frameon=False, fontsize=9)
    # A dot plot: the position is the value, so no bar length pretends to start at some floor.
    labels = [r["label"] for r in runs]
    maes = [r["test_mae"] for r in runs]
    ys = list(range(len(runs)))[::-1]
    right.scatter(maes, ys, s=40, color=[COLORS.get(n) for n in labels], zorder=3)
    for y, v in zip(ys, maes, strict=True):
        right_side = v < max(maes) / 2  # the large values' labels go left, clear of the line
        right.annotate(
            f"{v:.3g}",
            (v, y),
            xytext=(7 if right_side else -7, 0),
            textcoords="offset points",
            ha="left" if right_side else "right",
            va="center",
            fontsize=9,
        )
    reference = runs[0]["reference_test_mae"]
    right.axvline(reference, color=TRUTH, ls="--", lw=1, zorder=2)
    right.annotate(
        f"closed-form\nlinear fit {reference:.3g}",
        (reference, ys[-1] - 0.4),
        xytext=(-4, 0),
        textcoords="offset points",
        ha="right",
        va="center",
        fontsize=8.5,
    )
    right.set_yticks(ys, labels)
    right.set_ylim(-0.7, len(runs) - 0.3)
    right.set_xlim(0, max(maes + [reference]) * 1.18)
    right.grid(axis="y", visible=False)
    floor = runs[0]["noise_floor_mae"]
    right.set(xlabel=f"test MAE (noise floor {floor:.2g})", title="Test error, quadratic target")
    return fig


def write(record: dict, out_dir: Path, page: Path | None) -> str:
    """The figure into out_dir, the table (and the figure's link) between the markers of page
    (by default a page of its own, out_dir/activations.md)."""
    if page is None:
        page = out_dir / "activations.md"
        page.parent.mkdir(parents=True, exist_ok=True)
        if not page.exists():
            page.write_text(f"# The multi-layer lesson\n\n{START}\n{END}\n")
    md = table(record)
    settings = ", ".join(record["settings"])
    figure_path = out_dir / "activations.png"
    save(figure(record), figure_path)
    link = Path(os.path.relpath(figure_path.resolve(), page.resolve().parent)).as_posix()
    block = (
        f"{START}\nGenerated by `python experiments/activations.py` ({settings}).\n\n"
        f"{md}\n\n![activations]({link})\n{END}"
    )
    text = page.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"activations: error: {page} has no {START} ... {END} block to fill")
    text = re.sub(f"{START}.*?{END}", lambda _: block, text, flags=re.S)
    write_bytes(page, text.encode())
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2, help="queue workers (default 2)")
    parser.add_argument("--epochs", type=int, default=200, help="train.epochs for every run")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("activations"),
        help="where the figure, the record and (without --page) the table go",
    )
    parser.add_argument(
        "--page", type=Path, help="a page whose `activations` block gets the table and figure"
    )
    parser.add_argument(
        "--workspace",
        action="store_true",
        help="start from the workspace's params.yaml even where it differs from git HEAD's",
    )
    parser.add_argument(
        "--redraw",
        action="store_true",
        help="skip the experiments; rebuild the outputs from OUT_DIR/activations.json",
    )
    args = parser.parse_args(argv)
    recorded = args.out_dir / "activations.json"
    if args.redraw:
        try:
            print(write(json.loads(recorded.read_text()), args.out_dir, args.page))
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc
            into = args.page or args.out_dir
            print(
                f"activations: error: cannot redraw from {recorded} into {into}: {why} "
                "(run the lesson first, without --redraw)",
                file=sys.stderr,
            )
            return 2
        return 0

    repo = Path.cwd()
    # Queued experiments start from the workspace, uncommitted changes included.
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"]).returncode
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if changed and not args.workspace:
        print(
            f"activations: error: params.yaml differs from git HEAD's ({head or 'no commit'}): "
            "commit it or restore it (git checkout params.yaml), or pass --workspace to start "
            "from it as it is",
            file=sys.stderr,
        )
        return 2
    source = "the workspace's params.yaml" if changed else f"params.yaml at git HEAD ({head})"
    n = len(VARIANTS)
    print(f"activations: {n} experiments from {source}, {args.jobs} workers", file=sys.stderr)
    queue(repo, VARIANTS, shared=[*SHARED, f"train.epochs={args.epochs}"])
    start = time.perf_counter()

    def progress(left: int) -> None:  # as DVC's queue says: a task can be between states
        elapsed = time.perf_counter() - start
        done = n - left
        # The experiments take about as long as each other: the rate so far gives the rest.
        estimate = f", about {elapsed / done * left:.0f} s left" if 0 < done < n else ""
        print(
            f"activations: {left} of {n} queued or running ({elapsed:.0f} s{estimate})",
            file=sys.stderr,
        )

    seconds = run_queue(repo, args.jobs, progress=progress)
    print(f"activations: all {n} finished ({seconds:.0f} s)", file=sys.stderr)
    found = results(repo, VARIANTS)
    failed = [n for n in VARIANTS if found.get(n, {}).get("state") != "Success"]
    if failed:
        print(
            f"activations: failed: {', '.join(failed)}; see `dvc queue logs <name>`",
            file=sys.stderr,
        )
        return 1

    record = collect(found, [*SHARED, f"train.epochs={args.epochs}"])
    write_json(recorded, record)
    print(write(record, args.out_dir, args.page))
    print(
        f"\n{len(VARIANTS)} experiments in {seconds:.0f} s with {args.jobs} workers; "
        f"compare them with: dvc exp show; dvc plots diff {' '.join(VARIANTS)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
