"""Every core, without a changed bit: work split by the shapes alone, combined in a fixed order.

In the portable mode torch computes on one thread: a product or a sum split across threads adds
its parts in an order set by the thread count, which follows the machine. Here the split is a
function of the shapes only (blocks of BLOCK_ROWS rows, never "one per core"; a product too
small to pay for the hand-over is one block), each block is one single-threaded call that
writes its own rows of the result, and the sum over k is never split: any number of threads,
one core or sixteen, computes exactly the same blocks the same way. The threads only decide when.

`Linear` is nn.Linear (same parameters, same state dict) whose large products go this way: on
the x86-64-v3 family float32 products of MIN_GEMM_WORK multiply-adds and more, by OpenBLAS's
Haswell kernels (torchreg.gemm: about 2.5x MKL's vendor-neutral path on one core, before the
blocks); elsewhere products of MIN_BLOCKED_WORK and more, by torch. `Linear(x, relu=True)`
also computes the ReLU after it (and its gradient) in the same blocks of rows, while each is in
the core's cache: an exact op, so the bits of a separate nn.ReLU. `take` gathers rows in
blocks (a copy: any split gives its bytes), and `ordered_map` computes per-chunk results on
every core for a caller that adds them up in the chunks' order (evaluation's sums).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from functools import cache
from typing import TypeVar

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from torchreg import cpu, gemm
from torchreg.budget import usable_cpus

# Rows per block: large enough that one block keeps a core busy for well over the cost of
# handing it to a thread (about 100 us here), small enough to give every core work.
BLOCK_ROWS = 1024
# Output features per block of a weight gradient (its rows): the same reasoning.
BLOCK_FEATURES = 64
# Rows per block of a gather (parallel.take): a few hundred microseconds of random reads.
GATHER_ROWS = 8192
# Multiply-adds of a product below which it is not split: a few milliseconds on one core.
MIN_BLOCKED_WORK = 2**26
# Multiply-adds of a layer's product from which OpenBLAS's Haswell kernels beat MKL's portable
# path once the cost of calling them is counted (measured: about even at 2**21).
MIN_GEMM_WORK = 2**21
# Families whose every float32 layer goes through torchreg.gemm, however small: torch's own
# product there picks its kernels by the CPU model (x86-64's MKL has one vendor-neutral path).
ARM64_FAMILIES = ("arm64 (Linux)",)
# Threads that compute the blocks: one per core this process may use (the bits do not depend
# on it).
THREADS = usable_cpus()
T = TypeVar("T")
R = TypeVar("R")


_pool_lock = threading.Lock()


@cache
def _new_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="torchreg")


def _pool() -> ThreadPoolExecutor:
    """The one pool of this process (two threads asking at once get the same one)."""
    with _pool_lock:
        return _new_pool()


def _after_fork_in_child() -> None:
    """A forked child has none of the pool's threads (and maybe a held lock): it starts anew."""
    global _pool_lock
    _pool_lock = threading.Lock()
    _new_pool.cache_clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


_share = threading.local()  # .running: this thread computes a share of for_each or ordered_map


@contextmanager
def _as_share(grad: bool, inference: bool) -> Iterator[None]:
    """Compute as the caller would (torch keeps grad and inference modes per thread, and so do
    OpenMP and MKL their thread counts: the portable mode's one thread must hold here too; with
    MKL on three threads a float64 product of a 300-row chunk has other bits), and hand
    nothing further to the pool: a share that waited on the pool's threads, all busy with
    shares, would wait for ever. Work nested so runs on the share's thread, in the same blocks
    (the bits do not depend on it)."""
    before = getattr(_share, "running", False)
    _share.running = True
    if cpu.current() == "portable":  # a new thread starts with OpenMP's and MKL's defaults
        torch.set_num_threads(1)
    try:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            yield
    finally:
        _share.running = before


def _threads() -> int:
    """The threads work may be spread over from here: 1 inside a share."""
    return 1 if getattr(_share, "running", False) else THREADS


def for_each(fn: Callable[[T], object], items: Iterable[T]) -> None:
    """fn(item) for every item, on every core: each thread takes a share of consecutive items,
    the calling thread the first. Each thread computes in the caller's grad and inference
    modes. It returns, or raises the first share's error, once every share has ended."""
    items = list(items)
    shares = min(len(items), _threads())
    if shares < 2:
        for item in items:
            fn(item)
        return
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    bounds = [i * len(items) // shares for i in range(shares + 1)]

    def share(i: int) -> None:
        with _as_share(grad, inference):
            for item in items[bounds[i] : bounds[i + 1]]:
                fn(item)

    others = [_pool().submit(share, i) for i in range(1, shares)]
    try:
        share(0)
    finally:  # share 0 failed or not: none returns while another still writes
        wait(others)
    for future in others:
        future.result()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], ahead: int | None = None) -> Iterator[R]:
    """fn(item) for every item, yielded in the items' order. In the portable mode up to `ahead`
    items (default: THREADS) are computed at once on every core: whatever adds the results up
    adds them in this one order, so the bits do not depend on the threads. Each thread
    computes in the caller's grad and inference modes."""
    ahead = _threads() if ahead is None else min(ahead, _threads())
    if cpu.current() != "portable" or ahead < 2:
        yield from map(fn, items)
        return
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def call(item: T) -> R:
        with _as_share(grad, inference):
            return fn(item)

    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(_pool().submit(call, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # stopped early (an error, or the caller's): nothing left running
        for future in pending:
            future.cancel()
        wait(pending)


def take(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows[index], the rows `index` names, in its order. In the portable mode on the CPU a
    large gather is split into blocks of GATHER_ROWS on every core (torch would copy on its
    one thread): a copy has the same bytes however it is split."""
    if cpu.current() != "portable" or rows.device.type != "cpu" or len(index) < 2 * GATHER_ROWS:
        return rows[index]
    out = rows.new_empty((len(index), *rows.shape[1:]))

    def block(start: int) -> None:
        part = slice(start, start + GATHER_ROWS)
        torch.index_select(rows, 0, index[part], out=out[part])

    with torch.no_grad():
        for_each(block, range(0, len(index), GATHER_ROWS))
    return out


def _mm(t: torch.Tensor) -> Callable[..., torch.Tensor]:
    """The product for t's dtype: the Haswell kernels where they can, else torch's (with
    gemm.mm's arguments)."""
    if t.dtype == torch.float32 and gemm.available():
        return gemm.mm
    return lambda a, b, out, accumulate: out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)


def blocked_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    rows: int,
    bias: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """a @ b (+ bias), by blocks of `rows` rows of a, each written in place into the result,
    then (with `relu`) ReLU'd in place while the block is in the core's cache: torch.relu's own
    kernel, exact, so the same bits as a ReLU after the product."""
    out = a.new_empty(len(a), b.size(1))
    mm = _mm(a)
    # Handing a block to another thread costs about 100 us: a smaller product is computed in
    # one piece. The choice depends on the shapes alone.
    if a.numel() * b.size(1) < MIN_BLOCKED_WORK:
        rows = max(1, len(a))

    def block(start: int) -> None:
        part = slice(start, start + rows)
        if bias is not None:  # the product is added to the bias: one pass over out less
            out[part] = bias
        mm(a[part], b, out=out[part], accumulate=bias is not None)
        if relu:
            out[part].relu_()

    with torch.no_grad():
        for_each(block, range(0, len(a), rows))
    return out


def _relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The gradient before a ReLU whose output was `out`, as nn.ReLU's backward computes it
    (threshold_backward: 0 where out <= 0), in blocks of rows on every core. Its rows are
    contiguous, as `out`'s and threshold_backward's are, whatever grad's layout: the sums and
    products after it add in the order their layout sets."""
    before = torch.empty_like(out)

    def block(start: int) -> None:
        part = slice(start, start + BLOCK_ROWS)
        torch.ops.aten.threshold_backward.grad_input(
            grad[part], out[part], 0, grad_input=before[part]
        )

    with torch.no_grad():
        for_each(block, range(0, len(grad), BLOCK_ROWS))
    return before


class _LinearFunction(torch.autograd.Function):
    """x @ W.T + b, then ReLU with `relu`, and the gradients, in blocks: rows of x (and of the
    gradient for x, and of ReLU's), rows of the weight gradient. The bias gradient is one sum
    over the batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool):
        out = blocked_mm(x, weight.T, BLOCK_ROWS, bias, relu)
        ctx.save_for_backward(x, weight, out if relu else None)  # ReLU's gradient needs out
        return out

    @staticmethod
    @once_differentiable  # its products are not recorded: a second derivative is refused
    def backward(ctx, grad: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        if out is not None:
            grad = _relu_backward(grad, out)
        grad_x = blocked_mm(grad, weight, BLOCK_ROWS) if need_x else None
        # Row block j of the weight gradient is (columns j of grad).T @ x.
        grad_w = blocked_mm(grad.T, x, BLOCK_FEATURES) if need_w else None
        return grad_x, grad_w, grad.sum(0) if need_b else None, None


class Linear(nn.Linear):
    """nn.Linear, and with `relu` nn.Linear then nn.ReLU; in the portable mode on the CPU, a
    2-d batch whose product is large enough goes through the function above: from
    MIN_GEMM_WORK multiply-adds when the Haswell kernels take its dtype (below, calling them
    costs more than MKL's product), from MIN_BLOCKED_WORK otherwise (where it is split into
    blocks). The choice depends on the shapes, the dtype and the CPU family alone; the bits are
    those of nn.Linear (then nn.ReLU) computed in the portable mode's one thread."""

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if (
            cpu.current() == "portable"
            and x.device.type == self.weight.device.type == "cpu"
            and x.dim() == 2
            and self.bias is not None
            and x.dtype == self.weight.dtype == self.bias.dtype
        ):
            # The size first: a small layer never loads the OpenBLAS library (on x86-64).
            work = x.numel() * self.out_features
            min_gemm_work = 0 if cpu.family() in ARM64_FAMILIES else MIN_GEMM_WORK
            if work >= MIN_BLOCKED_WORK or (work >= min_gemm_work and _mm(x) is gemm.mm):
                return _LinearFunction.apply(x, self.weight, self.bias, relu)
        out = super().forward(x)
        return torch.relu(out) if relu else out
