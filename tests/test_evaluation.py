import pytest
import torch

from torchreg.data import ArrayRows, make_block
from torchreg.errors import DataError
from torchreg.evaluation import (
    curve_rows,
    evaluate,
    least_squares,
    mean_loss,
    minimizer,
    minimizer_fit,
    prediction_errors,
    prediction_rows,
)
from torchreg.model import LinearRegression, build_model
from torchreg.training import seeded


def test_least_squares_recovers_exact_solution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)
    w, b = torch.tensor([1.5, -2.0, 0.25]), 0.75
    rows = torch.cat([x, (x @ w + b)[:, None]], 1)
    fit = least_squares(rows)
    assert torch.allclose(fit.w, w, atol=1e-5) and fit.b.item() == pytest.approx(b, abs=1e-5)


def lstsq_oracle(rows: torch.Tensor) -> torch.Tensor:
    """[w, b] of the least-squares fit by a QR solve of the whole design (not the normal
    equations the code accumulates chunk by chunk)."""
    design = torch.cat([rows[:, :-1], torch.ones(len(rows), 1)], 1).double()
    return torch.linalg.lstsq(design, rows[:, -1:].double()).solution.squeeze(1)


def test_least_squares_matches_lstsq_on_noisy_data(params):
    rows = torch.from_numpy(make_block(params.data, "train", 0, 300))
    expected = lstsq_oracle(rows)
    fit = least_squares(rows)
    assert torch.allclose(fit.w.double(), expected[:4], atol=1e-5)
    assert fit.b.item() == pytest.approx(expected[4].item(), abs=1e-5)


def test_errors_are_mae_and_rmse():
    model = LinearRegression(1)
    rows = torch.tensor([[0.0, 1.0], [0.0, -3.0]])  # model predicts 0
    assert prediction_errors(model, rows) == {"mae": 2.0, "rmse": pytest.approx(5**0.5)}


def oracle_mae(w: torch.Tensor, b: float, rows: torch.Tensor) -> float:
    return (rows[:, :-1].double() @ w.double() + b - rows[:, -1].double()).abs().mean().item()


def test_evaluate_reports_weight_errors_and_reference(params):
    """A model off the true weights by known amounts, against oracles computed here: its own
    errors, the closed-form fit's test and train MAE, and their ratio."""
    train = torch.from_numpy(make_block(params.data, "train", 0, 500))
    test = torch.from_numpy(make_block(params.data, "test", 0, 200))
    model = LinearRegression(4).requires_grad_(False)
    model.w.copy_(torch.tensor(params.data.true_w) + torch.tensor([0.1, 0.0, -0.25, 0.05]))
    model.b.copy_(torch.tensor(params.data.true_b - 0.125))
    metrics = evaluate(model, params.data, train, test)
    learned = metrics["learned"]
    assert learned["w_max_error"] == pytest.approx(0.25, rel=1e-5)
    assert learned["b_error"] == pytest.approx(0.125, rel=1e-5)
    assert learned["w"] == pytest.approx(model.w.tolist(), rel=1e-6)
    assert learned["b"] == pytest.approx(model.b.item(), rel=1e-6)
    mae = oracle_mae(model.w, model.b.item(), test)
    r = test[:, :-1].double() @ model.w.double() + model.b.item() - test[:, -1].double()
    assert metrics["test"]["mae"] == pytest.approx(mae, rel=1e-4)
    assert metrics["test"]["rmse"] == pytest.approx(r.square().mean().sqrt().item(), rel=1e-4)
    assert metrics["train"]["mae"] == pytest.approx(oracle_mae(model.w, model.b.item(), train))
    w, b = lstsq_oracle(train).split(4)
    reference = metrics["reference"]
    assert reference["test_mae"] == pytest.approx(oracle_mae(w, b.item(), test), rel=1e-4)
    assert reference["train_mae"] == pytest.approx(oracle_mae(w, b.item(), train), rel=1e-4)
    assert reference["test_mae"] < 0.01 < mae  # the closed-form fit is near the noise floor
    ratio = metrics["test"]["mae_vs_reference"]
    assert ratio == pytest.approx(metrics["test"]["mae"] / reference["test_mae"], rel=1e-4)
    assert metrics["noise_floor_mae"] == 0.007978846  # 0.01 * sqrt(2 / pi), to 7 digits


def test_plot_tables(params):
    test = torch.from_numpy(make_block(params.data, "test", 0, 50))
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    header, rows = prediction_rows(model, test)
    rows = list(rows)
    assert header[:7] == ["x0", "x1", "x2", "x3", "actual", "predicted", "residual"]
    assert len(rows) == 50 and len(rows[0]) == len(header)
    # linear model: the partial residual of feature j is y - sum_{k != j} w_k x_k
    w, b = model.w.detach(), model.b.item()
    x, y = test[:, :4], test[:, 4]
    expected = y - (x @ w - x[:, 3] * w[3])
    assert torch.allclose(
        torch.tensor([r[header.index("partial_x3")] for r in rows]), expected, atol=1e-4
    )
    header, curve = curve_rows(model, params.data, test)
    assert header == ["feature", "x", "model", "truth"] and len(curve) == 4 * 61
    f, x0, m, t = curve[3 * 61]
    assert f == 3 and m == pytest.approx(w[3].item() * x0 + b, abs=1e-5)
    assert t == pytest.approx(8.1 * 0 + 4.0 * x0 + 1.1, abs=1e-5)


def line_with_outlier(n=21):
    """Points exactly on y = 2x + 1, but one far above the line."""
    x = torch.linspace(-1, 1, n)
    y = 2 * x + 1
    y[3] += 40.0
    return torch.stack([x, y], 1)


def test_lad_of_an_intercept_is_the_median():
    y = torch.tensor([0.0, 1.0, 2.0, 10.0, 100.0])
    rows = torch.stack([torch.zeros(5), y], 1)  # a feature that is always 0: only b matters
    assert minimizer(rows, "mae").b.item() == pytest.approx(2.0, abs=1e-6)


def test_lad_ignores_an_outlier_that_least_squares_follows():
    rows = line_with_outlier()
    lad, ls = minimizer(rows, "mae"), least_squares(rows)
    assert lad.w.item() == pytest.approx(2.0, abs=1e-6) and lad.b.item() == pytest.approx(
        1.0, abs=1e-6
    )
    assert abs(ls.b.item() - 1.0) > 1.5  # 40 / 21 of the outlier moves the mean fit


def test_huber_lies_between_lad_and_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=g)
    y = 2 * x + 1 + 0.3 * torch.randn(2000, generator=g)
    y[:100] += 30.0  # far beyond huber's delta of 1: huber bounds their pull, mse does not
    rows = torch.stack([x, y], 1)
    b = {loss: minimizer(rows, loss).b.item() for loss in ("mae", "huber", "mse")}
    assert b["mae"] < b["huber"] < b["mse"]
    for loss in ("mae", "huber"):  # a minimizer: nudging it any way raises the training loss
        fit = minimizer(rows, loss)
        best = mean_loss(fit, rows, loss)
        for dw, db in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
            nudged = LinearRegression(1).requires_grad_(False)
            nudged.w.copy_(fit.w + dw)
            nudged.b.copy_(fit.b + db)
            assert mean_loss(nudged, rows, loss) > best


def test_mse_minimizer_is_the_least_squares_fit(params):
    rows = torch.from_numpy(make_block(params.data, "train", 0, 300))
    fit, converged = minimizer_fit(rows, "mse")
    expected = lstsq_oracle(rows)  # an independent solve, not the code's least_squares
    assert converged
    assert torch.allclose(fit.w.double(), expected[:4], atol=1e-5)
    assert fit.b.item() == pytest.approx(expected[4].item(), abs=1e-5)


@pytest.mark.parametrize("loss", ["mae", "huber", "mse"])
def test_evaluate_compares_with_the_minimizer(params, loss):
    """A model that is not the minimizer: the ratio is its test MAE over the minimizer's, and
    the minimizer's figures are those of the fit of that loss."""
    train = torch.from_numpy(make_block(params.data, "train", 0, 500))
    test = torch.from_numpy(make_block(params.data, "test", 0, 200))
    model = LinearRegression(4).requires_grad_(False)
    model.w.copy_(torch.tensor(params.data.true_w) + 0.05)
    best = minimizer(train, loss)
    metrics = evaluate(model, params.data, train, test, loss)
    best_test_mae = oracle_mae(best.w, best.b.item(), test)
    reference = metrics["reference"]
    assert reference["minimizer_test_mae"] == pytest.approx(best_test_mae, rel=1e-4)
    assert reference["minimizer_train_loss"] == pytest.approx(mean_loss(best, train, loss))
    ratio = oracle_mae(model.w, model.b.item(), test) / best_test_mae
    assert metrics["test"]["mae_vs_minimizer"] == pytest.approx(ratio, rel=1e-4)
    assert metrics["test"]["mae_vs_minimizer"] > 2  # far from 1: not the minimizer itself
    # no more than least squares' (metrics are rounded to 7 digits)
    assert reference["minimizer_train_loss"] <= mean_loss(least_squares(train), train, loss) * (
        1 + 1e-6
    )


def test_minimizer_work_is_bounded_by_the_rows_and_says_so(monkeypatch, caplog):
    """IRLS reads the training rows twice an iteration: past IRLS_MAX_ROWS rows read in all
    it stops (fewer iterations for more rows, the same for every run) and says the fit is an
    approximation; under the limit it says nothing."""
    import torchreg.evaluation as evaluation

    rows = line_with_outlier()
    exact = minimizer(rows, "mae")
    assert not caplog.records
    calls = []
    real = evaluation._reweighted
    monkeypatch.setattr(evaluation, "_reweighted", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(evaluation, "IRLS_MAX_ROWS", 2 * len(rows) * 3)  # 3 iterations
    with caplog.at_level("WARNING", logger="torchreg.evaluation"):
        capped = minimizer(rows, "mae")
    assert len(calls) == 1 + 3  # the least-squares start, then 3 IRLS iterations
    assert "after 3 IRLS iteration(s), the limit for 21 training rows" in caplog.text
    assert "approximation" in caplog.text
    assert mean_loss(capped, rows, "mae") >= mean_loss(exact, rows, "mae")
    assert mean_loss(capped, rows, "mae") < mean_loss(least_squares(rows), rows, "mae")


@pytest.mark.parametrize("loss", ["mae", "huber", "mse"])
@pytest.mark.parametrize("y_of_x", [lambda x: 2 * x + 0.5, lambda x: 0 * x])
def test_an_exact_fit_gives_no_ratio_and_no_crash(loss, y_of_x, params):
    """No noise: the minimizer's test MAE can be exactly 0 (and with y = 0 everywhere, 1 / |r|
    weights would be infinite): the ratio is None, the fit is the exact one, and converged."""
    x = torch.linspace(-1, 1, 50)[:, None]
    train, test = torch.cat([x, y_of_x(x)], 1), torch.cat([x / 2, y_of_x(x / 2)], 1)
    cfg = params.data.model_copy(update={"true_w": [2.0], "true_b": 0.5, "noise_std": 0.0})
    fit, converged = minimizer_fit(train, loss)
    assert converged and mean_loss(fit, train, loss) <= 1e-6  # float32 weights
    metrics = evaluate(fit, cfg, train, test, loss)
    assert metrics["reference"]["minimizer_converged"] is True
    if metrics["reference"]["minimizer_test_mae"] == 0:
        assert metrics["test"]["mae_vs_minimizer"] is None
    if metrics["reference"]["test_mae"] == 0:
        assert metrics["test"]["mae_vs_reference"] is None


def test_no_noise_gives_a_null_mae_vs_reference(params):
    """y = 0 everywhere: the closed-form fit is exactly w = 0, b = 0, its test MAE exactly 0."""
    x = torch.linspace(-1, 1, 50)[:, None]
    train, test = torch.cat([x, 0 * x], 1), torch.cat([x / 2, 0 * x], 1)
    cfg = params.data.model_copy(update={"true_w": [0.0], "true_b": 0.0, "noise_std": 0.0})
    model = LinearRegression(1).requires_grad_(False)
    model.b.fill_(0.5)
    metrics = evaluate(model, cfg, train, test)
    assert metrics["reference"]["test_mae"] == 0 and metrics["test"]["mae"] == 0.5
    assert metrics["test"]["mae_vs_reference"] is None


def test_metrics_say_whether_the_minimizer_converged(params, monkeypatch):
    import torchreg.evaluation as evaluation

    train = torch.from_numpy(make_block(params.data, "train", 0, 500))
    test = torch.from_numpy(make_block(params.data, "test", 0, 200))
    model = minimizer(train, "mae")
    assert evaluate(model, params.data, train, test, "mae")["reference"]["minimizer_converged"]
    monkeypatch.setattr(evaluation, "IRLS_MAX_ROWS", 2 * 500 * 2)  # 2 iterations: too few
    capped = evaluate(model, params.data, train, test, "mae")
    assert capped["reference"]["minimizer_converged"] is False


def test_predictions_beyond_float32_are_refused_not_written_as_metrics(params):
    """Finite weights (3e38) whose predictions overflow: no `"mae": NaN` or Infinity."""
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    with torch.no_grad():
        model.w.fill_(3e38)
    rows = torch.ones(10, 5)
    with pytest.raises(DataError, match=r"predictions are not finite \(beyond float32\)"):
        evaluate(model, params.data, rows, rows)


class SmallChunks(ArrayRows):
    """Rows read 16 at a time (the last chunk partial), as a file of many chunks is."""

    chunk_rows = 16


def flat(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_many_chunks_give_what_one_gives(params):
    """Every sum runs over chunks: a file larger than one chunk gets the same figures."""
    train = torch.from_numpy(make_block(params.data, "train", 0, 100))
    test = torch.from_numpy(make_block(params.data, "test", 0, 50))
    model = LinearRegression(4).requires_grad_(False)
    model.w.copy_(torch.tensor(params.data.true_w) + 0.05)
    for loss in ("mae", "huber", "mse"):
        whole = flat(evaluate(model, params.data, train, test, loss))
        chunked = flat(evaluate(model, params.data, SmallChunks(train), SmallChunks(test), loss))
        assert chunked.keys() == whole.keys()
        for key, value in whole.items():
            assert chunked[key] == pytest.approx(value, rel=1e-5), key
        assert mean_loss(model, SmallChunks(train), loss) == pytest.approx(
            mean_loss(model, train, loss), rel=1e-9
        )


@pytest.mark.parametrize("loss", ["mae", "huber", "mse"])
def test_mean_loss_is_the_mean_per_row_loss(params, loss):
    rows = torch.from_numpy(make_block(params.data, "train", 0, 100))
    model = LinearRegression(4).requires_grad_(False)
    model.b.fill_(3.0)  # residuals on both sides of huber's delta
    r = (rows[:, :-1] @ model.w + 3.0 - rows[:, -1]).double()
    per_row = {
        "mae": r.abs(),
        "mse": r * r,
        "huber": torch.where(r.abs() <= 1, r * r / 2, r.abs() - 0.5),
    }
    assert mean_loss(model, rows, loss) == pytest.approx(per_row[loss].mean().item(), rel=1e-6)


def test_weight_errors_are_against_the_true_values_in_float64(params):
    """A model holding the true weights rounded to float32 is off by that rounding, not 0."""
    train = torch.from_numpy(make_block(params.data, "train", 0, 100))
    model = LinearRegression(4).requires_grad_(False)
    model.w.copy_(torch.tensor(params.data.true_w))
    model.b.copy_(torch.tensor(params.data.true_b))
    learned = evaluate(model, params.data, train, train)["learned"]
    true_w = torch.tensor(params.data.true_w, dtype=torch.float64)
    rounding = (true_w.float().double() - true_w).abs().max().item()
    assert learned["w_max_error"] == pytest.approx(rounding, rel=1e-6) and rounding > 0


def test_the_sums_have_the_same_bits_on_any_number_of_threads(params, monkeypatch):
    """In the portable mode the chunks are computed on every core and added up in their
    order: 1, 2 or 3 threads give the same bits, float for float (not rounded metrics)."""
    from concurrent.futures import ThreadPoolExecutor

    from torchreg import cpu, parallel

    train = SmallChunks(torch.from_numpy(make_block(params.data, "train", 0, 1000)))
    model = LinearRegression(4).requires_grad_(False)
    model.w.copy_(torch.tensor(params.data.true_w) + 0.05)
    cpu.use("portable")
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(parallel, "THREADS", threads)
        monkeypatch.setattr(parallel, "_pool", lambda n=threads: ThreadPoolExecutor(n))
        fits = [least_squares(train), *(minimizer_fit(train, loss)[0] for loss in ("mae", "huber"))]
        runs.append(
            (
                prediction_errors(model, train),
                [(fit.w.tolist(), fit.b.item()) for fit in fits],
                [mean_loss(model, train, loss) for loss in ("mae", "huber", "mse")],
            )
        )
    assert runs[1] == runs[0] and runs[2] == runs[0]


ONE_THREAD_EACH = """
import torch  # before torchreg: MKL and OpenMP start from this environment's thread counts
from torchreg import cpu, parallel
cpu.use("portable")
from concurrent.futures import ThreadPoolExecutor
from torchreg.evaluation import least_squares, minimizer_fit
rows = torch.randn(300, 9, generator=torch.Generator().manual_seed(0))
def fits():
    found = least_squares(rows), minimizer_fit(rows, "mae")[0]
    return [(f.w.tolist(), f.b.item()) for f in found]
parallel.THREADS = 1
serial = fits()
parallel.THREADS, parallel._pool = 2, (lambda pool=ThreadPoolExecutor(2): pool)
print(fits() == serial)
"""


def test_a_pool_thread_computes_on_one_thread_as_the_caller_does():
    """A new thread starts with MKL's default thread count, not the one the portable mode set
    on the caller's: with OMP_NUM_THREADS=3 a float64 product of a chunk had other bits there."""
    import subprocess
    import sys

    from support import ROOT, subprocess_env

    result = subprocess.run(
        [sys.executable, "-c", ONE_THREAD_EACH], cwd=ROOT, capture_output=True, text=True,
        env=subprocess_env(ROOT / "src", drop=("MKL_NUM_THREADS",), OMP_NUM_THREADS="3"),
        timeout=120,
    )  # fmt: skip
    assert result.stdout == "True\n", result.stderr
