"""Mini-batch training: for each epoch, for each batch, step.

Each epoch draws a fresh permutation from a seeded generator and walks it in batches of
`train.batch_size` (the last batch may be smaller, as in the tutorial). Data larger than one
window of WINDOW_BYTES is read and shuffled a window at a time; rows are gathered CHUNK_ROWS at
a time and cut into batches.

What one step does is a strategy chosen once (`make_step`):
- FastLinearSGD: the tutorial's linear model with plain SGD, its gradient written out by hand
  (no autograd graph per step; tests check it against autograd);
- FastLinearAdam: the linear model with Adam, autograd's own ops called without a graph and
  torch's fused Adam kernel on the optimizer's own state (the same bits as AutogradStep,
  tests/test_adam_step.py), at a fraction of the step's Python cost;
- AutogradStep: any model and optimizer through autograd and torch.optim;
- DataParallelStep: the same under torchrun, each rank taking its share of every batch.

Every step follows `train.lr_schedule` (torch's own lr schedulers, stepped once per epoch; the
fast path, which has no optimizer, reads the lr from the same scheduler on a stand-in one) and,
with `train.average: swa`, keeps the running mean of the weights after every step from
`train.average_start` on (torch.optim.swa_utils.AveragedModel; a running mean of wb on the fast
path); the mean is what `finish` leaves in the model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR
from torch.optim.swa_utils import AveragedModel

from torchreg import parallel
from torchreg.budget import check_memory, check_processes, train_bytes
from torchreg.checkpoint import Checkpoints, kill_point, max_checkpoint_bytes
from torchreg.config import Params, TrainConfig
from torchreg.context import RunContext
from torchreg.data import CHUNK_ROWS, DataFile, as_rows, stream_seed
from torchreg.errors import DivergenceError
from torchreg.files import check_writable
from torchreg.model import LinearRegression

HUBER_DELTA = 1.0
# An epoch whose mean loss exceeds this many times the untrained model's loss has diverged:
# with MAE a too-large lr makes the weights swing wildly without ever reaching inf.
DIVERGENCE_FACTOR = 1e3
WINDOW_BYTES = 128 << 20  # rows in memory at once when training from a file
# loss(pred, y, reduction="mean" | "sum"): a rank's share of a global batch needs the sum.
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mae": F.l1_loss,
    "mse": F.mse_loss,
    "huber": lambda pred, y, reduction="mean": F.huber_loss(
        pred, y, reduction=reduction, delta=HUBER_DELTA
    ),
}
EpochCallback = Callable[[int, float], None]  # (epoch, mean loss), after each epoch


def seeded(seed: int, *stream: object) -> torch.Generator:
    """A torch generator for one named stream of one seed (e.g. "init", "shuffle")."""
    return torch.Generator().manual_seed(stream_seed(seed, *stream))


def fit(
    model: nn.Module,
    rows: DataFile | torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    ctx: RunContext | None = None,
    on_epoch: Sequence[EpochCallback] = (),
    step: Step | None = None,
    checkpoints: Checkpoints | None = None,
    resume: dict[str, Any] | None = None,
    validation: Validation | None = None,
) -> list[float]:
    """Train `model` in place on rows (features, then y); return the mean loss of each epoch.

    `step` defaults to the strategy `make_step` picks for the model, config and context.
    With `checkpoints`, the state is saved after an epoch whenever one is due; `resume` (a
    saved state, see `training_state`) continues a run from where that state left it. With
    `validation`, the validation loss is measured after every epoch (before the callbacks
    run), and with train.patience training stops early and the best epoch's weights are kept.

    Raises DivergenceError as soon as an epoch's loss is NaN, infinite or over
    DIVERGENCE_FACTOR times the untrained model's.
    """
    ctx = ctx or RunContext(next(model.parameters()).device)
    source = Windows(as_rows(rows), cfg.batch_size, ctx.device)
    step = step or make_step(model, cfg, ctx)
    if resume is None:
        limit, history = divergence_limit(model, source.get(0), cfg.loss), []
    else:
        step.load_state_dict(resume["step"])
        generator.set_state(resume["generator"])
        limit, history = resume["limit"], resume["history"].tolist()
        if validation is not None:
            validation.load_state_dict(resume["validation"])
    for epoch in range(len(history), cfg.epochs):
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for block in source.shuffled(generator):
            order = torch.randperm(len(block), generator=generator)
            for x, y, m in step.batches(block, order, cfg.batch_size):
                step(x, y, m, total)
            del block, order  # free this window before the next one is read
        loss = step.reduce(total).item() / source.count
        check_divergence(loss, limit, epoch, cfg.lr)
        history.append(loss)
        stop = validation is not None and validation.after_epoch(epoch, step)
        for callback in on_epoch:
            callback(epoch, loss)
        step.end_epoch(epoch)
        kill_point("epoch", epoch + 1)
        if stop:
            break
        if checkpoints is not None and epoch + 1 < cfg.epochs and checkpoints.due():
            state = training_state(step, generator, limit, history, validation)
            checkpoints.save(state, epoch + 1)
    if validation is not None and validation.best is not None:
        step.set_weights(validation.best["weights"])  # early stopping keeps the best epoch
    step.finish()
    return history


def check_outputs(model_path: Path, live_dir: Path) -> None:
    """Refuse before any work if the model or the DVCLive log cannot be written."""
    check_writable(model_path, live_dir / "metrics.json", live_dir / "plots/metrics/x.tsv")


def check_budget(params: Params, data: DataFile) -> None:
    """Refuse a run this machine cannot hold before any big allocation (and before launching
    ranks): processes against cores, memory against what is available. A batch is never
    larger than the training set, whatever train.batch_size says."""
    cfg = params.train
    check_processes(cfg.nproc, cfg.device)
    window = (
        min(data.rows, Windows.rows_per_window(data.columns, cfg.batch_size)) * data.columns * 4
    )
    batch = cfg.model_copy(update={"batch_size": min(cfg.batch_size, data.rows)})
    needed = cfg.nproc * train_bytes(params.model, batch, data.n_features, window)
    check_memory(
        needed,
        f"training this model (model.hidden = {list(params.model.hidden)}, "
        f"train.batch_size = {cfg.batch_size}, train.nproc = {cfg.nproc})",
        "lower model.hidden, train.batch_size or train.nproc",
    )


def open_checkpoint(
    checkpoint: tuple[Path, Any] | None,
    model: nn.Module,
    cfg: TrainConfig,
    writer: bool,
    validation: Validation | None,
) -> tuple[Checkpoints | None, dict[str, Any] | None]:
    """The run's checkpoints (None without a path and key) and the state to resume from: the
    saved one if its key matches and it fits this run (`resume_problem`), else None."""
    if checkpoint is None:
        return None, None
    path, key = checkpoint
    limit = max_checkpoint_bytes(sum(p.numel() for p in model.parameters()), cfg.epochs)
    checkpoints = Checkpoints(path, key, cfg.checkpoint_every_s, writer, limit)
    record = checkpoints.load()
    resume = None if record is None else record["state"]
    if resume is not None and (problem := resume_problem(resume, model, cfg, validation)):
        checkpoints.ignore(problem)
        resume = None
    return checkpoints, resume


def resume_problem(
    state: Any, model: nn.Module, cfg: TrainConfig, validation: Validation | None
) -> str | None:
    """Why a checkpoint's state (its key matched) cannot continue this run, or None: every
    part the next epoch reads is checked against the run (the epoch range, every tensor's shape
    and dtype against a fresh step's, finite values), so a crafted or mismatched record is
    ignored in one line instead of failing mid-training or training from wrong weights."""
    try:
        history = state["history"]
        if not (isinstance(history, torch.Tensor) and history.dtype == torch.float64):
            return "its loss history is not a float64 tensor"
        done = len(history)
        if not 1 <= done < cfg.epochs:
            return f"it is after epoch {done}, outside 1..{cfg.epochs - 1} of this run"
        if validation is not None:
            record = state["validation"]
            if record is None or len(record["history"]) != done:
                return f"its validation record does not cover its {done} epochs"
            best = record["best"]
            if best is not None and not 0 <= best["epoch"] < done:
                return f"its best epoch {best['epoch'] + 1} is not among its {done} epochs"
        scratch = copy.deepcopy(model).cpu()
        fresh = make_step(scratch, cfg, RunContext(torch.device("cpu")))
        problem = _layout_problem(fresh.state_dict(), state["step"], "step")
        if problem is None and validation is not None and state["validation"]["best"]:
            weights = state["validation"]["best"]["weights"]
            problem = _layout_problem(fresh.weights(), weights, "best weights")
        if problem is None:
            fresh.load_state_dict(state["step"])  # what the resume does, on a copy
            problem = _optimizer_problem(fresh) or _schedule_problem(fresh, cfg, done)
        if problem is None:
            problem = _record_problem(state, history, validation)
        if problem is None and not all(_finite(v) for v in (state, history)):
            problem = "it holds a NaN or infinite value"
        return problem
    except Exception as exc:  # noqa: BLE001 - a record of any shape: every failure is a reason
        return f"its state does not fit this run ({type(exc).__name__}: {str(exc)[:120]})"


def _layout_problem(expected: Any, saved: Any, where: str) -> str | None:
    """The first tensor of `expected` whose counterpart in `saved` is missing or has another
    shape or dtype (containers walked alike; an optimizer's per-weight state is left to
    `_optimizer_problem`, as a fresh optimizer has none)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            return f"{where} is not a tensor"
        if saved.shape != expected.shape or saved.dtype != expected.dtype:
            return (
                f"{where} is {saved.dtype} {list(saved.shape)}, this run has "
                f"{expected.dtype} {list(expected.shape)}"
            )
        return None
    if isinstance(expected, dict):
        if not isinstance(saved, dict):
            return f"{where} is not a mapping"
        for key, value in expected.items():
            if key == "state" and where.endswith("optimizer"):
                continue
            if key not in saved:
                return f"{where}.{key} is missing"
            problem = _layout_problem(value, saved[key], f"{where}.{key}")
            if problem:
                return problem
    return None


def _schedule_problem(step: Step, cfg: TrainConfig, done: int) -> str | None:
    """The lr and the averaging switch after `done` epochs are what this run's config gives."""
    lr = step.lr if isinstance(step, FastLinearSGD) else step.optimizer.param_groups[0]["lr"]
    if lr != epoch_lrs(cfg)[done]:
        return f"its lr {lr!r} is not this run's after epoch {done} ({epoch_lrs(cfg)[done]!r})"
    start = average_start_epoch(cfg)
    if step.averaging != (start is not None and done >= start):
        return f"its weight averaging is {'on' if step.averaging else 'off'} after epoch {done}"
    return None


def _record_problem(state: Any, history: torch.Tensor, validation: Validation | None) -> str | None:
    """The rest of what the next epoch reads: the shuffle stream's state, the divergence
    yardstick, the losses (one per epoch, never negative)."""
    generator = state["generator"]
    expected = torch.Generator().get_state()
    if not (
        isinstance(generator, torch.Tensor)
        and generator.dtype == expected.dtype
        and generator.shape == expected.shape
    ):
        return "its shuffle generator's state is not one"
    limit = state["limit"]
    if not (isinstance(limit, float) and math.isfinite(limit) and limit > 0):
        return f"its divergence yardstick {str(limit)[:40]} is not a positive number"
    losses = [history]
    if validation is not None:
        losses.append(state["validation"]["history"])
    for values in losses:
        if not (isinstance(values, torch.Tensor) and values.dim() == 1):
            return "its losses are not one per epoch"
        if values.dtype != torch.float64 or bool((values < 0).any()):
            return "its losses are not float64 numbers >= 0"
    return None


def _optimizer_problem(step: Step) -> str | None:
    optimizer = getattr(step, "optimizer", None)
    if optimizer is None:
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param, state in ((p, optimizer.state.get(p, {})) for p in params):
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                return f"its optimizer's {name} is {list(value.shape)}, not {list(param.shape)}"
    return None


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(value.isfinite().all())
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def describe(params: Params, rows: int, ctx: RunContext) -> str:
    """The run in one line, for the log."""
    cfg = params.train
    return (
        f"{params.model.kind} model, {cfg.loss} loss, {cfg.optimizer} (lr {cfg.lr:g}"
        f"{'' if cfg.lr_schedule == 'constant' else ', ' + cfg.lr_schedule}), "
        f"{cfg.epochs} epochs of {rows} rows in batches of {cfg.batch_size} on "
        f"{ctx.device.type} x {ctx.world_size}"
    )


def training_state(
    step: Step,
    generator: torch.Generator,
    limit: float,
    history: list[float],
    validation: Validation | None = None,
) -> dict[str, Any]:
    """All that the next epoch depends on: the step's weights, optimizer, lr schedule and
    average, the shuffle stream, the divergence yardstick, every epoch's loss so far and the
    validation's record (its losses, the best epoch and its weights)."""
    return {
        "step": step.state_dict(),
        "generator": generator.get_state(),
        "limit": limit,
        # A tensor, not a list: a long run's million losses stay 8 bytes each (float64: exact).
        "history": torch.tensor(history, dtype=torch.float64),
        "validation": None if validation is None else validation.state_dict(),
    }


class Validation:
    """The mean loss (train.loss) on the validation split after every epoch, and early
    stopping on it: with `patience` > 0, training stops once that many epochs in a row have
    not improved on the best, whose weights the model then keeps. The loss is summed in
    float64 over fixed chunks, so it has the same bits on every CPU, as the test metrics do."""

    def __init__(self, rows: DataFile, loss: str, patience: int, device: torch.device) -> None:
        self.loss, self.patience, self.device = loss, patience, device
        self.rows = as_rows(rows)
        kept = self.rows.rows * self.rows.columns * 4 <= WINDOW_BYTES
        self._kept = [self._to_device(b) for b in self.rows.blocks()] if kept else None
        self.history: list[float] = []
        self.best: dict[str, Any] | None = None  # epoch, loss, weights

    def _to_device(self, block: Any) -> torch.Tensor:
        return torch.from_numpy(block).to(self.device)

    def _blocks(self) -> Iterator[torch.Tensor]:
        if self._kept is not None:
            yield from self._kept
        else:
            yield from (self._to_device(b) for b in self.rows.blocks())

    @torch.no_grad()
    def mean_loss(self, model: nn.Module) -> float:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for block in self._blocks():
            per_row = LOSSES[self.loss](model(block[:, :-1]), block[:, -1], reduction="none")
            total += per_row.double().sum()
        return total.item() / self.rows.rows

    def after_epoch(self, epoch: int, step: Step) -> bool:
        """Measure epoch `epoch` (0-based); True when training should stop."""
        loss = self.mean_loss(step.current())
        self.history.append(loss)
        if not self.patience:
            return False
        if self.best is None or loss < self.best["loss"]:
            weights = {k: v.detach().clone() for k, v in step.weights().items()}
            self.best = {"epoch": epoch, "loss": loss, "weights": weights}
            return False
        return epoch - self.best["epoch"] >= self.patience

    def summary(self, epochs: int) -> str:
        """What early stopping did, after a run of `epochs` epochs (train.epochs)."""
        best, ran = self.best, len(self.history)
        stopped = f"stopped after epoch {ran} of {epochs}" if ran < epochs else f"ran {ran} epochs"
        return (
            f"{stopped}; the best validation loss, {best['loss']:.6f}, was after epoch "
            f"{best['epoch'] + 1} (train.patience {self.patience}): its weights are kept"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": torch.tensor(self.history, dtype=torch.float64), "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history[:] = state["history"].tolist()  # in place: the loggers hold this list
        self.best = state["best"]


def divergence_limit(model: nn.Module, rows: torch.Tensor, loss: str) -> float:
    """DIVERGENCE_FACTOR times the untrained model's loss; a loss that is not finite before any
    step is the data's or the initial weights' fault, not the learning rate's."""
    start_loss = initial_loss(model, rows, loss)
    if not math.isfinite(start_loss):
        raise DivergenceError(
            f"the untrained model's loss is already {start_loss} before any step: the data or "
            "the initial weights (train.init_std) are too large for float32"
        )
    return DIVERGENCE_FACTOR * max(start_loss, 1e-6)


def check_divergence(loss: float, limit: float, epoch: int, lr: float) -> None:
    if math.isfinite(loss) and loss <= limit:
        return
    what = (
        f"became {loss}"
        if not math.isfinite(loss)
        else (
            f"grew to {loss:.4g}, over {DIVERGENCE_FACTOR:g}x the untrained model's "
            f"{limit / DIVERGENCE_FACTOR:.4g}"
        )
    )
    # No suggested value: nothing here shows that any particular smaller lr would converge.
    raise DivergenceError(
        f"training diverged at epoch {epoch + 1}: the loss {what} with "
        f"train.lr = {lr:g}; try a smaller train.lr"
    )


@torch.no_grad()
def initial_loss(model: nn.Module, rows: torch.Tensor, loss: str) -> float:
    """The untrained model's mean loss on the first rows: the yardstick for divergence."""
    device = next(model.parameters()).device
    sample = rows[:CHUNK_ROWS].to(device)
    return LOSSES[loss](model(sample[:, :-1]), sample[:, -1]).item()


class Windows:
    """Training rows as windows of about WINDOW_BYTES (a whole number of batches), read one at
    a time; data that fits one window is read once and kept on the device."""

    def __init__(self, rows: DataFile, batch_size: int, device: torch.device) -> None:
        self.rows, self.count, self.device = rows, rows.rows, device
        self.size = self.rows_per_window(rows.columns, batch_size)
        self.n_windows = -(-self.count // self.size)
        self._kept: torch.Tensor | None = None

    @staticmethod
    def rows_per_window(columns: int, batch_size: int) -> int:
        per_window = max(1, WINDOW_BYTES // (columns * 4))
        return max(1, per_window // batch_size) * batch_size

    def get(self, index: int) -> torch.Tensor:
        if self._kept is not None:
            return self._kept
        start = index * self.size
        block = torch.from_numpy(self.rows.read(start, start + self.size)).to(self.device)
        if self.n_windows == 1:
            self._kept = block
        return block

    def shuffled(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """The windows in a random order (one window: no draw, so small data gets exactly one
        global permutation per epoch)."""
        if self.n_windows == 1:
            yield self.get(0)
            return
        for index in torch.randperm(self.n_windows, generator=generator).tolist():
            yield self.get(index)


def make_step(model: nn.Module, cfg: TrainConfig, ctx: RunContext) -> Step:
    if ctx.world_size > 1:
        return DataParallelStep(model, cfg, ctx)
    if isinstance(model, LinearRegression) and cfg.optimizer == "sgd":
        return FastLinearSGD(model, cfg)
    if isinstance(model, LinearRegression) and ctx.device.type == "cpu":
        return FastLinearAdam(model, cfg)
    return AutogradStep(model, cfg)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> LRScheduler | None:
    """torch's scheduler for `train.lr_schedule`, stepped once per epoch; None for constant
    (the lr is then exactly train.lr, as before schedules existed)."""
    if cfg.lr_schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.lr_schedule == "step":
        return MultiStepLR(optimizer, milestones=step_milestones(cfg.epochs), gamma=STEP_GAMMA)
    return None


STEP_GAMMA = 0.1  # lr_schedule "step": the lr is multiplied by this at each milestone


def step_milestones(epochs: int) -> list[int]:
    """The epochs (0-based) at which lr_schedule "step" multiplies the lr by STEP_GAMMA."""
    return [epochs // 2, (3 * epochs) // 4]


class EpochLr:
    """The lr of each epoch for a step without a torch optimizer (the fast path): the same
    scheduler on a stand-in optimizer, so both paths follow literally the same floats."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        self.scheduler = make_scheduler(self.holder, cfg)
        self.holder.step()  # no gradient, so no change; tells the scheduler a step happened

    @property
    def lr(self) -> float:
        return self.holder.param_groups[0]["lr"]

    def step(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        scheduler = self.scheduler
        return {
            "holder": self.holder.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.holder.load_state_dict(state["holder"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def epoch_lrs(cfg: TrainConfig) -> list[float]:
    """The lr each epoch trains with, in order."""
    schedule, lrs = EpochLr(cfg), []
    for _ in range(cfg.epochs):
        lrs.append(schedule.lr)
        schedule.step()
    return lrs


def average_start_epoch(cfg: TrainConfig) -> int | None:
    """The first epoch (0-based) whose steps enter the weight average; None without one."""
    return int(cfg.average_start * cfg.epochs) if cfg.average == "swa" else None


class Step:
    """One optimizer step on a batch, and the batches it wants."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor, m: int, total: torch.Tensor) -> None:
        """Update the model on (x, y), a share of a global batch of m rows; add the sum of the
        per-row losses to `total` (no host sync)."""
        raise NotImplementedError

    def batches(
        self, rows: torch.Tensor, order: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(x, y, m) per batch of `order`, gathered a chunk at a time; x and y are split once
        per chunk, so a step does no slicing."""
        chunk = max(1, CHUNK_ROWS // batch_size) * batch_size
        for start in range(0, len(order), chunk):
            block = self.layout(parallel.take(rows, order[start : start + chunk]))
            xs, ys = block[:, :-1].split(batch_size), block[:, -1].split(batch_size)
            yield from ((x, y, len(y)) for x, y in zip(xs, ys, strict=True))

    def layout(self, block: torch.Tensor) -> torch.Tensor:
        """The columns this step wants: features, then y."""
        return block

    def reduce(self, total: torch.Tensor) -> torch.Tensor:
        """The epoch's loss sum over every process."""
        return total

    def end_epoch(self, epoch: int) -> None:
        """After epoch `epoch` (0-based): move to the next epoch's lr and averaging."""

    def finish(self) -> None:
        """Leave the final weights (or their average) in the model."""

    def current(self) -> nn.Module:
        """The model with the weights of the last step (not their average)."""
        raise NotImplementedError

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights of the last step, as this step keeps them."""
        raise NotImplementedError

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Put back weights that `weights` gave."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What the next step depends on (tensors and plain values only: see checkpoint.py)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class FastLinearSGD(Step):
    """SGD on x @ w + b with the gradient of the batch-mean loss written out. With the bias
    folded into one vector wb = [w, b] and x carrying a column of ones:
    dL/dwb = x.T @ g / m, where g = dloss/dprediction per row."""

    def __init__(self, model: LinearRegression, cfg: TrainConfig) -> None:
        self.model, self.lr, self.loss = model, cfg.lr, cfg.loss
        self.wb = torch.cat([model.w.detach(), model.b.detach().reshape(1)])
        self.schedule = EpochLr(cfg) if cfg.lr_schedule != "constant" else None
        self.average_start = average_start_epoch(cfg)
        # Running mean of wb after each step, as AveragedModel keeps it (lerp by 1 / (n + 1)).
        self.mean: torch.Tensor | None = None
        self.n_averaged = 0
        self.averaging = self.average_start == 0

    def layout(self, block: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(len(block), 1, dtype=block.dtype, device=block.device)
        return torch.cat([block[:, :-1], ones, block[:, -1:]], dim=1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, m: int, total: torch.Tensor) -> None:
        residual = torch.addmv(y, x, self.wb, beta=-1)  # x @ w + b - y
        grad = _loss_grad(self.loss, residual)
        self.wb.addmv_(x.T, grad, alpha=-self.lr / m)
        total.add_(_loss_sum(self.loss, residual, grad))
        if self.averaging:
            if self.mean is None:
                self.mean = self.wb.clone()
            else:
                self.mean.lerp_(self.wb, 1 / (self.n_averaged + 1))
            self.n_averaged += 1

    def end_epoch(self, epoch: int) -> None:
        if self.schedule is not None:
            self.schedule.step()
            self.lr = self.schedule.lr
        self.averaging = self.average_start is not None and epoch + 1 >= self.average_start

    def state_dict(self) -> dict[str, Any]:
        schedule = self.schedule
        return {
            "wb": self.wb,
            "lr": self.lr,
            "mean": self.mean,
            "n_averaged": self.n_averaged,
            "averaging": self.averaging,
            "schedule": None if schedule is None else schedule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wb.copy_(state["wb"])
        self.lr, self.n_averaged, self.averaging = (
            state["lr"],
            state["n_averaged"],
            state["averaging"],
        )
        self.mean = None if state["mean"] is None else state["mean"].to(self.wb.device)
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])

    def finish(self) -> None:
        self._into_model(self.wb if self.mean is None else self.mean)

    def _into_model(self, wb: torch.Tensor) -> None:
        with torch.no_grad():
            self.model.w.copy_(wb[:-1])
            self.model.b.copy_(wb[-1])

    def current(self) -> nn.Module:
        self._into_model(self.wb)  # `finish` writes the final weights over these
        return self.model

    def weights(self) -> dict[str, torch.Tensor]:
        return {"wb": self.wb}

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.wb.copy_(weights["wb"])


class AutogradStep(Step):
    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        self.model, self.loss_fn = model, LOSSES[cfg.loss]
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        else:
            # fused: one kernel per tensor whose square root is the exact instruction. The
            # default (per-op) Adam hands its sqrt to MKL's vector maths, which is not
            # correctly rounded and gives other bits on another CPU (README, "Same bytes").
            self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.average_start = average_start_epoch(cfg)
        # The plain module, not its DDP wrapper: every rank holds the same weights after a step.
        self.trained: nn.Module = getattr(model, "module", model)
        self.averaged = AveragedModel(self.trained) if self.average_start is not None else None
        self.averaging = self.average_start == 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, m: int, total: torch.Tensor) -> None:
        loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        total.add_(loss.detach(), alpha=m)
        self.after_step()

    def after_step(self) -> None:
        if self.averaging:
            self.averaged.update_parameters(self.trained)

    def end_epoch(self, epoch: int) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        self.averaging = self.average_start is not None and epoch + 1 >= self.average_start

    def state_dict(self) -> dict[str, Any]:
        # Generic over whatever the optimizer and scheduler keep: their own state_dicts.
        return {
            "model": self.trained.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "averaged": None if self.averaged is None else self.averaged.state_dict(),
            "averaging": self.averaging,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trained.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.averaged is not None:
            self.averaged.load_state_dict(state["averaged"])
        self.averaging = state["averaging"]

    def current(self) -> nn.Module:
        return self.trained

    def weights(self) -> dict[str, torch.Tensor]:
        return self.trained.state_dict()

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.trained.load_state_dict(weights)

    def finish(self) -> None:
        if self.averaged is None:
            return
        with torch.no_grad():
            for mine, mean in zip(
                self.trained.parameters(), self.averaged.module.parameters(), strict=True
            ):
                mine.copy_(mean)


class FastLinearAdam(AutogradStep):
    """AutogradStep's fused Adam on x @ w + b (on the CPU), bit for bit, without autograd or
    torch.optim's Python work per step: the forward and the loss are the very ops autograd
    runs, the gradient is the ops its backward runs (the loss's backward formula, then mv's
    and the bias's: x.T @ g and g.sum()), and the update is the kernel Adam(fused=True) calls,
    torch._fused_adam_, on w and b with the optimizer's own state tensors. So the optimizer, its
    lr scheduler, the AveragedModel and every state_dict are AutogradStep's; the average is
    AveragedModel's update written out. tests/test_adam_step.py checks the bits against
    AutogradStep's."""

    def __init__(self, model: LinearRegression, cfg: TrainConfig) -> None:
        super().__init__(model, cfg)
        self.loss = cfg.loss
        # Detached aliases of the weights and of their average, updated in place as torch.optim
        # and AveragedModel update them (under no_grad); load_state_dict copies into them.
        self.params = [model.w.detach(), model.b.detach()]
        self.means = (
            None if self.averaged is None else [p.detach() for p in self.averaged.parameters()]
        )
        self.group = self.optimizer.param_groups[0]
        self.adam: tuple[list[torch.Tensor], ...] | None = None  # exp_avgs, exp_avg_sqs, steps
        self.ones = [torch.ones(())] * 2  # what each step count grows by
        self.scales: dict[int, torch.Tensor] = {}  # rows -> the loss's dloss/dprediction factor

    def _scale(self, n: int) -> torch.Tensor:
        """d(mean loss)/d(per-row loss) as the loss's backward has it in float32: 1 / n from
        mean's backward (l1_loss), mse_loss's and huber_loss's 2. / n and 1. / n."""
        scale = torch.tensor((2.0 if self.loss == "mse" else 1.0) / n, dtype=torch.float32)
        self.scales[n] = scale
        return scale

    def _adam_state(self) -> tuple[list[torch.Tensor], ...]:
        """The optimizer's state tensors per weight (kept until load_state_dict), made on the
        first step as Adam's _init_group makes them for fused=True (a float32 step count)."""
        optimizer = self.optimizer
        for p in self.group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        states = [optimizer.state[p] for p in self.group["params"]]
        optimizer._opt_called = True  # what the lr scheduler checks: a step came before its own
        self.adam = tuple([state[k] for state in states] for k in ("exp_avg", "exp_avg_sq", "step"))
        return self.adam

    def __call__(self, x: torch.Tensor, y: torch.Tensor, m: int, total: torch.Tensor) -> None:
        w, b = params = self.params
        pred = torch.mv(x, w).add_(b)  # x @ w + b (matmul of a matrix and a vector is mv)
        n = len(y)
        scale = self.scales.get(n)
        if scale is None:
            scale = self._scale(n)
        if self.loss == "mae":  # l1_loss is (pred - y).abs().mean(); backward: sgn(r) / n
            loss = torch._C._nn.l1_loss(pred, y, 1)
            g = pred.sub_(y).sign_().mul_(scale)
        elif self.loss == "mse":
            loss = torch._C._nn.mse_loss(pred, y, 1)
            g = pred.sub_(y).mul_(scale)
        else:
            loss = torch._C._nn.huber_loss(pred, y, 1, HUBER_DELTA)
            g = pred.sub_(y).clamp_(-HUBER_DELTA, HUBER_DELTA).mul_(scale)
        grads = [torch.mv(x.T, g), g.sum()]  # mv's backward for w; the bias's sum_to for b
        exp_avgs, exp_avg_sqs, steps = self.adam or self._adam_state()
        group = self.group
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, self.ones)
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
        )
        total.add_(loss, alpha=m)
        if self.averaging:
            self._average()

    def _average(self) -> None:
        """AveragedModel.update_parameters for the CPU's path: the first call copies the weights,
        each later one sets mean = mean + (w - mean) / (n_averaged + 1); then n_averaged += 1."""
        n_averaged = self.averaged.n_averaged
        if n_averaged.item() == 0:
            torch._foreach_copy_(self.means, self.params)
        else:
            change = torch._foreach_sub(self.params, self.means)
            torch._foreach_add_(self.means, torch._foreach_div(change, n_averaged + 1))
        n_averaged += 1

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        # The optimizer's param group and state tensors are new ones.
        self.group, self.adam = self.optimizer.param_groups[0], None


class DataParallelStep(AutogradStep):
    """Every rank walks the same permutation and takes rows r, r + W, r + 2W... of each global
    batch; DistributedDataParallel averages the gradients, so with the loss scaled to the
    global batch mean the update equals the single-process one."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: RunContext) -> None:
        super().__init__(nn.parallel.DistributedDataParallel(model), cfg)
        self.rank, self.world_size = ctx.rank, ctx.world_size

    def batches(
        self, rows: torch.Tensor, order: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        for start in range(0, len(order), batch_size):
            batch = rows[order[start : start + batch_size]]
            mine = batch[self.rank :: self.world_size]
            yield mine[:, :-1], mine[:, -1], len(batch)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, m: int, total: torch.Tensor) -> None:
        loss_sum = self.loss_fn(self.model(x), y, reduction="sum")
        loss = loss_sum * (self.world_size / m)  # DDP averages over ranks, hence * world_size
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        total.add_(loss_sum.detach())
        self.after_step()

    def reduce(self, total: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(total)
        return total


def _loss_grad(loss: str, residual: torch.Tensor) -> torch.Tensor:
    """d(sum of per-row loss)/d(prediction), for residual = prediction - y."""
    if loss == "mae":
        return torch.sign(residual)
    if loss == "mse":
        return 2 * residual
    return residual.clamp(-HUBER_DELTA, HUBER_DELTA)


def _loss_sum(loss: str, residual: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Sum of per-row losses, reusing the gradient where it is cheaper."""
    if loss == "mae":
        return torch.dot(residual, grad)  # r * sign(r) = |r|
    if loss == "mse":
        return torch.dot(residual, residual)
    a = residual.abs()
    return torch.where(a <= HUBER_DELTA, 0.5 * a * a, HUBER_DELTA * (a - 0.5 * HUBER_DELTA)).sum()
