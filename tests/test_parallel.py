"""The portable mode's use of every core: the same bits whatever the number of threads, and the
same function as nn.Linear."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import torchreg.parallel as parallel
from torchreg import cpu


def run_layer(pool_size: int, monkeypatch, dtype=torch.float32):
    pool = ThreadPoolExecutor(pool_size)
    monkeypatch.setattr(parallel, "_pool", lambda: pool)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # nn.Linear's own initial weights
    layer = parallel.Linear(37, 300).to(dtype)
    x = torch.randn(5000, 37, generator=g, dtype=dtype, requires_grad=True)
    out = layer(x)
    (out * torch.randn(out.shape, generator=g, dtype=dtype)).sum().backward()
    return layer, x, out


def test_the_blocks_give_the_same_bits_on_any_number_of_threads(monkeypatch):
    cpu.use("portable")
    runs = [run_layer(n, monkeypatch) for n in (1, 2, 5)]
    for layer, x, out in runs[1:]:
        assert torch.equal(out, runs[0][2])
        assert torch.equal(x.grad, runs[0][1].grad)
        assert torch.equal(layer.weight.grad, runs[0][0].weight.grad)
        assert torch.equal(layer.bias.grad, runs[0][0].bias.grad)


@pytest.mark.parametrize("mode", ["portable", "native"])
def test_it_is_nn_linear(monkeypatch, mode):
    """The same values and gradients as nn.Linear (in float64, to rounding) in both modes."""
    cpu.use(mode)
    try:
        layer, x, out = run_layer(2, monkeypatch, torch.float64)
    finally:
        cpu.use("portable")
    plain = nn.Linear(37, 300).to(torch.float64)
    plain.load_state_dict(layer.state_dict())
    x2 = x.detach().clone().requires_grad_()
    out2 = plain(x2)
    g = torch.Generator().manual_seed(0)
    torch.randn(5000, 37, generator=g, dtype=torch.float64)  # the draw run_layer made for x
    (out2 * torch.randn(out2.shape, generator=g, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(out, out2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, plain.bias.grad, rtol=1e-12, atol=1e-12)


def test_small_batches_take_nn_linear_itself(monkeypatch):
    calls = []
    monkeypatch.setattr(parallel._LinearFunction, "apply", lambda *a: calls.append(a))
    parallel.Linear(4, 3)(torch.zeros(2 * parallel.BLOCK_ROWS - 1, 4))
    assert not calls
    parallel.Linear(4, 3)(torch.zeros(2 * parallel.BLOCK_ROWS, 4))
    assert calls
