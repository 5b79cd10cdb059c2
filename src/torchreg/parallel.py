"""Every core, without a changed bit: work split by the shapes alone, combined in a fixed order.

In the portable mode torch computes on one thread: a product or a sum split across threads adds
its parts in an order set by the thread count, which follows the machine. Here the split is a
function of the shapes only (blocks of BLOCK_ROWS rows, never "one per core"), each block is one
single-threaded call, and the blocks are joined in order: any number of threads, one core or
sixteen, computes exactly the same blocks the same way. The threads only decide when.

`Linear` is nn.Linear (same parameters, same state dict) whose large products go this way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from torchreg import cpu

# Rows per block: large enough that one block keeps a core busy for well over the cost of
# handing it to a thread (tens of microseconds), small enough to give every core work.
BLOCK_ROWS = 1024
# Output features per block of a weight gradient (its rows): the same reasoning.
BLOCK_FEATURES = 64
T = TypeVar("T")
R = TypeVar("R")


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="torchreg")


def ordered_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """fn over items, on every core, results in the items' order. Each thread computes in the
    caller's grad and inference modes (torch keeps them per thread)."""
    items = list(items)
    if len(items) < 2:
        return [fn(item) for item in items]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def in_callers_mode(item: T) -> R:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    return list(_pool().map(in_callers_mode, items))


def blocked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int):
    """fn of each block of `size` rows, joined in order."""
    return torch.cat(ordered_map(fn, x.split(size)))


class _LinearFunction(torch.autograd.Function):
    """x @ W.T + b, and its gradients, in blocks: rows of x (and of the gradient for x), rows
    of the weight gradient. The bias gradient is one sum over the batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return blocked(lambda rows: F.linear(rows, weight, bias), x, BLOCK_ROWS)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = blocked(lambda rows: rows @ weight, grad, BLOCK_ROWS)
        # Row block j of the weight gradient is (columns j of grad).T @ x.
        grad_w = torch.cat(ordered_map(lambda c: c.T @ x, grad.split(BLOCK_FEATURES, 1)))
        return grad_x, grad_w, grad.sum(0)


class Linear(nn.Linear):
    """nn.Linear; in the portable mode on the CPU, a batch of at least 2 * BLOCK_ROWS rows goes
    through the fixed blocks above (the choice depends on the shapes alone)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            cpu.current() == "portable"
            and x.device.type == "cpu"
            and x.dim() == 2
            and len(x) >= 2 * BLOCK_ROWS
            and self.bias is not None
        ):
            return _LinearFunction.apply(x, self.weight, self.bias)
        return super().forward(x)
