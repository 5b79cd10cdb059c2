"""FastLinearAdam, the linear model's Adam without autograd, against AutogradStep's fused Adam:
the same bits for every loss, lr schedule and averaging, every width and batch size, and across
a checkpoint's round trip in either direction (its state_dict is the optimizer's own)."""

import io
import itertools
import warnings

import pytest
import torch

from torchreg.context import RunContext
from torchreg.model import LinearRegression, build_model
from torchreg.training import (
    AutogradStep,
    FastLinearAdam,
    FastLinearSGD,
    Validation,
    fit,
    make_step,
    resume_problem,
    seeded,
)

PATHS = (AutogradStep, FastLinearAdam)


def rows_of(n_rows: int, n_features: int, seed: int = 0) -> torch.Tensor:
    """Features, then y = x @ w + b + noise: residuals of both signs, some past huber's delta."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, n_features, generator=g)
    y = x @ torch.randn(n_features, generator=g) + 0.5 + 0.7 * torch.randn(n_rows, generator=g)
    return torch.cat([x, y[:, None]], dim=1)


def adam(params, **changes):
    """An Adam run with a large lr (the weights move far in a few epochs: any bit shows)."""
    return params.train.model_copy(
        update={"optimizer": "adam", "lr": 0.05, "epochs": 6, "average_start": 0.5, **changes}
    )


class Saved:
    """Stands in for Checkpoints: keeps the state after every epoch as its file would hold it
    (torch.save, read back with weights_only=True)."""

    def __init__(self):
        self.files = {}

    def due(self):
        return True

    def save(self, state, epoch):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.files[epoch] = buffer.getvalue()

    def state(self, epoch):
        return torch.load(io.BytesIO(self.files[epoch]), map_location="cpu", weights_only=True)


def train(path, cfg, rows, checkpoints=None, resume=None, validation=None):
    """(the model, the loss of each epoch, the step) after `fit` with the step class `path`."""
    model = LinearRegression(rows.shape[1] - 1)
    with torch.no_grad():
        model.w.normal_(0, 0.5, generator=seeded(cfg.seed, "init"))
    step = path(model, cfg)
    history = fit(
        model, rows, cfg, seeded(cfg.seed, "shuffle"), step=step, checkpoints=checkpoints,
        resume=resume, validation=validation,
    )  # fmt: skip
    return model, history, step


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 or float64 tensor's bit patterns (torch.equal has -0.0 == 0.0)."""
    return t.detach().contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def assert_same(a, b, where="state"):
    """Every tensor of two nested states has the same dtype, shape and bits; the rest equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and (a.dtype, a.shape) == (b.dtype, b.shape), where
        same = torch.equal(bits(a), bits(b)) if a.is_floating_point() else torch.equal(a, b)
        assert same, f"{where} differs: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_same(u, v, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_runs(old, new):
    (old_model, old_history, old_step), (new_model, new_history, new_step) = old, new
    assert_same(old_model.state_dict(), new_model.state_dict(), "weights")
    assert [h.hex() for h in new_history] == [h.hex() for h in old_history]
    assert_same(old_step.state_dict(), new_step.state_dict(), "step")


def test_make_step_takes_it_for_the_linear_model_with_adam_on_the_cpu(params):
    cpu = RunContext(torch.device("cpu"))
    linear = build_model(params.model, 4, 0.01, seeded(0, "init"))
    mlp = build_model(params.model.model_copy(update={"kind": "mlp"}), 4, 0.01, seeded(0, "init"))
    assert type(make_step(linear, adam(params), cpu)) is FastLinearAdam
    assert type(make_step(linear, params.train, cpu)) is FastLinearSGD
    assert type(make_step(mlp, adam(params), cpu)) is AutogradStep
    step = make_step(linear, adam(params), cpu)
    assert isinstance(step.optimizer, torch.optim.Adam) and step.optimizer.defaults["fused"]


@pytest.mark.parametrize(
    ("loss", "schedule", "average"),
    list(
        itertools.product(["mae", "mse", "huber"], ["constant", "cosine", "step"], ["none", "swa"])
    ),
)
def test_the_same_bits_as_autograd_and_fused_adam(params, loss, schedule, average):
    """Weights (the average with swa), every epoch's loss and the whole state_dict (optimizer
    moments and step counts, the scheduler, the AveragedModel) after 6 epochs of 13 steps,
    the last of each a partial batch."""
    cfg = adam(params, loss=loss, lr_schedule=schedule, average=average)
    rows = rows_of(203, 4)
    old, new = (train(path, cfg, rows) for path in PATHS)
    assert_same_runs(old, new)
    assert new[1][-1] < new[1][0]  # it trained (the comparison is not of idle runs)


@pytest.mark.parametrize(
    ("n_features", "batch_size", "loss"),
    [(1, 16, "mae"), (7, 5, "mse"), (20, 16, "huber"), (33, 1, "mae"), (60, 16, "mse"),
     (60, 200, "huber"), (20, 64, "mae")],
)  # fmt: skip
def test_the_same_bits_at_every_width_and_batch_size(params, n_features, batch_size, loss):
    cfg = adam(params, loss=loss, batch_size=batch_size, epochs=3, average="swa")
    rows = rows_of(200 if batch_size > 1 else 40, n_features, seed=n_features)
    assert_same_runs(*(train(path, cfg, rows) for path in PATHS))


@pytest.mark.parametrize(("saved_by", "resumed_by"), list(itertools.product(PATHS, PATHS)))
@pytest.mark.parametrize("stop_after", [1, 4])
def test_a_checkpoint_resumes_to_the_same_bits_either_way(params, saved_by, resumed_by, stop_after):
    """A state saved mid-run by either step, through torch.save and torch.load, fits a fresh step
    of either kind (resume_problem finds nothing) and ends as the run that never stopped."""
    cfg = adam(params, loss="huber", lr_schedule="cosine", average="swa")
    rows = rows_of(203, 4)
    reference = train(AutogradStep, cfg, rows)
    saved = Saved()
    train(saved_by, cfg, rows, checkpoints=saved)
    state = saved.state(stop_after)
    assert resume_problem(state, LinearRegression(4), cfg, None) is None
    resumed = train(resumed_by, cfg, rows, resume=state)
    assert_same_runs(reference, resumed)


def test_a_fresh_state_dict_is_autograd_steps(params):
    """Before any step (no optimizer state yet) and after one, the same keys and values."""
    cfg = adam(params, lr_schedule="step", average="swa", average_start=0.0)
    steps = [path(LinearRegression(4), cfg) for path in PATHS]
    assert_same(steps[0].state_dict(), steps[1].state_dict())
    x, y = rows_of(16, 4)[:, :4], rows_of(16, 4)[:, 4]
    for step in steps:
        step(x, y, 16, torch.zeros((), dtype=torch.float64))
    assert_same(steps[0].state_dict(), steps[1].state_dict())
    assert len(steps[1].optimizer.state) == 2


def test_no_warning_from_the_lr_scheduler(params):
    """The scheduler checks that the optimizer stepped before it: it did, through the kernel."""
    cfg = adam(params, lr_schedule="cosine", epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(FastLinearAdam, cfg, rows_of(64, 4))


def test_the_weights_hold_no_gradient_and_no_graph(params):
    model, _, _ = train(FastLinearAdam, adam(params, epochs=1), rows_of(64, 4))
    assert model.w.grad is None and model.b.grad is None
    assert model.w.requires_grad and model.w.is_leaf


def test_early_stopping_keeps_the_same_best_weights(params):
    """Validation reads the weights after each epoch (step.current) and early stopping puts the
    best epoch's back (step.set_weights): both go through the model's own tensors."""
    cfg = adam(params, lr=0.3, epochs=12, patience=2)
    rows, held_out = rows_of(203, 4), rows_of(100, 4, seed=1)
    runs, validations = [], []
    for path in PATHS:
        validation = Validation(held_out, cfg.loss, cfg.patience, torch.device("cpu"))
        runs.append(train(path, cfg, rows, validation=validation))
        validations.append(validation)
    assert_same_runs(*runs)
    old, new = validations
    assert len(new.history) < cfg.epochs  # it stopped early
    assert [h.hex() for h in new.history] == [h.hex() for h in old.history]
    assert_same(old.best, new.best, "best")
