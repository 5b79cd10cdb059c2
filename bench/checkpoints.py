"""What training checkpoints cost, and what resuming from one saves.

The overhead is measured in one process (the stage's own `run()`, with and without a checkpoint
path, alternating), so process start-up noise stays out of a difference of a few percent, and
in CPU seconds of that process: on a shared machine, wall time also counts the neighbours. The
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

# In the clone: train.run without a checkpoint, then with one at each interval given, repeated;
# prints the median CPU seconds of each, and the CPU seconds of each checkpoint the last
# repeat wrote.
DRIVER = """
import json, statistics, sys, time
from pathlib import Path
sys.path.insert(0, "stages")
import torch, train
import torchreg.checkpoint as checkpoint
from torchreg.config import load_params
from torchreg.context import RunContext

base, repeats = load_params("params.yaml"), int(sys.argv[1])
saves = {}
real_save = checkpoint.Checkpoints.save
def counted(self, state, epoch):
    start = time.process_time()
    real_save(self, state, epoch)
    saves.setdefault(str(self.every_s), []).append(time.process_time() - start)
checkpoint.Checkpoints.save = counted
def once(every):
    params = base.model_copy(update={"train": base.train.model_copy(
        update={"checkpoint_every_s": every or 0.0})})
    path = None if every is None else Path("checkpoints/bench.ckpt")
    start = time.process_time()
    train.run(params, RunContext(torch.device("cpu")), Path("data/train.npy"),
              Path("models/bench.safetensors"), Path("bench-live"), path)
    return time.process_time() - start
settings = [None] + [float(x) for x in sys.argv[2:]]
once(None)  # warm-up
times = {str(s): [] for s in settings}
for _ in range(repeats):
    saves.clear()
    for s in settings:
        times[str(s)].append(once(s))
print(json.dumps({"median": {k: statistics.median(v) for k, v in times.items()},
                  "saves": saves}))
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
    times, saves = got["median"], got["saves"]
    plain = times["None"]
    for key, seconds in times.items():
        if key == "None":
            continue
        every = float(key)
        each = saves.get(key, [])
        n = len(each)
        label = "every epoch" if every == 0 else f"checkpoint_every_s {every:g}"
        judged = every == default
        cost = seconds / plain - 1
        table.add(
            f"{what}: train with checkpoints ({label}) vs without",
            f"{seconds:.2f} vs {plain:.2f} CPU s = {100 * cost:+.1f} % ({n} checkpoints)",
            "<= +2 %" if judged else "",
            (cost <= 0.02) if judged else None,
        )
        if n > 1:
            first, rest = each[0], statistics.median(each[1:])
            table.add(
                f"{what}: one checkpoint, timed alone",
                f"the first {first:.3f} CPU s (it hashes the training data), later ones "
                f"{rest:.4f} CPU s (median): at most {100 * max(first, rest) / default:.2g} % "
                f"of training at the default interval ({default:g} s)",
            )


def bench_checkpoints(
    table: Table, repeats: int, work: Path, rows: int, epochs: int, default: float = 60.0
) -> None:
    repo = fresh_copy(work / "checkpoints")
    run_stage(repo, "generate")
    add_overhead(table, "default params", overhead(repo, repeats, [default, 0]), default)

    set_params(repo, data__n_train=rows, train__batch_size=4096, train__epochs=3)
    run_stage(repo, "generate")
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
