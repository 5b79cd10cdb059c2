"""Which ops of the training and evaluation paths give other bits on another CPU: each op on
fixed random inputs, natively and under emulated CPUs (qemu-user), with the package's portable
settings and with plain torch; prints, per emulated CPU, the ops whose bits differ from this
CPU's.

    python bench/cpu_ops.py [--cpus Haswell-v4 EPYC-Rome Nehalem]

Needs `qemu-x86_64` (apt-get install qemu-user). Each emulated run takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OPS = r"""
import hashlib, json, math, sys
if sys.argv[1] == "portable":
    import torchreg  # noqa: F401 - the portable settings
import numpy as np
import torch
import torch.nn.functional as F

g = torch.Generator().manual_seed(0)
x = torch.randn(4096, generator=g) * 3
p = x.abs() + 1e-3
a, b = torch.randn(256, 64, generator=g), torch.randn(64, 128, generator=g)
# k past OpenBLAS's block of the sum (Haswell: 384), so that its blocking is in play too.
a2, b2 = torch.randn(256, 1024, generator=g), torch.randn(1024, 64, generator=g)


def adam_steps(fused):
    w = torch.nn.Parameter(x.clone())
    opt = torch.optim.Adam([w], lr=0.01, fused=fused)
    for i in range(3):
        w.grad = p * (i + 1)
        opt.step()
    return w.detach()


ops = {
    "Adam, per op (torch's default)": lambda: adam_steps(None),
    "Adam, fused": lambda: adam_steps(True),
    "sqrt": lambda: p.sqrt(),
    "sqrt float64": lambda: p.double().sqrt(),
    "pow(x, 0.5)": lambda: p.pow(0.5),
    "rsqrt": lambda: p.rsqrt(),
    "exp": lambda: x.exp(),
    "log": lambda: p.log(),
    "tanh": lambda: x.tanh(),
    "sigmoid": lambda: x.sigmoid(),
    "relu": lambda: x.relu(),
    "sigmoid backward": lambda: torch.ops.aten.sigmoid_backward(x, x.sigmoid()),
    "tanh backward": lambda: torch.ops.aten.tanh_backward(x, x.tanh()),
    "division": lambda: x / p,
    "abs, sign": lambda: torch.stack([x.abs(), x.sign()]),
    "sum, mean": lambda: torch.stack([x.sum(), x.mean()]),
    "matrix product": lambda: a @ b,
    "addcdiv, addcmul, lerp": lambda: torch.stack(
        [x.addcdiv(x, p, value=0.1), x.addcmul(x, x, value=0.1), x.lerp(p, 0.3)]
    ),
    "huber loss": lambda: F.huber_loss(x, p, reduction="none"),
    "numpy sin float64": lambda: torch.from_numpy(np.sin(2 * x.double().numpy())),
    "numpy exp float64": lambda: torch.from_numpy(np.exp(x.double().numpy())),
    "math.cos (cosine schedule)": lambda: torch.tensor(
        [math.cos(math.pi * e / t) for t in (7, 100, 1000, 333) for e in range(t)]
    ),
    "numpy normal float32": lambda: torch.from_numpy(
        np.random.Generator(np.random.PCG64(1)).standard_normal(200000, dtype=np.float32)
    ),
}
ops["NumPy's OpenBLAS product (kernels by CPU)"] = lambda: torch.from_numpy(
    a2.numpy() @ b2.numpy()
)
if sys.argv[1] == "portable":
    from torchreg import cpu, gemm

    if cpu.family() == "x86-64-v3":  # elsewhere the Haswell kernels cannot run
        ops["OpenBLAS's Haswell product (torchreg.gemm)"] = lambda: gemm.mm(a2, b2)
digest = lambda t: hashlib.md5(t.contiguous().numpy().tobytes()).hexdigest()
print(json.dumps({k: digest(f()) for k, f in ops.items()}))
"""


def digests(cpu: str | None, settings: str) -> dict[str, str]:
    prefix = [] if cpu is None else ["qemu-x86_64", "-cpu", cpu]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [*prefix, sys.executable, "-c", OPS, settings],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", nargs="+", default=["Haswell-v4", "EPYC-Rome", "Nehalem"])
    args = parser.parse_args(argv)
    for settings in ("portable", "plain"):
        native = digests(None, settings)
        for cpu in args.cpus:
            got = digests(cpu, settings)
            differ = [op for op in native if got.get(op, native[op]) != native[op]]
            absent = [op for op in native if op not in got]
            print(
                f"{settings} torch, emulated {cpu}: differ: {', '.join(differ) or 'none'}"
                + (f"; not run there: {', '.join(absent)}" if absent else "")
            )


if __name__ == "__main__":
    main()
