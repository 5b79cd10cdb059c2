"""Metrics, the closed-form reference fit, and the data behind the plots.

Everything works a chunk of rows at a time (data.CHUNK_ROWS), so a data file far larger than
one chunk is never copied whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from torchreg.config import DataConfig, noise_floor_mae
from torchreg.data import CHUNK_ROWS, DataFile, as_rows, true_function
from torchreg.model import LinearRegression

CURVE_POINTS = 61
SAMPLE_ROWS = 1000  # rows of the test set written for the scatter plots


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i : i + CHUNK_ROWS]) for i in range(0, len(x), CHUNK_ROWS)])


Rows = torch.Tensor | DataFile  # in memory, or read from a file a chunk at a time


def chunks(rows: Rows) -> Iterator[torch.Tensor]:
    yield from (torch.from_numpy(block) for block in as_rows(rows).blocks())


@torch.inference_mode()
def prediction_errors(model: nn.Module, rows: Rows) -> dict[str, float]:
    """MAE and RMSE of `model` on rows (features, then y), summed in float64."""
    abs_sum = sq_sum = 0.0
    n = 0
    for chunk in chunks(rows):
        r = (model(chunk[:, :-1]) - chunk[:, -1]).double()
        abs_sum += r.abs().sum().item()
        sq_sum += (r * r).sum().item()
        n += len(chunk)
    return {"mae": abs_sum / n, "rmse": (sq_sum / n) ** 0.5}


@torch.inference_mode()
def least_squares(rows: Rows) -> LinearRegression:
    """The best linear fit in the squared-error sense, from the normal equations in float64.

    Accumulating X'X chunk by chunk keeps memory flat; in float64 this is as accurate as a QR
    solve for the well-conditioned designs here.
    """
    d = as_rows(rows).columns - 1
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    moment = torch.zeros(d + 1, dtype=torch.float64)
    for chunk in chunks(rows):
        chunk = chunk.double()
        design = torch.cat([chunk[:, :-1], torch.ones(len(chunk), 1, dtype=torch.float64)], 1)
        gram += design.T @ design
        moment += design.T @ chunk[:, -1]
    solution = torch.linalg.lstsq(gram, moment.unsqueeze(1)).solution.squeeze(1)
    reference = LinearRegression(d)
    reference.w.copy_(solution[:d].float())
    reference.b.copy_(solution[d].float())
    return reference


def evaluate(model: nn.Module, cfg: DataConfig, train: Rows, test: Rows) -> dict:
    """All metrics, nested so `dvc exp show` shows columns like test.mae and train.mae."""
    reference = least_squares(train)
    test_err = prediction_errors(model, test)
    metrics = {
        "test": test_err,
        "train": {"mae": prediction_errors(model, train)["mae"]},
        "reference": {
            "test_mae": prediction_errors(reference, test)["mae"],
            "train_mae": prediction_errors(reference, train)["mae"],
        },
        "noise_floor_mae": noise_floor_mae(cfg.noise_std),
    }
    # With no noise the closed-form fit can be exact (MAE 0): no ratio then, not a crash.
    reference_mae = metrics["reference"]["test_mae"]
    metrics["test"]["mae_vs_reference"] = test_err["mae"] / reference_mae if reference_mae else None
    if isinstance(model, LinearRegression):
        w = model.w.detach().double()
        b = model.b.detach().double().item()
        metrics["learned"] = {"w": w.tolist(), "b": b}
        if cfg.target == "linear":
            true_w = torch.tensor(cfg.true_w, dtype=torch.float64)
            metrics["learned"]["w_max_error"] = (w - true_w).abs().max().item()
            metrics["learned"]["b_error"] = abs(b - cfg.true_b)
    return _rounded(metrics)


def _rounded(obj: object) -> object:
    """Round floats so metrics files read well and diff cleanly."""
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return float(f"{obj:.7g}") if isinstance(obj, float) else obj


@torch.inference_mode()
def prediction_rows(
    model: nn.Module, test: torch.Tensor
) -> tuple[list[str], Iterator[list[float]]]:
    """A sample of the test set with predictions: the rows behind the scatter plots.

    `partial_x{j}` is the partial residual of feature j: y minus what the model attributes to
    the other features, i.e. residual + model(x with every feature but j set to 0). Plotted
    against x_j it scatters around the model's curve for feature j (exactly so for `linear`).
    """
    sample = test[:SAMPLE_ROWS]
    x, y = sample[:, :-1], sample[:, -1]
    predicted = model(x)
    residual = y - predicted
    d = x.shape[1]
    # One feature at a time, into one table: memory stays linear in the number of features.
    table = torch.empty(len(x), 2 * d + 3)
    table[:, :d], table[:, d], table[:, d + 1], table[:, d + 2] = x, y, predicted, residual
    if isinstance(model, LinearRegression):  # model(x_j alone) = x_j * w_j + b
        table[:, d + 3 :] = residual[:, None] + (x * model.w + model.b)
    else:
        alone = torch.zeros_like(x)
        for j in range(d):
            alone[:, j] = x[:, j]
            table[:, d + 3 + j] = residual + model(alone)
            alone[:, j] = 0
    header = [f"x{j}" for j in range(d)] + ["actual", "predicted", "residual"]
    header += [f"partial_x{j}" for j in range(d)]
    return header, (row.tolist() for row in table)


@torch.inference_mode()
def curve_rows(
    model: nn.Module, cfg: DataConfig, test: torch.Tensor
) -> tuple[list[str], list[list[float]]]:
    """For each feature j: the model and the true function along feature j, others held at 0.

    For the linear model this is the tutorial's line w[j] * x + b.
    """
    d = test.shape[1] - 1
    table = []
    for j in range(d):
        lo, hi = test[:SAMPLE_ROWS, j].min().item(), test[:SAMPLE_ROWS, j].max().item()
        grid = torch.linspace(lo, hi, CURVE_POINTS)
        x = torch.zeros(CURVE_POINTS, d)
        x[:, j] = grid
        model_y, true_y = model(x), true_function(cfg, x.numpy())
        points = zip(grid.tolist(), model_y.tolist(), true_y.tolist(), strict=True)
        table += [[j, g, m, t] for g, m, t in points]
    return ["feature", "x", "model", "truth"], table
