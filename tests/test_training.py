import pytest
import torch

from torchreg.context import RunContext
from torchreg.data import make_block
from torchreg.errors import DivergenceError
from torchreg.model import build_model
from torchreg.training import LOSSES, AutogradStep, FastLinearSGD, fit, make_step, seeded


def train_rows(params, n=500):
    return torch.from_numpy(make_block(params.data, "train", 0, n))


def trained(params, rows, fast=None, **train_changes):
    cfg = params.train.model_copy(update=train_changes)
    model = build_model(params.model, rows.shape[1] - 1, cfg.init_std, seeded(cfg.seed, "init"))
    step = None if fast is None else (FastLinearSGD if fast else AutogradStep)(model, cfg)
    history = fit(model, rows, cfg, seeded(cfg.seed, "shuffle"), step=step)
    return model, history


def test_recovers_true_weights(params):
    """The tutorial's run (MAE, SGD, lr 1e-3, batch 16) recovers w and b; fewer epochs and a
    larger lr keep the test quick."""
    model, history = trained(params, train_rows(params), epochs=150, lr=0.01)
    true_w = torch.tensor(params.data.true_w)
    assert (model.w.detach() - true_w).abs().max().item() < 0.02
    assert abs(model.b.item() - params.data.true_b) < 0.02
    assert history[-1] < history[0] / 100


@pytest.mark.parametrize("loss", ["mae", "mse", "huber"])
def test_fast_path_matches_autograd(params, loss):
    rows = train_rows(params, 203)  # 203 rows: the last batch is partial
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    assert isinstance(
        make_step(model, params.train, RunContext(torch.device("cpu"))), FastLinearSGD
    )
    fast, fast_hist = trained(params, rows, fast=True, epochs=20, lr=0.01, loss=loss)
    slow, slow_hist = trained(params, rows, fast=False, epochs=20, lr=0.01, loss=loss)
    assert torch.allclose(fast.w, slow.w, atol=1e-5) and torch.allclose(fast.b, slow.b, atol=1e-5)
    # float32 sums in a different order: equal to ~1e-5 relative
    assert fast_hist == pytest.approx(slow_hist, rel=1e-4)


@pytest.mark.parametrize("loss", ["mae", "mse", "huber"])
def test_each_loss_fits_linear_data(params, loss):
    model, history = trained(params, train_rows(params), epochs=60, lr=0.01, loss=loss)
    assert (model.w.detach() - torch.tensor(params.data.true_w)).abs().max().item() < 0.05
    assert history[-1] < history[0]


def test_losses_are_the_textbook_formulas():
    pred, y = torch.tensor([0.0, 2.0, -3.0]), torch.tensor([1.0, 0.0, 0.0])
    r = pred - y
    assert LOSSES["mae"](pred, y).item() == pytest.approx(r.abs().mean().item())
    assert LOSSES["mse"](pred, y).item() == pytest.approx((r * r).mean().item())
    huber = torch.where(r.abs() <= 1, 0.5 * r * r, r.abs() - 0.5)
    assert LOSSES["huber"](pred, y).item() == pytest.approx(huber.mean().item())
    assert LOSSES["huber"](pred, y, reduction="sum").item() == pytest.approx(huber.sum().item())


def test_mlp_with_adam_learns_a_nonlinear_target(params):
    data = params.data.model_copy(update={"target": "quadratic"})
    rows = torch.from_numpy(make_block(data, "train", 0, 1000))
    mlp = params.model.model_copy(update={"kind": "mlp", "hidden": (32,), "activation": "relu"})
    cfg = params.train.model_copy(update={"optimizer": "adam", "lr": 0.01, "epochs": 40})
    model = build_model(mlp, 4, cfg.init_std, seeded(0, "init"))
    history = fit(model, rows, cfg, seeded(0, "shuffle"))
    spread = (rows[:, -1] - rows[:, -1].median()).abs().mean().item()
    assert history[-1] < spread / 4  # far better than a constant


def test_training_is_deterministic(params):
    rows = train_rows(params, 100)
    a, ha = trained(params, rows, epochs=5)
    b, hb = trained(params, rows, epochs=5)
    c, _ = trained(params, rows, epochs=5, seed=1)
    assert torch.equal(a.w, b.w) and ha == hb
    assert not torch.equal(a.w, c.w)


@pytest.mark.parametrize("fast", [True, False])
def test_divergence_stops_with_a_clear_error(params, fast):
    with pytest.raises(DivergenceError, match=r"diverged at epoch \d+.*smaller train.lr"):
        trained(params, train_rows(params, 100), fast=fast, epochs=200, lr=1e6, loss="mse")
