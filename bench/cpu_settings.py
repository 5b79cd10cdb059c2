"""What the same-bytes-on-any-CPU settings cost: each workload timed with the package's CPU
settings ("pinned") and with torch's own choices ("native": MKL's and ATen's fastest code
path for this CPU, one thread per core), alternating, in fresh processes.

    python bench/cpu_settings.py [--repeats 3]

The settings are read when torch first computes, so "native" undoes them after importing the
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
import torchreg
if sys.argv[1] == "native":
    for key in torchreg.CPU_SETTINGS:
        os.environ.pop(key, None)
import torch
if sys.argv[1] == "native":
    torch.set_num_threads(os.cpu_count())
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
out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
cfg = params.train
seconds, _ = timed(params.model, cfg, small)
out["loop us/step (default run)"] = seconds / steps(cfg, len(small)) * 1e6
mlp = params.model.model_copy(update={"kind": "mlp"})
mcfg = cfg.model_copy(update={"epochs": 100})
seconds, _ = timed(mlp, mcfg, small)
out["mlp [16, 16] us/step (sgd, batch 16)"] = seconds / steps(mcfg, len(small)) * 1e6
wide = params.model.model_copy(update={"kind": "mlp", "hidden": (256, 256)})
wcfg = cfg.model_copy(update={"optimizer": "adam", "epochs": 1, "batch_size": 4096})
rows = torch.from_numpy(make_block(params.data, "train", 0, 262_144))
seconds, _ = timed(wide, wcfg, rows)
out["mlp [256, 256] us/step (adam, batch 4096)"] = seconds / steps(wcfg, len(rows)) * 1e6
lcfg = cfg.model_copy(update={"epochs": 1, "batch_size": 4096})
seconds, model = timed(params.model, lcfg, DataFile(big))
out["10M-row train s (linear, batch 4096, 1 epoch)"] = seconds
start = time.perf_counter()
evaluate(model, params.data, DataFile(big), DataFile(big))
out["10M-row evaluate s (train + test metrics)"] = time.perf_counter() - start
print(json.dumps(out))
"""


def measure(repeats: int) -> tuple[str, list[tuple[str, float, float]]]:
    """Run the workload `repeats` times each way; return a header line and, per workload, its
    (name, native median, pinned median)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCHREG_LOG_LEVEL": "WARNING"}
    runs: dict[str, list[dict]] = {"pinned": [], "native": []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(repeats):
            for mode in runs:
                result = subprocess.run(
                    [sys.executable, "-c", WORKLOAD, mode, work],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[mode].append(json.loads(result.stdout))
    native, pinned = runs["native"][0], runs["pinned"][0]
    header = (
        f"native: ATen {native['capability']}, {native['threads']} threads; "
        f"pinned: ATen {pinned['capability']}, {pinned['threads']} thread"
    )
    rows = [
        (
            key,
            statistics.median(r[key] for r in runs["native"]),
            statistics.median(r[key] for r in runs["pinned"]),
        )
        for key in native
        if key not in ("capability", "threads")
    ]
    return header, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    header, rows = measure(args.repeats)
    print(header)
    print("| workload | native | pinned | pinned / native |")
    print("|---|---|---|---|")
    for key, native, pinned in rows:
        print(f"| {key} | {native:.3g} | {pinned:.3g} | {pinned / native:.2f}x |")


if __name__ == "__main__":
    main()
