"""How far constant-lr SGD ends from the best linear fit, over data seeds x train seeds.

For every pair it trains the model of params.yaml (in process, the stages' own code) and prints
test MAE against the closed-form least-squares fit of the same training data, and the largest
weight error against data.true_w. Run from the repo root:

    python experiments/seeds.py [--data-seeds 0 1 2] [--train-seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from torchreg.config import load_params
from torchreg.data import make_block
from torchreg.evaluation import least_squares, prediction_errors
from torchreg.model import build_model
from torchreg.training import fit, seeded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    params = load_params()
    ratios, w_errors = [], []
    print("| data seed | train seed | test MAE | least squares, test MAE | ratio | max w error |")
    print("|---|---|---|---|---|---|")
    for data_seed in args.data_seeds:
        data = params.data.model_copy(update={"seed": data_seed})
        train = torch.from_numpy(make_block(data, "train", 0, data.n_train))
        test = torch.from_numpy(make_block(data, "test", 0, data.n_test))
        reference = prediction_errors(least_squares(train), test)["mae"]
        for train_seed in args.train_seeds:
            cfg = params.train.model_copy(update={"seed": train_seed})
            model = build_model(
                params.model, data.n_features, cfg.init_std, seeded(train_seed, "init")
            )
            fit(model, train, cfg, seeded(train_seed, "shuffle"))
            mae = prediction_errors(model, test)["mae"]
            w_error = (model.w.detach().double() - torch.tensor(data.true_w)).abs().max().item()
            ratios.append(mae / reference)
            w_errors.append(w_error)
            cells = [data_seed, train_seed, f"{mae:.7f}", f"{reference:.7f}"]
            cells += [f"{mae / reference:.4f}", f"{w_error:.4f}"]
            print("| " + " | ".join(map(str, cells)) + " |")
    print(
        f"\nratio min {min(ratios):.4f}, mean {statistics.mean(ratios):.4f}, "
        f"max {max(ratios):.4f}; max w error {max(w_errors):.4f}"
    )


if __name__ == "__main__":
    main()
