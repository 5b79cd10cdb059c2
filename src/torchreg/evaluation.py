"""Metrics, the reference fits (least squares; the minimizer of the training loss, by bounded
iterations), and the data behind the plots.

Everything works a chunk of rows at a time (data.CHUNK_ROWS), so a data file far larger than
one chunk is never copied whole.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from torchreg import parallel
from torchreg.config import DataConfig, noise_floor_mae
from torchreg.data import CHUNK_ROWS, DataFile, as_rows, true_function
from torchreg.errors import DataError
from torchreg.model import LinearRegression, Units
from torchreg.training import HUBER_DELTA, LOSSES

log = logging.getLogger(__name__)

CURVE_POINTS = 61
SAMPLE_ROWS = 1000  # rows of the test set written for the scatter plots
T = TypeVar("T")


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i : i + CHUNK_ROWS]) for i in range(0, len(x), CHUNK_ROWS)])


Rows = torch.Tensor | DataFile  # in memory, or read from a file a chunk at a time


def chunks(rows: Rows) -> Iterator[torch.Tensor]:
    yield from (torch.from_numpy(block) for block in as_rows(rows).blocks())


# Chunks read and computed at once in the portable mode (parallel.ordered_map), as long as
# their working sets hold at most this many bytes together: a wide table's chunks go one at a
# time. A chunk's working set is about CHUNK_BYTES_FACTOR times its float32 rows (the rows,
# their float64 copy with a column of ones, the weighted copy).
AHEAD_BYTES = 256 << 20
CHUNK_BYTES_FACTOR = 4


def per_chunk(fn: Callable[[torch.Tensor], T], rows: Rows) -> Iterator[T]:
    """fn(chunk) for every chunk of rows, in the chunks' order (see chunks), on every core in
    the portable mode: the caller adds the results up in that order, whatever the threads."""
    data = as_rows(rows)
    size = data.chunk_rows
    ahead = AHEAD_BYTES // (size * data.columns * 4 * CHUNK_BYTES_FACTOR)

    def at(start: int) -> T:
        return fn(torch.from_numpy(data.read(start, start + size)))

    return parallel.ordered_map(at, range(0, data.rows, size), ahead)


@torch.inference_mode()
def prediction_errors(model: nn.Module, rows: Rows) -> dict[str, float]:
    """MAE and RMSE of `model` on rows (features, then y), summed in float64."""

    def sums(chunk: torch.Tensor) -> tuple[float, float]:
        r = (model(chunk[:, :-1]) - chunk[:, -1]).double()
        return r.abs().sum().item(), (r * r).sum().item()

    abs_sum = sq_sum = 0.0
    for chunk_abs, chunk_sq in per_chunk(sums, rows):
        abs_sum += chunk_abs
        sq_sum += chunk_sq
    n = as_rows(rows).rows
    if not math.isfinite(sq_sum):  # a NaN or infinity in the sum: never a metric to write
        raise DataError(
            f"{as_rows(rows).path}: the model's predictions are not finite (beyond float32): "
            "its weights are too large for these rows"
        )
    # math.sqrt is the exact instruction; `** 0.5` is the C library's pow, not always so.
    return {"mae": abs_sum / n, "rmse": math.sqrt(sq_sum / n)}


@torch.inference_mode()
def least_squares(rows: Rows, driver: str | None = None) -> LinearRegression:
    """The best linear fit in the squared-error sense, from the normal equations in float64.

    Accumulating X'X chunk by chunk keeps memory flat; in float64 this is as accurate as a QR
    solve for the well-conditioned designs here. `driver` "gelsd" (SVD) gives the
    minimum-norm fit of a singular design (a table's one-hot columns add up to the bias's).
    """
    d = as_rows(rows).columns - 1
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    moment = torch.zeros(d + 1, dtype=torch.float64)

    def products(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        design, y = _design(chunk)
        return design.T @ design, design.T @ y

    for chunk_gram, chunk_moment in per_chunk(products, rows):
        gram += chunk_gram
        moment += chunk_moment
    rcond = SINGULAR if driver == "gelsd" else None
    solution = torch.linalg.lstsq(gram, moment.unsqueeze(1), rcond, driver=driver).solution
    solution = solution.squeeze(1)
    reference = LinearRegression(d)
    reference.w.copy_(solution[:d].float())
    reference.b.copy_(solution[d].float())
    return reference


# A singular value of X'X under SINGULAR times the largest is taken for 0 (one under 1e-6
# times the largest of X): a table's standardised one-hot columns add up to a constant, a
# dependence that float32 rounding leaves only nearly exact. The minimum-norm fit then has no
# part along it, where a rounding's worth of difference would weigh millions.
SINGULAR = 1e-12

# Iteratively reweighted least squares (IRLS) for the mae and huber minimizers: stop when an
# iteration lowers the training loss by less than IRLS_TOL of it (an MM algorithm: the loss
# never rises), or after IRLS_MAX_ITER iterations, or once the iterations have read
# IRLS_MAX_ROWS training rows (each reads the file twice; at least one iteration, so past 10M
# rows they read more): a bound on evaluate's time that depends on the data's size only, never
# on the clock, so the result is the same everywhere. 500 iterations up to 20,000 rows, 10 at
# 1M rows, 1 from 10M rows on. A fit stopped by a limit is an approximation: the metrics say so
# (reference.minimizer_converged: false) and so does a log line.
IRLS_TOL = 1e-12
IRLS_MAX_ITER = 500
IRLS_MAX_ROWS = 20_000_000
# mae: a residual below LAD_EPS times the least-squares fit's mean |residual| is weighted as if
# it were that size (1 / |r| is infinite at 0). This minimizes a loss within n * LAD_EPS * that
# mean of the sum of |r|: a relative error under 1e-9 in the training MAE.
LAD_EPS = 1e-9


def _design(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[x, 1] and y in float64."""
    chunk = chunk.double()
    ones = torch.ones(len(chunk), 1, dtype=torch.float64)
    return torch.cat([chunk[:, :-1], ones], 1), chunk[:, -1]


def _as_model(solution: torch.Tensor) -> LinearRegression:
    d = len(solution) - 1
    model = LinearRegression(d)
    with torch.no_grad():
        model.w.copy_(solution[:d].float())
        model.b.copy_(solution[d].float())
    return model


def _total_loss(rows: Rows, wb: torch.Tensor, loss: str) -> float:
    def chunk_loss(chunk: torch.Tensor) -> float:
        design, y = _design(chunk)
        return LOSSES[loss](design @ wb, y, reduction="sum").item()

    total = 0.0
    for value in per_chunk(chunk_loss, rows):
        total += value
    return total


def _reweighted(rows: Rows, wb: torch.Tensor, weight: object) -> torch.Tensor:
    """argmin of sum weight(r_i) * r_i^2 with the weights of wb's residuals r: one IRLS step."""
    gram = torch.zeros(len(wb), len(wb), dtype=torch.float64)
    moment = torch.zeros(len(wb), dtype=torch.float64)

    def products(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        design, y = _design(chunk)
        v = weight((design @ wb - y).abs())
        return design.T @ (design * v[:, None]), design.T @ (v * y)

    for chunk_gram, chunk_moment in per_chunk(products, rows):
        gram += chunk_gram
        moment += chunk_moment
    # gelsd (SVD): the minimum-norm solution when a feature is constant; the default gelsy
    # returns zeros there.
    solution = torch.linalg.lstsq(gram, moment.unsqueeze(1), SINGULAR, driver="gelsd").solution
    return solution.squeeze(1)


@torch.inference_mode()
def minimizer(rows: Rows, loss: str) -> LinearRegression:
    """The linear model with the least training loss (see minimizer_fit)."""
    return minimizer_fit(rows, loss)[0]


@torch.inference_mode()
def minimizer_fit(rows: Rows, loss: str) -> tuple[LinearRegression, bool]:
    """The linear model with the least training loss, and whether IRLS converged (False: it
    stopped at its iteration limit, and the fit is an approximation). Least squares for mse;
    for mae (least absolute deviations) and huber, IRLS from the least-squares fit, in float64.
    """
    if loss == "mse":
        return least_squares(rows), True
    n = as_rows(rows).rows
    start = torch.zeros(as_rows(rows).columns, dtype=torch.float64)
    wb = _reweighted(rows, start, torch.ones_like)  # least squares, kept in float64
    current = _total_loss(rows, wb, loss)
    if current == 0:  # an exact fit: nothing has a lower loss (and 1 / 0 weights are no use)
        return _as_model(wb), True
    if loss == "mae":
        floor = max(LAD_EPS * current / n, 1e-300)  # never subnormal: 1 / floor stays finite
        weight = lambda a: 1 / a.clamp(min=floor)  # noqa: E731
    else:
        weight = lambda a: HUBER_DELTA / a.clamp(min=HUBER_DELTA)  # noqa: E731
    iterations = min(IRLS_MAX_ITER, max(1, IRLS_MAX_ROWS // (2 * n)))
    for _ in range(iterations):
        candidate = _reweighted(rows, wb, weight)
        value = _total_loss(rows, candidate, loss)
        if value > current:  # rounding at the optimum: keep the better one
            return _as_model(wb), True
        wb, done = candidate, current - value <= IRLS_TOL * current
        current = value
        if done:
            return _as_model(wb), True
    log.warning(
        "the %s minimizer (reference.minimizer_*) is an approximation: its loss was still "
        "falling after %d IRLS iteration(s), the limit for %d training rows "
        "(reference.minimizer_converged: false)",
        loss,
        iterations,
        n,
    )
    return _as_model(wb), False


# The exact least-absolute-deviations fit (a linear program, solved by HiGHS through SciPy)
# up to this many cells of the training split (rows x (features + 1)): the 37,629 x 27 of
# bench/tables' largest table took 23 s on a loaded 2-core Xeon (bounded IRLS, 27 s, had not
# converged). A larger training split gets the bounded IRLS iterations.
LAD_LP_MAX_CELLS = 1_500_000


def exact_lad(rows: Rows) -> torch.Tensor | None:
    """The exact minimizer of sum |y - [x, 1] wb| over the rows, in float64, or None when the
    rows are over LAD_LP_MAX_CELLS or the solver fails.

    Solved as the dual linear program, max y'a subject to [x, 1]'a = 0 and -1 <= a <= 1 (one
    variable a row, one constraint a column): the fit is at a vertex where as many residuals
    as there are columns are 0, the rows whose a lies strictly inside (-1, 1). Those rows'
    equations are solved exactly; the solver's duals are kept if that system is singular.
    """
    from scipy.optimize import linprog  # only here: importing SciPy costs the stage ~0.3 s

    data = as_rows(rows)
    if data.rows * data.columns > LAD_LP_MAX_CELLS:
        return None
    block = np.concatenate(list(data.blocks()))
    design = np.concatenate([block[:, :-1].astype(np.float64), np.ones((len(block), 1))], 1)
    y = block[:, -1].astype(np.float64)
    result = linprog(
        -y, A_eq=design.T, b_eq=np.zeros(design.shape[1]), bounds=(-1, 1), method="highs"
    )
    if result.status != 0:
        return None
    candidates = []
    inside = np.flatnonzero(np.abs(result.x) < 1 - 1e-9)
    if len(inside) == design.shape[1]:
        with contextlib.suppress(np.linalg.LinAlgError):
            candidates.append(np.linalg.solve(design[inside], y[inside]))
    candidates += [-result.eqlin.marginals, result.eqlin.marginals]
    # Any fit plus a part along a direction the design cannot see (one-hot columns adding up
    # to a constant) fits as well: keep none of it, as the minimum-norm least squares does.
    # (With fewer rows than columns every direction past the rows' is blind too: the full
    # decomposition's vt then has them; U is rows x rows, small there.)
    _, singular, vt = np.linalg.svd(design, full_matrices=len(design) < design.shape[1])
    rank = int((singular >= singular[0] * math.sqrt(SINGULAR)).sum())
    blind = vt[rank:]
    candidates = [wb - blind.T @ (blind @ wb) for wb in candidates]
    losses = [np.abs(y - design @ wb).sum() for wb in candidates]
    return torch.from_numpy(candidates[int(np.argmin(losses))])


def evaluate(
    model: nn.Module,
    cfg: DataConfig | None,
    train: Rows,
    test: Rows,
    loss: str = "mae",
    units: Units | None = None,
) -> dict:
    """All metrics, nested so `dvc exp show` shows columns like test.mae and train.mae.

    `cfg` is the synthetic source's truth (its noise floor and true weights), None for a table,
    where the references are the fits on the training split alone. `loss` is train.loss: the
    metrics compare the model with the exact minimizer of that training loss over linear
    models too (reference.minimizer_*, test.mae_vs_minimizer): for the synthetic source's
    linear model, and for any model on a table, where the mae minimizer is solved exactly
    (exact_lad). `units`: a table's standardisation, to give the errors in the table's units."""
    reference = least_squares(train, "gelsd" if cfg is None else None)
    test_err = prediction_errors(model, test)
    test_err["r2"] = r_squared(test_err["rmse"], test)
    metrics = {
        "test": test_err,
        "train": {"mae": prediction_errors(model, train)["mae"]},
        "reference": {
            "test_mae": prediction_errors(reference, test)["mae"],
            "train_mae": prediction_errors(reference, train)["mae"],
        },
    }
    if cfg is not None:
        metrics["noise_floor_mae"] = noise_floor_mae(cfg.noise_std)
    # With no noise the closed-form fit can be exact (MAE 0): no ratio then, not a crash.
    reference_mae = metrics["reference"]["test_mae"]
    metrics["test"]["mae_vs_reference"] = test_err["mae"] / reference_mae if reference_mae else None
    if isinstance(model, LinearRegression) or cfg is None:
        exact = exact_lad(train) if cfg is None and loss == "mae" else None
        if exact is not None:
            best, converged = _as_model(exact), True
        else:
            best, converged = minimizer_fit(train, loss)
        best_test_mae = prediction_errors(best, test)["mae"]
        metrics["reference"]["minimizer_test_mae"] = best_test_mae
        metrics["reference"]["minimizer_train_loss"] = mean_loss(best, train, loss)
        metrics["reference"]["minimizer_converged"] = converged
        ratio = test_err["mae"] / best_test_mae if best_test_mae else None  # None: exact fit
        metrics["test"]["mae_vs_minimizer"] = ratio
    if isinstance(model, LinearRegression):
        w = model.w.detach().double()
        b = model.b.detach().double().item()
        metrics["learned"] = {"w": w.tolist(), "b": b}
        if cfg is not None and cfg.target == "linear":
            true_w = torch.tensor(cfg.true_w, dtype=torch.float64)
            metrics["learned"]["w_max_error"] = (w - true_w).abs().max().item()
            metrics["learned"]["b_error"] = abs(b - cfg.true_b)
    if units is not None:
        in_table_units(metrics, units)
    return rounded(metrics)


# The errors that are in the target's units (scaled back from a standardised target). The
# training losses (reference.minimizer_train_loss, DVCLive's) stay the loss on the
# standardised target, the number the training minimised.
ERRORS_IN_TARGET_UNITS = {
    "test": ("mae", "rmse"),
    "val": ("mae", "rmse"),
    "train": ("mae",),
    "reference": ("test_mae", "train_mae", "minimizer_test_mae"),
}


def in_table_units(metrics: dict, units: Units) -> dict:
    """Scale `metrics`' errors back to the table's units, in place (ratios and r2 are the
    same in any units)."""
    for section, keys in ERRORS_IN_TARGET_UNITS.items():
        for key in keys:
            if key in metrics.get(section, {}):
                metrics[section][key] *= units.y_std
    return metrics


@torch.inference_mode()
def r_squared(rmse: float, rows: Rows) -> float | None:
    """1 - (the model's squared error) / (the squared error of predicting the mean of y), on
    the same rows; None where y is constant (no variance to explain)."""
    total = n = 0
    for chunk in chunks(rows):
        total += chunk[:, -1].double().sum().item()
        n += len(chunk)
    mean = total / n
    spread = sum(((c[:, -1].double() - mean) ** 2).sum().item() for c in chunks(rows)) / n
    return 1 - rmse * rmse / spread if spread > 0 else None


@torch.inference_mode()
def mean_loss(model: LinearRegression, rows: Rows, loss: str) -> float:
    """The mean per-row training loss `loss` of a linear model, in float64."""
    wb = torch.cat([model.w.double(), model.b.double().reshape(1)])
    return _total_loss(rows, wb, loss) / as_rows(rows).rows


def rounded(obj: object) -> object:
    """Round floats so metrics files read well and diff cleanly."""
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return float(f"{obj:.7g}") if isinstance(obj, float) else obj


@torch.inference_mode()
def prediction_rows(
    model: nn.Module, test: torch.Tensor, units: Units | None = None
) -> tuple[list[str], Iterator[list[float]]]:
    """A sample of the test set with predictions: the rows behind the scatter plots.

    `partial_x{j}` is the partial residual of feature j: y minus what the model attributes to
    the other features, i.e. residual + model(x with every feature but j set to 0). Plotted
    against x_j it scatters around the model's curve for feature j (exactly so for `linear`).
    With a table's `units`, every column is in the table's units.
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
    if units is not None:
        table = table.double()
        for j in range(d):
            table[:, j] = units.x(j, table[:, j])
        for j in (d, d + 1, *range(d + 3, 2 * d + 3)):  # actual, predicted, the partials
            table[:, j] = units.y(table[:, j])
        table[:, d + 2] *= units.y_std
    return header, (row.tolist() for row in table)


@torch.inference_mode()
def curve_rows(
    model: nn.Module, cfg: DataConfig | None, test: torch.Tensor, units: Units | None = None
) -> tuple[list[str], list[list[float]]]:
    """For each feature j: the model and (synthetic data: `cfg`) the true function along
    feature j, others held at 0 (a table's standardised features: at their training mean),
    in the table's `units` if given.

    For the linear model this is the tutorial's line w[j] * x + b.
    """
    d = test.shape[1] - 1
    table = []
    for j in range(d):
        lo, hi = test[:SAMPLE_ROWS, j].min().item(), test[:SAMPLE_ROWS, j].max().item()
        grid = torch.linspace(lo, hi, CURVE_POINTS)
        x = torch.zeros(CURVE_POINTS, d)
        x[:, j] = grid
        model_y = model(x).tolist()
        if units is not None:
            grid, model_y = units.x(j, grid), units.y(torch.tensor(model_y)).tolist()
        if cfg is None:
            table += [[j, g, m] for g, m in zip(grid.tolist(), model_y, strict=True)]
            continue
        true_y = true_function(cfg, x.numpy()).tolist()
        table += [[j, g, m, t] for g, m, t in zip(grid.tolist(), model_y, true_y, strict=True)]
    return ["feature", "x", "model"] + (["truth"] if cfg is not None else []), table
