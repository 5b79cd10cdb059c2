"""Time per step on the linear model: SGD's fast path, Adam through autograd and torch.optim
(AutogradStep, the old path) and Adam's fast path (FastLinearAdam), side by side in one run.

    python bench/adam_step.py [--features 4 20 60] [--repeats 7] [--batch 16] [--epochs 20]

Two figures per path, each the median of interleaved repeats (the paths take turns, so a
noisy neighbour slows all of them alike):
- fit: a whole `fit` (shuffling, batching, the epoch loss) divided by its steps;
- call: the step alone, on batches made beforehand.
The ratios are Adam's over SGD's on the same figure; the goal is fast Adam <= 1.5x SGD.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from torchreg import cpu  # noqa: E402
from torchreg.config import load_params  # noqa: E402
from torchreg.model import LinearRegression  # noqa: E402
from torchreg.training import (  # noqa: E402
    AutogradStep,
    FastLinearAdam,
    FastLinearSGD,
    fit,
    seeded,
)

PATHS = {
    "sgd (FastLinearSGD)": ("sgd", FastLinearSGD),
    "adam old (AutogradStep)": ("adam", AutogradStep),
    "adam new (FastLinearAdam)": ("adam", FastLinearAdam),
}


def rows_of(n_rows: int, n_features: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n_features)
    x = torch.randn(n_rows, n_features, generator=g)
    y = x @ torch.randn(n_features, generator=g) + 0.5 + 0.1 * torch.randn(n_rows, generator=g)
    return torch.cat([x, y[:, None]], dim=1)


def model_of(n_features: int) -> LinearRegression:
    model = LinearRegression(n_features)
    with torch.no_grad():
        model.w.normal_(0, 0.01, generator=seeded(0, "init"))
    return model


def time_fit(cfg, rows: torch.Tensor, cls) -> float:
    """Seconds per step of a whole fit."""
    model = model_of(rows.shape[1] - 1)
    step = cls(model, cfg)
    steps = cfg.epochs * -(-len(rows) // cfg.batch_size)
    start = time.perf_counter()
    fit(model, rows, cfg, seeded(0, "shuffle"), step=step)
    return (time.perf_counter() - start) / steps


def time_call(cfg, rows: torch.Tensor, cls) -> float:
    """Seconds per call of the step alone, on batches gathered beforehand."""
    model = model_of(rows.shape[1] - 1)
    step = cls(model, cfg)
    order = torch.randperm(len(rows), generator=seeded(0, "shuffle"))
    batches = list(step.batches(rows, order, cfg.batch_size))
    total = torch.zeros((), dtype=torch.float64)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        for x, y, m in batches:
            step(x, y, m, total)
    return (time.perf_counter() - start) / (cfg.epochs * len(batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, nargs="+", default=[4, 20, 60])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--loss", default="mae", choices=["mae", "mse", "huber"])
    args = parser.parse_args()

    cpu.use("portable")  # what a stage runs with by default (one thread, pinned kernels)
    params = load_params(ROOT / "params.yaml").resolved("synthetic", 500)
    print(f"machine: {cpu.cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"linear model, batch {args.batch}, {args.rows} rows, {args.epochs} epochs per timing, "
        f"loss {args.loss}, median of {args.repeats} interleaved repeats"
    )
    for n_features in args.features:
        rows = rows_of(args.rows, n_features)
        cfgs = {
            name: params.train.model_copy(
                update={
                    "optimizer": optimizer,
                    "batch_size": args.batch,
                    "epochs": args.epochs,
                    "loss": args.loss,
                    "lr": 0.01,
                }
            )
            for name, (optimizer, _) in PATHS.items()
        }
        times: dict[tuple[str, str], list[float]] = {}
        for name, (_, cls) in PATHS.items():  # warm-up: lazy imports, allocator caches
            time_fit(cfgs[name].model_copy(update={"epochs": 1}), rows, cls)
        for _ in range(args.repeats):
            for name, (_, cls) in PATHS.items():
                for what, timer in (("fit", time_fit), ("call", time_call)):
                    times.setdefault((name, what), []).append(timer(cfgs[name], rows, cls))
        print(f"\n{n_features} features:")
        for what in ("fit", "call"):
            median = {name: statistics.median(times[name, what]) * 1e6 for name in PATHS}
            sgd = median["sgd (FastLinearSGD)"]
            for name in PATHS:
                print(
                    f"  {what:4s} {name:26s} {median[name]:7.1f} us/step  "
                    f"{median[name] / sgd:5.2f}x sgd"
                )
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
