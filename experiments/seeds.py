"""How far SGD ends from the best linear fit, over data seeds x train seeds x lr schedule and
weight averaging.

For every pair it trains the model of the committed params.yaml (git HEAD's, not the
workspace's, unless --params names a file) in process, with the stages' own code, once per
option below, and prints test MAE as a ratio to the test MAE of the exact minimizer of the
training loss (train.loss), then whether each option stays within 1.001x of it on every pair.
Run from the repository root (with the defaults: 42 s of CPU time, 2 min on a busy 2-core machine):

    PYTHONPATH=src python experiments/seeds.py [--data-seeds 0 1 2] [--train-seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from torchreg.config import ConfigError, Params, load_params
from torchreg.data import make_block
from torchreg.evaluation import least_squares, minimizer, prediction_errors
from torchreg.model import build_model
from torchreg.training import fit, seeded

TARGET = 1.001  # test MAE within this factor of the minimizer's
# name -> train.* changes; "constant" is params.yaml's own train section.
OPTIONS: dict[str, dict] = {
    "constant": {"lr_schedule": "constant", "average": "none"},
    "cosine": {"lr_schedule": "cosine", "average": "none"},
    "step": {"lr_schedule": "step", "average": "none"},
    "constant+swa": {"lr_schedule": "constant", "average": "swa"},
    "cosine+swa": {"lr_schedule": "cosine", "average": "swa"},
}


def committed_params() -> tuple[Params, str]:
    """git HEAD's params.yaml, validated as the stages validate it, and where it came from."""
    try:
        commit = (
            subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, check=True)
            .stdout.decode()
            .strip()
        )
        text = subprocess.run(
            ["git", "show", "HEAD:params.yaml"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        reason = stderr.decode(errors="replace").strip() or str(exc)
        raise ConfigError(
            f"cannot read params.yaml at git HEAD ({reason}); run from the repository root, "
            "or name a file with --params"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_bytes(text)
        return load_params(path), f"params.yaml at git HEAD ({commit})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints the tables as Markdown on stdout, progress on stderr.",
    )
    parser.add_argument(
        "--data-seeds", type=int, nargs="+", default=[0, 1, 2], help="data.seed values"
    )
    parser.add_argument(
        "--train-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="train.seed values"
    )
    parser.add_argument(
        "--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS), help="what to compare"
    )
    parser.add_argument(
        "--params",
        type=Path,
        help="a params file instead of git HEAD's params.yaml (params.yaml: the workspace's)",
    )
    args = parser.parse_args(argv)
    try:
        if args.params:
            params, source = load_params(args.params), str(args.params)
        else:
            params, source = committed_params()
    except ConfigError as exc:
        print(f"seeds: error: {exc}", file=sys.stderr)
        return 2
    params = params.resolved("synthetic", params.data.n_train)  # train's `auto` values
    pairs = len(args.data_seeds) * len(args.train_seeds)
    print(f"seeds: {source}; {pairs} seed pairs x {len(args.options)} options", file=sys.stderr)
    start = time.perf_counter()
    ratios: dict[str, list[float]] = {name: [] for name in args.options}
    ls_ratios, w_errors = [], []
    rows = []
    for data_seed in args.data_seeds:
        data = params.data.model_copy(update={"seed": data_seed})
        train = torch.from_numpy(make_block(data, "train", 0, data.n_train))
        test = torch.from_numpy(make_block(data, "test", 0, data.n_test))
        ls_mae = prediction_errors(least_squares(train), test)["mae"]
        best_mae = prediction_errors(minimizer(train, params.train.loss), test)["mae"]
        for train_seed in args.train_seeds:
            cells = [str(data_seed), str(train_seed), f"{best_mae / ls_mae:.4f}"]
            for name in args.options:
                cfg = params.train.model_copy(update={"seed": train_seed, **OPTIONS[name]})
                model = build_model(
                    params.model, data.n_features, cfg.init_std, seeded(train_seed, "init")
                )
                fit(model, train, cfg, seeded(train_seed, "shuffle"))
                mae = prediction_errors(model, test)["mae"]
                ratios[name].append(mae / best_mae)
                cells.append(f"{mae / best_mae:.4f}")
                if name == "constant":
                    ls_ratios.append(mae / ls_mae)
                    true_w = torch.tensor(data.true_w)
                    w_errors.append((model.w.detach().double() - true_w).abs().max().item())
            rows.append(cells)
            print(
                f"seeds: {len(rows)}/{pairs} pairs ({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    cfg = params.train
    print(f"{source}: train.loss = {cfg.loss}, {cfg.epochs} epochs, lr {cfg.lr}")
    print("test MAE / the minimizer's test MAE:\n")
    print(
        "| data seed | train seed | minimizer / least squares | " + " | ".join(args.options) + " |"
    )
    print("|---" * (3 + len(args.options)) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    worst = [f"{max(r):.4f}" for r in ratios.values()]
    meets = ["yes" if max(r) <= TARGET else "no" for r in ratios.values()]
    print("| **max** | | | " + " | ".join(worst) + " |")
    print(f"| **all <= {TARGET}x** | | | " + " | ".join(meets) + " |")
    if ls_ratios:
        print(
            f"\nconstant lr vs least squares: ratio min {min(ls_ratios):.4f}, "
            f"mean {statistics.mean(ls_ratios):.4f}, max {max(ls_ratios):.4f}; "
            f"max w error {max(w_errors):.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
