"""What the same-bytes-on-any-CPU settings cost: each workload timed with `compute.cpu:
portable` ("pinned") and `compute.cpu: native` (torch's own choices: MKL's and ATen's fastest
code path for this CPU, one thread per core), alternating, in fresh processes; then, for the
wide mlp and the 10M-row train and evaluate, where the difference goes: per setting (the
portable mode with one of its settings undone, and the baseline family's settings) and per op
(torch's profiler, self CPU time by op).

    python bench/cpu_settings.py [--repeats 5]

Each figure is the best of the repeats (noise on a shared machine only adds time), with the
median's ratio beside it; the header names the CPU (model, vendor, extensions, clock), and
the products' rate is given per core against the core's peak (FMA lanes x 2 x clock).

The settings are read when torch first computes, so each mode is set after importing the
package and before any computation; everything else is the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKLOAD = r"""
import json, os, sys, time
from pathlib import Path
from torchreg import cpu
mode, variant = sys.argv[1], json.loads(sys.argv[3])
cpu.use(mode)
for key, value in variant.get("env", {}).items():
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
import torch
if variant.get("torch_products"):  # the portable mode as before torchreg.gemm
    from torchreg import gemm
    gemm._library = lambda: None
if "threads" in variant:
    torch.set_num_threads(variant["threads"])
from torchreg.config import load_params
from torchreg.data import DataFile, make_block, write_dataset
from torchreg.evaluation import evaluate
from torchreg.model import build_model
from torchreg.training import fit, seeded

params = load_params("params.yaml")
params = params.resolved("synthetic", params.data.n_train)
work = Path(sys.argv[2])
big = work / "train.npy"
if not big.exists():
    write_dataset(big, params.data, "train", 10_000_000)
small = torch.from_numpy(make_block(params.data, "train", 0, params.data.n_train))


def timed(model_cfg, train_cfg, rows):
    model = build_model(model_cfg, 4, train_cfg.init_std, seeded(0, "init"))
    start = time.perf_counter()
    fit(model, rows, train_cfg, seeded(0, "shuffle"))
    return time.perf_counter() - start, model


steps = lambda cfg, n: cfg.epochs * -(-n // cfg.batch_size)
parts = variant.get("parts", ["loop", "mlp", "wide", "products", "big"])
out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
cfg = params.train
if "loop" in parts:
    seconds, _ = timed(params.model, cfg, small)
    out["loop us/step (default run)"] = seconds / steps(cfg, len(small)) * 1e6
if "mlp" in parts:
    mlp = params.model.model_copy(update={"kind": "mlp"})
    mcfg = cfg.model_copy(update={"epochs": 100})
    seconds, _ = timed(mlp, mcfg, small)
    out["mlp [16, 16] us/step (sgd, batch 16)"] = seconds / steps(mcfg, len(small)) * 1e6
if "wide" in parts:
    wide = params.model.model_copy(update={"kind": "mlp", "hidden": (256, 256)})
    wcfg = cfg.model_copy(update={"optimizer": "adam", "epochs": 1, "batch_size": 4096})
    rows = torch.from_numpy(make_block(params.data, "train", 0, 262_144))
    timed(wide, wcfg, rows[:16384])  # steady state: the first steps of a process cost more
    seconds, _ = timed(wide, wcfg, rows)
    out["mlp [256, 256] us/step (adam, batch 4096)"] = seconds / steps(wcfg, len(rows)) * 1e6
    if variant.get("profile"):
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(wide, wcfg.model_copy(update={"epochs": 1}), rows[:65536])
        out["profile wide"] = {
            e.key: e.self_cpu_time_total / 16 for e in prof.key_averages()  # per step (16)
        }
if "products" in parts:
    # The wide mlp's three products per layer and step (forward, gradient of the input, of
    # the weight), as its training computes them: the portable mode's blocks, native's mm.
    from torchreg import parallel
    g = torch.Generator().manual_seed(0)
    shapes = ((4096, 256), (256, 256), (4096, 256))
    x, w, grad = (torch.randn(*shape, generator=g) for shape in shapes)
    def products():
        if mode == "portable":
            parallel.blocked_mm(x, w.T, parallel.BLOCK_ROWS)
            parallel.blocked_mm(grad, w, parallel.BLOCK_ROWS)
            parallel.blocked_mm(grad.T, x, parallel.BLOCK_FEATURES)
        else:
            torch.mm(x, w.T), torch.mm(grad, w), torch.mm(grad.T, x)
    products()
    start, n = time.perf_counter(), 20
    for _ in range(n):
        products()
    seconds = (time.perf_counter() - start) / n
    cores = parallel.THREADS if mode == "portable" else torch.get_num_threads()
    flops = 3 * 2 * 4096 * 256 * 256
    out["products GFLOP/s per core (wide mlp layer, fwd + bwd)"] = flops / seconds / cores / 1e9
    # The kernels alone: each product whole, on this one thread (portable: the Haswell kernels;
    # native: MKL's own path held at one thread). Against the row above it tells a slow kernel
    # from slow blocks or threads.
    from torchreg import gemm
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mm = gemm.mm if mode == "portable" and gemm.available() else torch.mm
    whole = lambda: (mm(x, w.T), mm(grad, w), mm(grad.T, x))
    whole()
    start = time.perf_counter()
    for _ in range(n):
        whole()
    seconds = (time.perf_counter() - start) / n
    torch.set_num_threads(threads)
    out["products GFLOP/s, each whole on one thread"] = flops / seconds / 1e9
if "big" in parts:
    lcfg = cfg.model_copy(update={"epochs": 1, "batch_size": 4096})
    seconds, model = timed(params.model, lcfg, DataFile(big))
    out["10M-row train s (linear, batch 4096, 1 epoch)"] = seconds
    start = time.perf_counter()
    evaluate(model, params.data, DataFile(big), DataFile(big))
    out["10M-row evaluate s (train + test metrics)"] = time.perf_counter() - start
    if variant.get("profile"):
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(params.model, lcfg, DataFile(big))
        out["profile train"] = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            evaluate(model, params.data, DataFile(big), DataFile(big))
        out["profile evaluate"] = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
print(json.dumps(out))
"""


# Where the portable mode's cost goes: the mode with one setting undone at a time, and the
# baseline family's settings (a CPU without AVX2/FMA); and native mode on a CPU without AVX-512
# (MKL and ATen held at AVX2), on the workloads it costs most on.
BREAKDOWN = {
    "portable, MKL's own code path": ("portable", {"env": {"MKL_CBWR": None}}),
    "portable, ATen's own kernels": ("portable", {"env": {"ATEN_CPU_CAPABILITY": None}}),
    "portable, one thread per core": ("portable", {"threads": os.cpu_count() or 1}),
    "portable, torch's products (MKL COMPATIBLE) for the mlp": ("portable", {"torch_products": 1}),
    "baseline family (no AVX2/FMA)": (
        "portable",
        {"env": {"ATEN_CPU_CAPABILITY": "default"}, "torch_products": 1},
    ),
    "native on an AVX2 CPU (MKL and ATen at AVX2)": (
        "native",
        {"env": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}},
    ),
}
PROFILED = ("wide", "big")


def run_workload(mode: str, work: str, variant: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCHREG_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-c", WORKLOAD, mode, work, json.dumps(variant)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def cpu_description() -> dict:
    """The CPU as the kernel describes it: model, vendor, family/model numbers, the vector
    extensions that matter here, the core count and the clock /proc/cpuinfo reports."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    widest = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    mhz = float(info.get("cpu MHz", "0") or 0)
    return {
        "model": info.get("model name", platform.processor() or platform.machine()),
        "vendor": info.get("vendor_id", "?"),
        "family": f"family {info.get('cpu family', '?')} model {info.get('model', '?')}",
        "extensions": " ".join(
            name
            for name, flag in (("AVX2", "avx2"), ("FMA", "fma"), ("AVX-512", "avx512f"))
            if flag in flags
        ),  # fmt: skip
        "cores": os.cpu_count() or 1,
        "ghz": mhz / 1000,
        "widest": widest,
    }


def peak_gflops(cpu: dict, width: int) -> float:
    """One core's peak at `width` float32 lanes: one FMA (2 flops) per lane and cycle. A core
    with two FMA units peaks at twice this; the figure is a yardstick, not a promise."""
    return width * 2 * cpu["ghz"]


def measure(repeats: int) -> tuple[str, list[tuple[str, float, float, float, float]]]:
    """Run the workload `repeats` times each way, alternating; return a header line and, per
    workload, its (name, native best, portable best, native median, portable median). The
    best of the runs is the figure: on a shared machine noise only ever adds time."""
    runs: dict[str, list[dict]] = {"portable": [], "native": []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(repeats):
            for mode in runs:
                runs[mode].append(run_workload(mode, work, {}))
    native, pinned = runs["native"][0], runs["portable"][0]
    cpu = cpu_description()
    header = (
        f"CPU: {cpu['model']} ({cpu['vendor']}, {cpu['family']}; {cpu['extensions']}; "
        f"{cpu['cores']} cores at {cpu['ghz']:.2f} GHz as /proc/cpuinfo says). "
        f"native: ATen {native['capability']}, {native['threads']} threads; "
        f"portable: ATen {pinned['capability']}, {pinned['threads']} thread"
    )
    rows = []
    for key in native:
        if key in ("capability", "threads"):
            continue
        higher_is_better = "GFLOP/s" in key
        pick = max if higher_is_better else min
        values = {mode: [r[key] for r in got] for mode, got in runs.items()}
        rows.append(
            (
                key,
                pick(values["native"]),
                pick(values["portable"]),
                statistics.median(values["native"]),
                statistics.median(values["portable"]),
            )
        )
    return header, rows


def ratio(key: str, native: float, pinned: float) -> float:
    """portable / native as a cost: time over time, or native's rate over portable's."""
    return native / pinned if "GFLOP/s" in key else pinned / native


def breakdown(repeats: int) -> tuple[list[tuple[str, dict[str, float]]], dict[str, dict]]:
    """Per setting: (variant, median seconds per workload) for the two costly workloads, with
    portable and native first; and the per-op profiles of portable and native."""
    variants = {
        "native": ("native", {}),
        "portable": ("portable", {}),
        **BREAKDOWN,
    }
    times: dict[str, list[dict]] = {name: [] for name in variants}
    profiles: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as work:
        for i in range(repeats):
            for name, (mode, variant) in variants.items():
                profile = i == 0 and name in ("native", "portable")
                got = run_workload(mode, work, {**variant, "parts": PROFILED, "profile": profile})
                if profile:
                    profiles[name] = {k: got.pop(k) for k in list(got) if k.startswith("profile")}
                times[name].append(got)
    rows = []
    for name, got in times.items():
        keys = [k for k in got[0] if k not in ("capability", "threads")]
        rows.append((name, {k: statistics.median(g[k] for g in got) for k in keys}))
    return rows, profiles


def top_ops(profile: dict[str, float], n: int = 8) -> list[tuple[str, float]]:
    return sorted(profile.items(), key=lambda kv: -kv[1])[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    header, rows = measure(args.repeats)
    print(header)
    cpu = cpu_description()
    print("| workload | native | portable | portable / native (best) | (median) |")
    print("|---|---|---|---|---|")
    for key, native, pinned, native_median, pinned_median in rows:
        cells = f"{native:.3g} | {pinned:.3g}"
        if "GFLOP/s" in key:
            cells = (
                f"{native:.3g} ({native / peak_gflops(cpu, cpu['widest']):.2f}x one "
                f"{cpu['widest']}-lane FMA a cycle) | "
                f"{pinned:.3g} ({pinned / peak_gflops(cpu, 8):.2f}x one 8-lane FMA a cycle)"
            )
        print(
            f"| {key} | {cells} | {ratio(key, native, pinned):.2f}x | "
            f"{ratio(key, native_median, pinned_median):.2f}x |"
        )
    variants, profiles = breakdown(args.repeats)
    base = dict(variants)["native"]
    print("\n| variant | " + " | ".join(base) + " |")
    print("|---" * (len(base) + 1) + "|")
    for name, got in variants:
        cells = [f"{got[k]:.3g} ({got[k] / base[k]:.2f}x native)" for k in base]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for workload in ("profile wide", "profile train", "profile evaluate"):
        for mode in ("native", "portable"):
            ops = top_ops(profiles[mode][workload])
            print(
                f"\n{workload}, {mode} (self CPU us): " + ", ".join(f"{k} {v:.0f}" for k, v in ops)
            )


if __name__ == "__main__":
    main()
