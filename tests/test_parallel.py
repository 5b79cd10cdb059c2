"""The portable mode's use of every core: the same bits whatever the number of threads, and the
same function as nn.Linear."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import torchreg.parallel as parallel
from support import ROOT, subprocess_env
from torchreg import cpu


def run_layer(pool_size: int, monkeypatch, dtype=torch.float32, rows: int = 5000):
    pool = ThreadPoolExecutor(pool_size)
    monkeypatch.setattr(parallel, "_pool", lambda: pool)
    monkeypatch.setattr(parallel, "THREADS", pool_size)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # nn.Linear's own initial weights
    # Every product of this layer (forward, gradient for x, for the weight) is large enough to
    # be split into blocks.
    layer = parallel.Linear(64, 300).to(dtype)
    x = torch.randn(rows, 64, generator=g, dtype=dtype, requires_grad=True)
    out = layer(x)
    (out * torch.randn(out.shape, generator=g, dtype=dtype)).sum().backward()
    return layer, x, out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_blocks_give_the_same_bits_on_any_number_of_threads(monkeypatch, dtype):
    # float32 takes torchreg.gemm on an AVX2/FMA CPU, float64 torch's products.
    assert parallel.MIN_BLOCKED_WORK <= 5000 * 64 * 300
    cpu.use("portable")
    runs = [run_layer(n, monkeypatch, dtype) for n in (1, 2, 5)]
    for layer, x, out in runs[1:]:
        assert torch.equal(out, runs[0][2])
        assert torch.equal(x.grad, runs[0][1].grad)
        assert torch.equal(layer.weight.grad, runs[0][0].weight.grad)
        assert torch.equal(layer.bias.grad, runs[0][0].bias.grad)


@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [5000, 600, 20])
@pytest.mark.parametrize("mode", ["portable", "native"])
def test_a_layer_with_its_relu_has_the_bits_of_the_layer_then_relu(
    monkeypatch, mode, rows, dtype, layout
):
    """Linear(x, relu=True) (in the portable mode on a wide batch: ReLU in each block of rows
    on the pool, and its gradient too) gives exactly the values and gradients of the layer
    followed by nn.ReLU, on any number of threads, NaN, zeros and -0.0 included, whether the
    gradient coming back is stored by rows or by columns (then the sums after ReLU's gradient
    add in the order of its layout, which must be nn.ReLU's)."""
    cpu.use(mode)
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    layer = parallel.Linear(64, 300).to(dtype)
    with torch.no_grad():  # exact zeros, a -0.0 and NaN before the ReLU, and in its gradient
        layer.weight[:3] = 0
        layer.bias[:3] = torch.tensor([0.0, -0.0, float("nan")], dtype=dtype)
    x0 = torch.randn(rows, 64, generator=g, dtype=dtype)
    upstream = torch.randn(rows, 300, generator=g, dtype=dtype)
    upstream[::7, 5] = float("nan")
    if layout == "columns":
        upstream = upstream.T.contiguous().T

    def run(threads: int, fused: bool):
        use_pool(monkeypatch, threads)
        layer.zero_grad()
        x = x0.clone().requires_grad_()
        out = layer(x, relu=True) if fused else nn.ReLU()(layer(x))
        out.backward(upstream)
        return [t.clone() for t in (out, x.grad, layer.weight.grad, layer.bias.grad)]

    try:
        want = run(1, fused=False)
        for threads in (1, 2, 3):
            for got, expected in zip(run(threads, fused=True), want, strict=True):
                assert torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0))
                assert torch.equal(got.isnan(), expected.isnan())
                assert torch.equal(got.signbit(), expected.signbit())
    finally:
        cpu.use("portable")


def test_an_mlp_with_relu_calls_each_layer_with_its_relu(monkeypatch):
    """MLP.forward hands each hidden layer its ReLU (the last layer has none), and its output is
    nn.Sequential's, bit for bit; other activations, and a ReLU that hooks watch, go module by
    module (the hooks fire)."""
    from torchreg.model import MLP

    cpu.use("portable")
    torch.manual_seed(0)
    x = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0))
    calls, forward, seen = [], parallel.Linear.forward, []

    def noted(self, x, relu=False):
        calls.append(relu)
        return forward(self, x, relu)

    for activation, hooked, fused in (
        ("relu", False, [True, True, False]),
        ("relu", True, [False, True, False]),
        ("tanh", False, [False, False, False]),
    ):
        model = MLP(4, (256, 256), activation)
        if hooked:
            model.net[1].register_forward_hook(lambda module, args, out: seen.append(out.shape))
        calls.clear()
        monkeypatch.setattr(parallel.Linear, "forward", noted)
        got = model(x)
        assert calls == fused
        monkeypatch.setattr(parallel.Linear, "forward", forward)
        assert torch.equal(got, model.net(x).squeeze(-1))
    assert seen == [(3000, 256)] * 2  # the model's call, then nn.Sequential's


# 5000 rows: every product in blocks; 600 rows: float32's products in one piece, by
# torchreg.gemm (600 x 64 x 300 is between MIN_GEMM_WORK and MIN_BLOCKED_WORK).
@pytest.mark.parametrize("rows", [5000, 600])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["portable", "native"])
def test_it_is_nn_linear(monkeypatch, mode, dtype, rows):
    """The same values and gradients as nn.Linear, in both modes, to rounding (float64's, or
    float32's against a float64 nn.Linear)."""
    assert parallel.MIN_GEMM_WORK <= 600 * 64 * 300 < parallel.MIN_BLOCKED_WORK
    cpu.use(mode)
    try:
        layer, x, out = run_layer(2, monkeypatch, dtype, rows)
    finally:
        cpu.use("portable")
    plain = nn.Linear(64, 300).to(torch.float64)
    plain.load_state_dict(layer.state_dict())
    x2 = x.detach().double().requires_grad_()
    out2 = plain(x2)
    g = torch.Generator().manual_seed(0)
    torch.randn(rows, 64, generator=g, dtype=dtype)  # the draw run_layer made for x
    (out2 * torch.randn(out2.shape, generator=g, dtype=dtype).double()).sum().backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-4
    for got, want in [
        (out, out2),
        (x.grad, x2.grad),
        (layer.weight.grad, plain.weight.grad),
        (layer.bias.grad, plain.bias.grad),
    ]:
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [2, 3])
def test_the_blocks_run_on_every_thread_each_once(monkeypatch, threads):
    pool = ThreadPoolExecutor(threads)
    monkeypatch.setattr(parallel, "_pool", lambda: pool)
    monkeypatch.setattr(parallel, "THREADS", threads)
    # The first item of each share waits until every share has started: run one after the
    # other, they would wait in vain (10 s, then BrokenBarrierError).
    starts, barrier, seen = (
        {s * 7 // threads for s in range(threads)},
        threading.Barrier(threads),
        [],
    )

    def note(i: int) -> None:
        if i in starts:
            barrier.wait(timeout=10)
        seen.append((i, threading.current_thread().name))

    parallel.for_each(note, range(7))
    assert sorted(i for i, _ in seen) == list(range(7))
    assert len({name for _, name in seen}) == threads


def test_which_batches_take_the_blocks(monkeypatch):
    """A product of MIN_GEMM_WORK multiply-adds and more on an AVX2/FMA CPU in float32
    (torchreg.gemm's products); otherwise, and in float64, of MIN_BLOCKED_WORK and more (where
    it is split); in native mode none."""
    calls = []
    monkeypatch.setattr(parallel._LinearFunction, "apply", lambda *a: calls.append(a))
    v3 = cpu.family() == "x86-64-v3"
    gemm_rows, blocked_rows = parallel.MIN_GEMM_WORK // 64, parallel.MIN_BLOCKED_WORK // 64
    for dtype, rows, taken in [
        (torch.float32, gemm_rows - 1, False),
        (torch.float32, gemm_rows, v3),
        (torch.float32, blocked_rows, True),
        (torch.float64, blocked_rows - 1, False),
        (torch.float64, blocked_rows, True),
    ]:
        calls.clear()
        parallel.Linear(8, 8).to(dtype)(torch.zeros(rows, 8, dtype=dtype))
        assert bool(calls) == taken, (dtype, rows)
    cpu.use("native")
    try:
        calls.clear()
        parallel.Linear(8, 8)(torch.zeros(blocked_rows, 8))
        assert not calls
    finally:
        cpu.use("portable")


def test_a_batch_of_another_dtype_than_the_layer_is_refused_as_nn_linear_refuses_it():
    cpu.use("portable")
    rows = parallel.MIN_BLOCKED_WORK // (64 * 64)
    for layer_dtype, x_dtype in [(torch.float64, torch.float32), (torch.float32, torch.float64)]:
        layer = parallel.Linear(64, 64).to(layer_dtype)
        with pytest.raises(RuntimeError, match="same dtype"):
            layer(torch.ones(rows, 64, dtype=x_dtype))


def test_a_second_derivative_is_refused_not_wrong():
    cpu.use("portable")
    layer = parallel.Linear(64, 300)
    x = torch.randn(5000, 64, requires_grad=True)
    (gx,) = torch.autograd.grad(torch.tanh(layer(x)).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.pow(2).sum().backward()


FORK = """
import hashlib, os, torch
from torchreg import cpu, parallel
cpu.use("portable")
parallel.THREADS = 2
layer = parallel.Linear(64, 300)
x = torch.randn(5000, 64, generator=torch.Generator().manual_seed(0))
digest = lambda: hashlib.md5(layer(x).detach().numpy().tobytes()).hexdigest()
parent = digest()  # the pool's threads are running now
read, write = os.pipe()
if os.fork() == 0:
    os.write(write, digest().encode())
    os._exit(0)
os.wait()
print(parent == os.read(read, 64).decode())
"""


def test_a_forked_child_computes_the_same_blocks():
    done = subprocess.run(
        [sys.executable, "-c", FORK],
        env=subprocess_env(ROOT / "src"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "True"


# The bytes of a layer in blocks (5000 rows) and in one piece (600 rows), on the x86-64-v3
# family with the pinned scipy-openblas32, recorded as dvc.lock records the pipeline's: the
# same on every such CPU. Which products are split, and where, changes them (OpenBLAS rounds a
# block of rows otherwise than the same rows in a larger product), so a change of that policy
# changes users' bytes: it must show here, not pass unnoticed.
RECORDED = {5000: "de70596c414c928e68ffa2b5f22c33f0", 600: "581934cc0e4cff908ef23b4fbe16f022"}


@pytest.mark.skipif(cpu.family() != "x86-64-v3", reason="the bytes of the x86-64-v3 family")
@pytest.mark.parametrize("rows", RECORDED)
def test_the_bytes_are_the_recorded_ones(monkeypatch, rows):
    cpu.use("portable")
    layer, x, out = run_layer(2, monkeypatch, rows=rows)
    digest = hashlib.md5()
    for t in (out, x.grad, layer.weight.grad, layer.bias.grad):
        digest.update(t.detach().numpy().tobytes())
    assert digest.hexdigest() == RECORDED[rows]


def use_pool(monkeypatch, threads: int) -> None:
    pool = ThreadPoolExecutor(threads)
    monkeypatch.setattr(parallel, "_pool", lambda: pool)
    monkeypatch.setattr(parallel, "THREADS", threads)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "count",
    [0, 1, 2 * parallel.GATHER_ROWS - 1, 2 * parallel.GATHER_ROWS, 5 * parallel.GATHER_ROWS + 3],
)
def test_take_is_rows_at_index_on_any_number_of_threads(monkeypatch, threads, count):
    use_pool(monkeypatch, threads)
    cpu.use("portable")
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(7 * parallel.GATHER_ROWS, 5, generator=g)
    index = torch.randint(len(rows), (count,), generator=g)
    got = parallel.take(rows, index)
    assert got.shape == (count, 5) and torch.equal(got, rows[index])


def test_a_large_take_runs_on_every_thread(monkeypatch):
    use_pool(monkeypatch, 2)
    cpu.use("portable")
    names, plain = set(), torch.index_select

    def noted(*args, **kw):
        names.add(threading.current_thread().name)
        return plain(*args, **kw)

    monkeypatch.setattr(torch, "index_select", noted)
    rows = torch.arange(40_000.0).reshape(-1, 2)
    parallel.take(rows, torch.arange(len(rows)).flip(0))
    assert len(names) == 2


@pytest.mark.parametrize("mode", ["portable", "native"])
def test_ordered_map_yields_in_order_with_at_most_ahead_running(monkeypatch, mode):
    """Later items finish first (they sleep less), yet the results come in the items' order;
    no more than `ahead` run at once, on the pool in the portable mode."""
    use_pool(monkeypatch, 3)
    cpu.use(mode)
    lock, running, most, threads = threading.Lock(), [0], [0], set()

    def slow(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            threads.add(threading.current_thread().name)
        time.sleep(0.02 * (8 - i))
        with lock:
            running[0] -= 1
        return i * i

    try:
        assert list(parallel.ordered_map(slow, range(8), ahead=2)) == [i * i for i in range(8)]
    finally:
        cpu.use("portable")
    if mode == "portable":
        assert most[0] == 2 and threading.main_thread().name not in threads
    else:
        assert most[0] == 1 and threads == {threading.current_thread().name}


def test_ordered_map_raises_the_first_error_in_order_and_keeps_the_callers_modes(monkeypatch):
    use_pool(monkeypatch, 3)
    cpu.use("portable")

    def check(i: int) -> bool:
        if i in (3, 5):
            time.sleep(0.1 if i == 3 else 0)  # 5 fails first in time, 3 first in order
            raise ValueError(f"item {i}")
        return torch.is_inference_mode_enabled()

    with torch.inference_mode(), pytest.raises(ValueError, match="item 3"):
        got = []
        for value in parallel.ordered_map(check, range(8)):
            got.append(value)
    assert got == [True, True, True]


def test_for_each_raises_only_once_every_share_has_ended(monkeypatch):
    """The caller's share fails at once while another still writes into the caller's memory:
    for_each must not return (nor raise) before that one ends."""
    use_pool(monkeypatch, 2)
    ended = []

    def fn(i: int) -> None:
        if i == 0:
            raise ValueError("share 0")
        time.sleep(0.3)
        ended.append(i)

    with pytest.raises(ValueError, match="share 0"):
        parallel.for_each(fn, range(2))
    assert ended == [1]


def test_ordered_map_stopped_early_leaves_nothing_running(monkeypatch):
    use_pool(monkeypatch, 3)
    cpu.use("portable")
    started, ended = [], []

    def slow(i: int) -> int:
        started.append(i)
        time.sleep(0.3 if i else 0)
        ended.append(i)
        return i

    results = parallel.ordered_map(slow, range(8), ahead=3)
    assert next(results) == 0
    time.sleep(0.1)  # items 1 and 2 are running (or waiting for a thread)
    results.close()  # the caller stops reading
    assert len(started) > 1 and sorted(ended) == sorted(started)


def test_threads_asking_at_once_get_one_pool(monkeypatch):
    class SlowToStart(ThreadPoolExecutor):  # widens the window two askers could both start one
        def __init__(self, *args, **kw):
            time.sleep(0.05)
            super().__init__(*args, **kw)

    monkeypatch.setattr(parallel, "ThreadPoolExecutor", SlowToStart)
    parallel._new_pool.cache_clear()
    barrier, pools = threading.Barrier(8), []

    def ask() -> None:
        barrier.wait()
        pools.append(parallel._pool())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parallel._new_pool.cache_clear()  # the next test's pool is a plain one
    assert len({id(pool) for pool in pools}) == 1


NESTED = """
import torch
from concurrent.futures import ThreadPoolExecutor
import torchreg.parallel as parallel
from torchreg import cpu
from torchreg.data import ArrayRows
from torchreg.evaluation import prediction_errors

class Chunks(ArrayRows):
    chunk_rows = 4096

cpu.use("portable")
pool = ThreadPoolExecutor(2)
parallel._pool, parallel.THREADS = (lambda: pool), 2
torch.manual_seed(0)
model = torch.nn.Sequential(parallel.Linear(64, 300), torch.nn.ReLU(), parallel.Linear(300, 1))
model.requires_grad_(False)
rows = torch.randn(3 * 4096, 65, generator=torch.Generator().manual_seed(0))
on_the_pool = prediction_errors(lambda x: model(x).squeeze(1), Chunks(rows))
parallel.THREADS = 1
print(on_the_pool, on_the_pool == prediction_errors(lambda x: model(x).squeeze(1), Chunks(rows)))
"""


def test_a_layer_in_blocks_inside_a_chunk_on_the_pool_does_not_wait_for_ever():
    """evaluate computes chunks on the pool's threads; a wide layer inside one splits its
    product into blocks: handed to the same pool, all of whose threads wait for them, they
    would never run. Nested work runs on the share's own thread, with the same bits."""
    assert parallel.MIN_BLOCKED_WORK <= 4096 * 64 * 300
    result = subprocess.run(
        [sys.executable, "-c", NESTED], cwd=ROOT, env=subprocess_env(ROOT / "src"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("{'mae': ") and result.stdout.endswith("} True\n")
