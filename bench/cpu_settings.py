"""What the same-bytes-on-any-CPU settings cost: each workload timed with `compute.cpu:
portable` ("pinned") and `compute.cpu: native` (torch's own choices: MKL's and ATen's fastest
code path for this CPU, one thread per core), alternating, in fresh processes; then, for the
wide mlp and the 10M-row evaluate, where the difference goes: per setting (the portable mode
with one of its settings undone, and the baseline family's settings) and per op (torch's
profiler, self CPU time by op).

    python bench/cpu_settings.py [--repeats 3]

The settings are read when torch first computes, so each mode is set after importing the
package and before any computation; everything else is the same code.
"""

from __future__ import annotations

import argparse
import json
import os
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
parts = variant.get("parts", ["loop", "mlp", "wide", "big"])
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


def measure(repeats: int) -> tuple[str, list[tuple[str, float, float]]]:
    """Run the workload `repeats` times each way; return a header line and, per workload, its
    (name, native median, pinned median)."""
    runs: dict[str, list[dict]] = {"portable": [], "native": []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(repeats):
            for mode in runs:
                runs[mode].append(run_workload(mode, work, {}))
    native, pinned = runs["native"][0], runs["portable"][0]
    header = (
        f"native: ATen {native['capability']}, {native['threads']} threads; "
        f"portable: ATen {pinned['capability']}, {pinned['threads']} thread"
    )
    rows = [
        (
            key,
            statistics.median(r[key] for r in runs["native"]),
            statistics.median(r[key] for r in runs["portable"]),
        )
        for key in native
        if key not in ("capability", "threads")
    ]
    return header, rows


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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    header, rows = measure(args.repeats)
    print(header)
    print("| workload | native | portable | portable / native |")
    print("|---|---|---|---|")
    for key, native, pinned in rows:
        print(f"| {key} | {native:.3g} | {pinned:.3g} | {pinned / native:.2f}x |")
    variants, profiles = breakdown(args.repeats)
    base = dict(variants)["native"]
    print("\n| variant | " + " | ".join(base) + " |\n|---" * (len(base) + 1) + "|")
    for name, got in variants:
        cells = [f"{got[k]:.3g} ({got[k] / base[k]:.2f}x native)" for k in base]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for workload in ("profile wide", "profile evaluate"):
        for mode in ("native", "portable"):
            ops = top_ops(profiles[mode][workload])
            print(
                f"\n{workload}, {mode} (self CPU us): " + ", ".join(f"{k} {v:.0f}" for k, v in ops)
            )


if __name__ == "__main__":
    main()
