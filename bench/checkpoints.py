"""What training checkpoints cost, and what resuming from one saves.

The overhead is measured in one process (the stage's own `run()`, with and without a checkpoint
path), in CPU seconds of that process (on a shared machine, wall time also counts the
neighbours), and timed where it is spent: every call into the checkpoint code, against the
training run without checkpoints. (The difference of two whole runs is noise at this size.) The
resume is measured with real stage processes: a run killed after 90 % of its epochs, then
resumed, against a run from scratch.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import QUIET, Table, fresh_copy, run_stage
from sweep import set_params

# In the clone: train.run without a checkpoint, then with one at each interval given, repeated.
# Prints per setting the median CPU seconds of the whole run and of the checkpoint work in it
# (every call of a Checkpoints method: set-up, load, the per-epoch "due?", saves, removal),
# and the CPU seconds of each save of the last repeat.
DRIVER = """
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, "stages")
import torch, train
from torchreg.checkpoint import Checkpoints
from torchreg.config import load_params
from torchreg.context import RunContext

base, repeats = load_params("params.yaml"), int(sys.argv[1])
spent, saves = [0.0], []
def timed(name):
    real = getattr(Checkpoints, name)
    def wrapper(self, *args):
        start = time.process_time()
        try:
            return real(self, *args)
        finally:
            spent[0] += time.process_time() - start
            if name == "save":
                saves.append(time.process_time() - start)
    setattr(Checkpoints, name, wrapper)
for name in ("__init__", "load", "due", "save", "remove"):
    timed(name)
def once(every):
    params = base.model_copy(update={"train": base.train.model_copy(
        update={"checkpoint_every_s": every or 0.0})})
    path = None if every is None else Path("checkpoints/bench.ckpt")
    spent[0] = 0.0
    saves.clear()
    start = time.process_time()
    train.run(params, RunContext(torch.device("cpu")), Path("data/train.npy"),
              Path("models/bench.safetensors"), Path("bench-live"), path)
    return time.process_time() - start, spent[0], list(saves)
settings = [None] + [float(x) for x in sys.argv[2:]]
once(None)  # warm-up
runs = {str(s): [once(s) for _ in range(repeats)] for s in settings}
print(json.dumps({k: {"run": statistics.median(r[0] for r in v),
                      "checkpoints": statistics.median(r[1] for r in v),
                      "saves": v[-1][2]} for k, v in runs.items()}))
"""


def overhead(repo: Path, repeats: int, intervals: list[float]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(repeats), *map(str, intervals)],
        cwd=repo,
        env={**os.environ, **QUIET},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def add_overhead(table: Table, what: str, got: dict, default: float) -> None:
    plain = got["None"]["run"]
    for key, run in got.items():
        if key == "None":
            continue
        every, saves = float(key), run["saves"]
        label = "every epoch" if every == 0 else f"checkpoint_every_s {every:g}"
        share = run["checkpoints"] / plain
        judged = every == default
        table.add(
            f"{what}, {label}: checkpoint work / training without checkpoints",
            f"{run['checkpoints']:.4f} / {plain:.2f} CPU s = {100 * share:.3g} % "
            f"({len(saves)} checkpoints; the whole run {run['run']:.2f} CPU s)",
            "<= 2 %" if judged else "",
            (share <= 0.02) if judged else None,
        )
        if len(saves) > 1:
            first, rest = saves[0], statistics.median(saves[1:])
            table.add(
                f"{what}: one checkpoint",
                f"the first {first:.3f} CPU s (it hashes the training data), later ones "
                f"{rest:.4f} CPU s (median): at most {100 * max(first, rest) / default:.2g} % "
                f"of training at the default interval ({default:g} s)",
            )


def bench_checkpoints(
    table: Table, repeats: int, work: Path, rows: int, epochs: int, default: float = 60.0
) -> None:
    repo = fresh_copy(work / "checkpoints")
    run_stage(repo, "prepare")
    add_overhead(table, "default params", overhead(repo, repeats, [default, 0]), default)

    set_params(repo, data__n_train=rows, train__batch_size=4096, train__epochs=3)
    run_stage(repo, "prepare")
    add_overhead(
        table,
        f"{rows:,} rows, batch 4096, 3 epochs",
        overhead(repo, repeats, [default, 0]),
        default,
    )

    # Killed after epoch 0.9 * epochs (before that epoch's checkpoint), then resumed.
    set_params(repo, train__epochs=epochs, train__checkpoint_every_s=0)
    scratch, _ = run_stage(repo, "train")
    kill_at = int(0.9 * epochs)
    killed = subprocess.run(
        [sys.executable, "stages/train.py"],
        cwd=repo,
        env={**os.environ, **QUIET, "TORCHREG_KILL_AT": f"epoch:{kill_at}"},
        capture_output=True,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    resumed, _ = run_stage(repo, "train")
    table.add(
        f"{rows:,} rows, {epochs} epochs, killed after epoch {kill_at} (checkpoint every epoch): "
        "rerun from scratch vs resumed",
        f"{scratch:.1f} s vs {resumed:.1f} s: resuming saves {scratch - resumed:.1f} s "
        f"({100 * (1 - resumed / scratch):.0f} %)",
    )
    for name in ("data", "checkpoints"):
        subprocess.run(["rm", "-rf", str(repo / name)], check=True)
