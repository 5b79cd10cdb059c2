import math

import pytest
import torch

from torchreg.config import parse_params
from torchreg.context import RunContext
from torchreg.data import make_block
from torchreg.errors import DivergenceError
from torchreg.model import build_model
from torchreg.training import (
    LOSSES,
    AutogradStep,
    DataParallelStep,
    FastLinearAdam,
    FastLinearSGD,
    divergence_limit,
    epoch_lrs,
    fit,
    make_step,
    seeded,
)


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


@pytest.mark.parametrize("fast", [True, False])
def test_a_loss_that_grows_without_overflow_is_divergence(params, fast):
    """MAE with a huge lr: the weights swing, the loss stays finite but grows."""
    with pytest.raises(DivergenceError, match=r"epoch 1: the loss grew to .* over 1000x"):
        trained(params, train_rows(params, 100), fast=fast, epochs=20, lr=1e6, loss="mae")


def test_an_untrained_loss_already_infinite_is_the_datas_fault(params):
    rows = train_rows(params, 100)
    rows[:, -1] = 3e38  # its square overflows float32
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    with pytest.raises(DivergenceError, match=r"already inf before any step: the data or the "):
        divergence_limit(model, rows, "mse")
    with pytest.raises(DivergenceError, match=r"\(train.init_std\) are too large for float32$"):
        divergence_limit(model, rows, "mse")


def test_a_perfect_untrained_model_still_has_a_divergence_limit():
    model = build_model(parse_params_model(), 4, 0.0, seeded(0, "init"))  # w = 0, b = 0
    rows = torch.zeros(10, 5)  # y = 0: the untrained loss is 0
    assert divergence_limit(model, rows, "mae") == pytest.approx(1e-3)  # 1000 x 1e-6


def parse_params_model():
    from torchreg.config import ModelConfig

    return ModelConfig(kind="linear", hidden=(), activation="none")


# Weights after 5 epochs (lr 0.01, 100 rows, train seed 0) from the code before lr_schedule and
# average existed, as exact float32 values: the defaults must keep every bit. (The autograd
# path's first weight moved by one bit when the portable mode took ATen's AVX2 kernels.)
BEFORE_SCHEDULES = {
    True: (["0x1.b3576p-3", "0x1.51db6ap-4", "0x1.360f86p-8", "0x1.3abebcp-3"], "0x1.040c58p-4"),
    False: (["0x1.b3576p-3", "0x1.51db6ap-4", "0x1.360f7p-8", "0x1.3abeb8p-3"], "0x1.040c62p-4"),
}


@pytest.mark.parametrize("fast", [True, False])
def test_defaults_keep_the_weights_bit_for_bit(params, raw_params, fast):
    for key in ("lr_schedule", "average", "average_start"):
        raw_params["train"].pop(key, None)
    implicit = parse_params(raw_params)
    assert implicit.train.lr_schedule == "constant" and implicit.train.average == "none"
    rows = train_rows(params, 100)
    explicit = {"lr_schedule": "constant", "average": "none", "epochs": 5, "lr": 0.01}
    for p, changes in ((implicit, {"epochs": 5, "lr": 0.01}), (params, explicit)):
        model, _ = trained(p, rows, fast=fast, **changes)
        w, b = BEFORE_SCHEDULES[fast]
        assert [v.hex() for v in model.w.tolist()] == [float.fromhex(v).hex() for v in w]
        assert model.b.item().hex() == float.fromhex(b).hex()


def test_schedules_give_the_documented_lrs(params):
    cfg = params.train.model_copy(update={"epochs": 8, "lr": 0.5})
    assert epoch_lrs(cfg) == [0.5] * 8
    step = epoch_lrs(cfg.model_copy(update={"lr_schedule": "step"}))
    assert step == pytest.approx([0.5] * 4 + [0.05] * 2 + [0.005] * 2, rel=1e-12)
    cosine = epoch_lrs(cfg.model_copy(update={"lr_schedule": "cosine"}))
    expected = [0.5 * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(8)]
    assert cosine == pytest.approx(expected, rel=1e-12)
    odd = epoch_lrs(cfg.model_copy(update={"lr_schedule": "step", "epochs": 7}))  # 7 // 2, 21 // 4
    assert odd == pytest.approx([0.5] * 3 + [0.05] * 2 + [0.005] * 2, rel=1e-12)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_both_paths_train_with_the_same_lr_sequence(params, schedule):
    """The fast path's lr and the optimizer's lr, read during each epoch, are the same floats."""
    cfg = params.train.model_copy(update={"epochs": 7, "lr": 0.01, "lr_schedule": schedule})
    rows = train_rows(params, 50)
    seen = {}
    for fast in (True, False):
        model = build_model(params.model, 4, cfg.init_std, seeded(0, "init"))
        step = FastLinearSGD(model, cfg) if fast else AutogradStep(model, cfg)
        lrs = seen[fast] = []
        read = (lambda s=step: s.lr) if fast else (lambda s=step: s.optimizer.param_groups[0]["lr"])
        fit(
            model,
            rows,
            cfg,
            seeded(0, "shuffle"),
            on_epoch=[lambda e, loss, lrs=lrs, read=read: lrs.append(read())],
            step=step,
        )
    assert seen[True] == seen[False] == epoch_lrs(cfg)


def wb_of(model) -> torch.Tensor:
    return torch.cat([model.w.detach(), model.b.detach().reshape(1)])


@pytest.mark.parametrize("loss", ["mae", "mse"])
def test_fast_averaging_equals_averaged_model(params, loss):
    """The fast path's running mean of wb is AveragedModel's mean on the autograd path, and
    that is the plain mean of the weights after each step from epoch 6 (0.5 of 12) on."""
    rows = train_rows(params, 203)  # 13 steps an epoch
    changes = {"epochs": 12, "lr": 0.01, "loss": loss, "average": "swa", "average_start": 0.5}
    cfg = params.train.model_copy(update=changes)
    after = []

    class Recording(AutogradStep):
        def __call__(self, x, y, m, total):
            super().__call__(x, y, m, total)
            after.append(wb_of(self.model).clone())

    slow = build_model(params.model, 4, cfg.init_std, seeded(cfg.seed, "init"))
    fit(slow, rows, cfg, seeded(cfg.seed, "shuffle"), step=Recording(slow, cfg))
    assert len(after) == 12 * 13
    expected = torch.stack(after[6 * 13 :]).double().mean(0)
    assert torch.allclose(wb_of(slow).double(), expected, atol=1e-5)
    fast, _ = trained(params, rows, fast=True, **changes)
    assert torch.allclose(fast.w, slow.w, atol=1e-5) and torch.allclose(fast.b, slow.b, atol=1e-5)
    last, _ = trained(params, rows, fast=True, **{**changes, "average": "none"})
    assert not torch.equal(fast.w, last.w)  # the mean, not the last weights


def test_average_is_the_mean_of_the_steps_from_the_start_epoch(params):
    """Oracle: the plain mean of the weights after each step of the averaged epochs."""
    rows = train_rows(params, 64)  # 4 steps per epoch
    cfg = params.train.model_copy(
        update={"epochs": 4, "lr": 0.01, "average": "swa", "average_start": 0.5}
    )
    after = []

    class Recording(FastLinearSGD):
        def __call__(self, x, y, m, total):
            super().__call__(x, y, m, total)
            after.append(self.wb.clone())

    model = build_model(params.model, 4, cfg.init_std, seeded(0, "init"))
    fit(model, rows, cfg, seeded(0, "shuffle"), step=Recording(model, cfg))
    assert len(after) == 16
    expected = torch.stack(after[8:]).double().mean(0)  # epochs 2 and 3 of 0..3
    got = torch.cat([model.w.detach(), model.b.detach().reshape(1)]).double()
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_data_parallel_step_schedules_and_averages_the_plain_module(params, tmp_path, schedule):
    """DataParallelStep in a one-process gloo group: schedule and average as AutogradStep's."""
    import torch.distributed as dist

    from torchreg.training import DataParallelStep

    rows = train_rows(params, 100)
    changes = {"epochs": 6, "lr": 0.01, "lr_schedule": schedule, "average": "swa"}
    cfg = params.train.model_copy(update=changes)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = build_model(params.model, 4, cfg.init_std, seeded(0, "init"))
        ctx = RunContext(torch.device("cpu"), 0, 1)
        fit(model, rows, cfg, seeded(0, "shuffle"), ctx, step=DataParallelStep(model, cfg, ctx))
    finally:
        dist.destroy_process_group()
    single, _ = trained(params, rows, fast=False, **changes)
    assert torch.allclose(model.w, single.w, atol=1e-6)
    assert torch.allclose(model.b, single.b, atol=1e-6)


def test_the_step_fits_the_model_the_optimizer_and_the_processes(params, tmp_path):
    import torch.distributed as dist

    linear = build_model(params.model, 4, 0.01, seeded(0, "init"))
    mlp = build_model(params.model.model_copy(update={"kind": "mlp"}), 4, 0.01, seeded(0, "init"))
    cpu = RunContext(torch.device("cpu"))
    adam = params.train.model_copy(update={"optimizer": "adam"})
    assert type(make_step(linear, params.train, cpu)) is FastLinearSGD
    assert type(make_step(linear, adam, cpu)) is FastLinearAdam
    assert type(make_step(mlp, params.train, cpu)) is AutogradStep
    assert isinstance(make_step(mlp, adam, cpu).optimizer, torch.optim.Adam)
    assert type(make_step(mlp, params.train, cpu).optimizer) is torch.optim.SGD
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        step = make_step(linear, params.train, RunContext(torch.device("cpu"), 0, 2))
        assert type(step) is DataParallelStep and (step.rank, step.world_size) == (0, 2)
        assert step.trained is linear
    finally:
        dist.destroy_process_group()


def test_callbacks_get_each_epoch_and_its_loss(params):
    rows = train_rows(params, 50)
    cfg = params.train.model_copy(update={"epochs": 4, "lr": 0.01})
    model = build_model(params.model, 4, cfg.init_std, seeded(0, "init"))
    seen = []
    history = fit(
        model, rows, cfg, seeded(0, "shuffle"), on_epoch=[lambda e, loss: seen.append((e, loss))]
    )
    assert seen == list(enumerate(history))


@pytest.mark.parametrize("fast", [True, False])
def test_the_epoch_loss_is_summed_in_float64(params, fast):
    """Batches of one row, one with a loss of 2**24 and 199 of 0.3: a float32 sum would drop
    every 0.3 after the big one (float32's spacing there is 2)."""
    rows = torch.zeros(200, 5)
    rows[:, -1] = 0.3
    rows[0, -1] = 2.0**24
    changes = {"epochs": 1, "lr": 1e-12, "init_std": 0.0, "batch_size": 1}
    cfg = params.train.model_copy(update=changes)
    model = build_model(params.model, 4, 0.0, seeded(0, "init"))
    step = (FastLinearSGD if fast else AutogradStep)(model, cfg)
    history = fit(model, rows, cfg, seeded(0, "shuffle"), step=step)
    small = rows[1, -1].item()  # 0.3 in float32
    assert history[0] == pytest.approx((2.0**24 + 199 * small) / 200, rel=1e-9)


def test_data_in_several_windows_is_shuffled_by_the_seed_alone(params, monkeypatch):
    """Windows of 64 rows (the data does not fit one): the window order is drawn from the
    seeded generator, never torch's global one."""
    import torchreg.training as training

    monkeypatch.setattr(training, "WINDOW_BYTES", 64 * 5 * 4)
    rows = train_rows(params, 300)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model, history = trained(params, rows, epochs=3, lr=0.01)
        runs.append((model.w.clone(), history))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert training.Windows(training.as_rows(rows), 16, torch.device("cpu")).n_windows == 5


@pytest.mark.parametrize("fast", [True, False])
def test_average_start_0_averages_every_step(params, fast):
    rows = train_rows(params, 64)  # 4 steps an epoch
    cfg = params.train.model_copy(
        update={"epochs": 3, "lr": 0.01, "average": "swa", "average_start": 0.0}
    )
    after = []
    base = FastLinearSGD if fast else AutogradStep

    class Recording(base):
        def __call__(self, x, y, m, total):
            super().__call__(x, y, m, total)
            after.append(wb_of(self.model) if not fast else self.wb.clone())

    model = build_model(params.model, 4, cfg.init_std, seeded(0, "init"))
    fit(model, rows, cfg, seeded(0, "shuffle"), step=Recording(model, cfg))
    assert len(after) == 12
    expected = torch.stack(after).double().mean(0)
    assert torch.allclose(wb_of(model).double(), expected, atol=1e-6)


def test_adam_moves_each_weight_by_the_lr_on_its_first_step(params):
    """Adam's first update is lr * m / sqrt(v) = lr * sign(gradient) for every weight (plain
    SGD's is lr * gradient)."""
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    before = wb_of(model).clone()
    cfg = params.train.model_copy(update={"optimizer": "adam", "lr": 0.01})
    step = AutogradStep(model, cfg)
    x, y = train_rows(params, 16)[:, :4], train_rows(params, 16)[:, 4]
    step(x, y, 16, torch.zeros((), dtype=torch.float64))
    assert torch.allclose((wb_of(model) - before).abs(), torch.full((5,), 0.01), rtol=1e-3)


def test_divergence_is_past_the_limit_not_at_it():
    from torchreg.training import check_divergence

    check_divergence(2000.0, 2000.0, 0, 0.5)  # at the limit: still training
    with pytest.raises(DivergenceError) as err:
        check_divergence(2000.5, 2000.0, 6, 0.5)
    assert str(err.value) == (
        "training diverged at epoch 7: the loss grew to 2000, over 1000x the untrained "
        "model's 2 with train.lr = 0.5; try a smaller train.lr"
    )
    with pytest.raises(DivergenceError) as err:
        check_divergence(math.nan, 2000.0, 0, 1e-3)
    assert str(err.value) == (
        "training diverged at epoch 1: the loss became nan with train.lr = 0.001; "
        "try a smaller train.lr"
    )


@pytest.mark.parametrize(
    "columns,batch_size,expected",
    [
        (5, 16, 6710880),  # 128 MiB of float32 rows of 5 columns, cut to whole batches
        (5, 10**7, 10**7),  # a batch larger than the window: one batch a window
        (2**26, 1, 1),  # a row larger than the window: one row a window
    ],
)
def test_a_window_is_a_whole_number_of_batches(columns, batch_size, expected):
    from torchreg.training import WINDOW_BYTES, Windows

    assert WINDOW_BYTES == 128 << 20
    assert Windows.rows_per_window(columns, batch_size) == expected


@pytest.mark.parametrize("n", [300, 128], ids=["5-windows", "2-windows"])
def test_each_window_reads_its_own_rows(params, monkeypatch, n):
    """Windows of 64 rows: the last one maybe short, each read from its own offset, none kept
    (only data that fits one window is kept on the device), each yielded once an epoch."""
    import torchreg.training as training

    monkeypatch.setattr(training, "WINDOW_BYTES", 64 * 5 * 4)
    rows = train_rows(params, n)
    windows = training.Windows(training.as_rows(rows), 16, torch.device("cpu"))
    count = -(-n // 64)
    assert (windows.size, windows.n_windows) == (64, count)
    for index in (count - 1, 0, count - 1, 0):
        assert torch.equal(windows.get(index), rows[64 * index : 64 * (index + 1)])
    assert windows._kept is None
    order = [w[0].clone() for w in windows.shuffled(seeded(0, "shuffle"))]
    starts = sorted(int((rows[:, 0] == first[0]).nonzero()[0]) for first in order)
    assert starts == list(range(0, n, 64))


def test_data_in_one_window_is_read_once(params):
    import torchreg.training as training

    source = training.as_rows(train_rows(params, 100))
    reads = []
    read = source.read
    source.read = lambda *args: reads.append(args) or read(*args)
    windows = training.Windows(source, 16, torch.device("cpu"))
    for _ in range(3):
        assert [len(w) for w in windows.shuffled(seeded(0, "shuffle"))] == [100]
    assert reads == [(0, windows.size)]


class Recorder:
    """Checkpoints always due, recording what each save was given."""

    def __init__(self):
        self.saved = []

    def due(self):
        return True

    def save(self, state, epoch):
        self.saved.append((epoch, state["history"].tolist()))


def test_each_epoch_ends_at_a_kill_point_and_all_but_the_last_save(params, monkeypatch):
    """The slow resume tests kill a run at ("epoch", n) after epoch n (1-based); a checkpoint
    holds the epochs so far, and none is written after the last epoch (nothing to resume)."""
    import torchreg.training as training

    kills = []
    monkeypatch.setattr(training, "kill_point", lambda *where: kills.append(where))
    cfg = params.train.model_copy(update={"epochs": 4, "lr": 0.01})
    model = build_model(params.model, 4, cfg.init_std, seeded(0, "init"))
    checkpoints = Recorder()
    history = fit(model, train_rows(params, 50), cfg, seeded(0, "shuffle"), checkpoints=checkpoints)
    assert kills == [("epoch", 1), ("epoch", 2), ("epoch", 3), ("epoch", 4)]
    assert checkpoints.saved == [(e, history[:e]) for e in (1, 2, 3)]


def test_adam_is_the_fused_one(params):
    """Fused Adam's square root is the exact instruction; the per-op one's comes from MKL and
    may give other bits on another CPU (README, "Same bytes on any CPU")."""
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    step = AutogradStep(model, params.train.model_copy(update={"optimizer": "adam"}))
    assert step.optimizer.defaults["fused"] is True


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_an_epoch_lr_resumed_from_its_state_goes_on_with_the_same_lrs(params, schedule):
    from torchreg.training import EpochLr

    cfg = params.train.model_copy(update={"epochs": 8, "lr": 0.5, "lr_schedule": schedule})
    first = EpochLr(cfg)
    for _ in range(3):
        first.step()
    resumed = EpochLr(cfg)
    resumed.load_state_dict(first.state_dict())
    lrs = []
    for _ in range(5):
        lrs.append(resumed.lr)
        resumed.step()
    assert lrs == epoch_lrs(cfg)[3:]
