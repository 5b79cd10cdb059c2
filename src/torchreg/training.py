"""Mini-batch training: the tutorial's loop, done right and kept lean.

Each epoch draws a fresh permutation from a seeded generator and walks it in batches of
`train.batch_size` (the last batch may be smaller, as in the tutorial). Data larger than one
window of WINDOW_BYTES is read and shuffled a window at a time; rows are gathered in chunks of
CHUNK_ROWS. Under torchrun the same loop runs data-parallel with DistributedDataParallel.

The linear model with plain SGD takes a fast path with the gradient written out by hand
(no autograd graph per step); tests check it against the general autograd path.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from torchreg.config import TrainConfig
from torchreg.data import DataFile, stream_seed
from torchreg.errors import ConfigError, DivergenceError
from torchreg.model import LinearRegression

log = logging.getLogger(__name__)

HUBER_DELTA = 1.0
# An epoch whose mean loss exceeds this many times the untrained model's loss has diverged:
# with MAE a too-large lr makes the weights swing wildly without ever reaching inf.
DIVERGENCE_FACTOR = 1e3
CHUNK_ROWS = 1 << 16  # rows gathered at once: one gather per epoch for small data
WINDOW_BYTES = 128 << 20  # rows in memory at once when training from a file
# loss(pred, y, reduction="mean" | "sum"): a rank's share of a global batch needs the sum.
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mae": F.l1_loss,
    "mse": F.mse_loss,
    "huber": lambda pred, y, reduction="mean": F.huber_loss(
        pred, y, reduction=reduction, delta=HUBER_DELTA
    ),
}


def seeded(seed: int, *stream: object) -> torch.Generator:
    """A torch generator for one named stream of one seed (e.g. "init", "shuffle")."""
    return torch.Generator().manual_seed(stream_seed(seed, *stream))


def resolve_device(name: str) -> torch.device:
    """The device for `train.device`. CUDA gives other bits than the CPU (other kernels), so it
    is opt-in; there, torch's deterministic algorithms make a rerun on the same GPU model repeat
    bit for bit (cuBLAS needs a fixed workspace for that, set before its first call)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device = 'cuda' but no CUDA device is available here (allowed: auto, cpu)"
        )
    if name == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return torch.device(name)


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


def uses_fast_path(model: nn.Module, cfg: TrainConfig) -> bool:
    return isinstance(model, LinearRegression) and cfg.optimizer == "sgd"


class Windows:
    """Training rows as windows of at most `window` rows: the whole tensor when it is in memory,
    or ranges read from a DataFile one at a time (memory stays at one window)."""

    def __init__(self, source: torch.Tensor | DataFile, window: int, device: torch.device) -> None:
        self.source = source
        self.count = source.shape[0] if isinstance(source, torch.Tensor) else source.rows
        self.window = window
        self.windows = -(-self.count // window)
        self.device = device
        self._whole: torch.Tensor | None = None
        if isinstance(source, torch.Tensor):
            self._whole = source.to(device) if self.windows == 1 else source

    def get(self, i: int) -> torch.Tensor:
        if self._whole is not None:
            return self._whole[i * self.window : (i + 1) * self.window]
        block = torch.from_numpy(self.source.read(i * self.window, (i + 1) * self.window))
        if self.windows == 1:
            self._whole = block = block.to(self.device)  # small data: read once, keep
        return block


def fit(
    model: nn.Module,
    rows: torch.Tensor | DataFile,
    cfg: TrainConfig,
    generator: torch.Generator,
    fast: bool | None = None,
) -> list[float]:
    """Train `model` in place on rows (features, then y); return the mean loss of each epoch.

    Each epoch visits the windows of WINDOW_BYTES in a random order and each window's rows in a
    random order; data that fits one window (the usual case) gets one global permutation.
    Under torch.distributed (torchrun), every rank walks the same permutation and takes its
    own disjoint share of each global batch of `train.batch_size` rows; gradients are averaged
    by DistributedDataParallel so the update equals the single-process one.

    Raises DivergenceError as soon as an epoch's loss is NaN, infinite or over
    DIVERGENCE_FACTOR times the untrained model's.
    """
    device = next(model.parameters()).device
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    fast = (uses_fast_path(model, cfg) and world == 1) if fast is None else fast
    columns = rows.shape[1] if isinstance(rows, torch.Tensor) else rows.columns
    source = Windows(rows, window_rows(cfg.batch_size, columns), device)
    limit = DIVERGENCE_FACTOR * max(_initial_loss(model, source.get(0), cfg.loss, device), 1e-6)
    if fast:
        step, finish = _fast_sgd(model, cfg)
    else:
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model)
        step, finish = _autograd_step(model, cfg, world), None
    history: list[float] = []
    show_bar = sys.stderr.isatty() and rank == 0
    bar = tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not show_bar)
    every = max(1, cfg.epochs // 10)
    for epoch in bar:
        total = torch.zeros((), dtype=torch.float64, device=device)
        windows = (
            torch.randperm(source.windows, generator=generator).tolist()
            if source.windows > 1
            else [0]
        )
        for w in windows:
            block = source.get(w)
            order = torch.randperm(len(block), generator=generator)
            for x, y, m in _batches(block, order, cfg.batch_size, device, fast, rank, world):
                step(x, y, m, total)
            del block, order  # free this window before the next one is read
        if world > 1:
            dist.all_reduce(total)
        loss = total.item() / source.count
        if not math.isfinite(loss) or loss > limit:
            what = (
                f"became {loss}"
                if not math.isfinite(loss)
                else (
                    f"grew to {loss:.4g}, over {DIVERGENCE_FACTOR:g}x the untrained model's "
                    f"{limit / DIVERGENCE_FACTOR:.4g}"
                )
            )
            raise DivergenceError(
                f"training diverged at epoch {epoch + 1}: the loss {what} with "
                f"train.lr = {cfg.lr:g}; try a smaller train.lr (e.g. {cfg.lr / 10:g})"
            )
        history.append(loss)
        if bar.disable and rank == 0 and ((epoch + 1) % every == 0 or epoch == 0):
            log.info("epoch %d/%d  loss %.6f", epoch + 1, cfg.epochs, loss)
        elif not bar.disable:
            bar.set_postfix(loss=f"{loss:.6f}", refresh=False)
    if finish:
        finish()
    return history


def window_rows(batch_size: int, columns: int) -> int:
    """Rows per window: about WINDOW_BYTES, a whole number of batches."""
    rows = max(1, WINDOW_BYTES // (columns * 4))
    return max(1, rows // batch_size) * batch_size


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def _initial_loss(model: nn.Module, rows: torch.Tensor, loss: str, device: torch.device) -> float:
    """The untrained model's mean loss on the first rows: the yardstick for divergence."""
    sample = rows[:CHUNK_ROWS].to(device)
    return LOSSES[loss](model(sample[:, :-1]), sample[:, -1]).item()


def _batches(
    rows: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    device: torch.device,
    bias_column: bool,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(x, y, rows in the global batch) for this rank's share of each batch of `order`.

    Rows are gathered a chunk at a time (one gather per window for small data, bounded memory
    for large), then batches are views of the chunk. With bias_column, x gets a trailing
    column of ones, so x @ [w, b] = x @ w + b. With several ranks, rank r takes rows r, r+W,
    r+2W... of each global batch.
    """
    d = rows.shape[1] - 1
    chunk = max(1, CHUNK_ROWS // batch_size) * batch_size
    width = d + 1 if bias_column else d
    for start in range(0, len(order), chunk):
        block = rows[order[start : start + chunk]].to(device, non_blocking=True)
        if bias_column:
            ones = torch.ones(len(block), 1, dtype=block.dtype, device=device)
            block = torch.cat([block[:, :d], ones, block[:, d:]], dim=1)
        if world > 1:
            for batch in block.split(batch_size):
                mine = batch[rank::world]
                yield mine[:, :width], mine[:, width], len(batch)
        else:  # split x and y once per chunk: no slicing per step
            xs, ys = block[:, :width].split(batch_size), block[:, width].split(batch_size)
            yield from ((x, y, len(y)) for x, y in zip(xs, ys, strict=True))


def _autograd_step(model: nn.Module, cfg: TrainConfig, world: int = 1) -> Callable:
    loss_fn = LOSSES[cfg.loss]
    optimizer_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam
    optimizer = optimizer_cls(model.parameters(), lr=cfg.lr)

    def step(x: torch.Tensor, y: torch.Tensor, m: int, total: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total.add_(loss.detach(), alpha=m)  # sum of per-row losses, no sync

    def ddp_step(x: torch.Tensor, y: torch.Tensor, m: int, total: torch.Tensor) -> None:
        loss_sum = loss_fn(model(x), y, reduction="sum")
        # The mean over the global batch: DDP averages the ranks' gradients, hence * world.
        loss = loss_sum * (world / m)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total.add_(loss_sum.detach())

    return ddp_step if world > 1 else step


def _fast_sgd(model: LinearRegression, cfg: TrainConfig) -> tuple[Callable, Callable]:
    """SGD on x @ w + b with the gradient of the batch-mean loss written out. With the bias
    folded into one vector wb = [w, b] and x carrying a column of ones:
    dL/dwb = x.T @ g / m, where g = dloss/dprediction per row. Returns (step, finish):
    finish copies wb back into the model."""
    wb = torch.cat([model.w.detach(), model.b.detach().reshape(1)])
    lr, loss = cfg.lr, cfg.loss

    def step(x: torch.Tensor, y: torch.Tensor, m: int, total: torch.Tensor) -> None:
        residual = torch.addmv(y, x, wb, beta=-1)  # x @ w + b - y
        grad = _loss_grad(loss, residual)
        wb.addmv_(x.T, grad, alpha=-lr / m)
        total.add_(_loss_sum(loss, residual, grad))

    def finish() -> None:
        with torch.no_grad():
            model.w.copy_(wb[:-1])
            model.b.copy_(wb[-1])

    return step, finish
