"""Large data: time and peak memory per stage as the rows grow, and data-parallel training."""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path

from common import Table, fresh_copy, measured, run_stage
from sweep import set_params

DATA_STAGES = ("prepare", "train", "evaluate")


def stage_runs(repo: Path, rows: int, batch: int, repeats: int) -> tuple[dict, int]:
    """Per data stage, (median seconds, max peak RSS) at `rows` training rows, 1 epoch; and the
    size of the training file."""
    set_params(repo, data__n_train=rows, train__batch_size=batch, train__epochs=1)
    runs = [{stage: run_stage(repo, stage) for stage in DATA_STAGES} for _ in range(repeats)]
    per_stage = {
        stage: (statistics.median(r[stage][0] for r in runs), max(r[stage][1] for r in runs))
        for stage in DATA_STAGES
    }
    return per_stage, (repo / "data/train.npy").stat().st_size


def bench_scale(table: Table, repeats: int, work: Path, sizes: list[int]) -> None:
    """Memory against the data's size, and time growth, at batch 4096."""
    repo = fresh_copy(work / "scale")
    _, base_rss = measured(["python", "-c", "import torch"], repo)
    table.add(
        "torch process baseline (python -c 'import torch')", f"{base_rss / 2**20:.0f} MiB peak RSS"
    )
    seconds_at: dict[int, float] = {}
    for n in sizes:
        per_stage, size = stage_runs(repo, n, 4096, repeats)
        limit = base_rss + 2 * size
        judged = n == max(sizes)  # the target is set at the largest size
        target = f"RSS <= {limit / 2**20:.0f} MiB (torch + 2x {size / 2**20:.0f} MiB data)"
        for stage, (secs, rss) in per_stage.items():
            table.add(
                f"{n:,} rows x 4, batch 4096, 1 epoch: {stage}",
                f"{secs:.2f} s, peak RSS {rss / 2**20:.0f} MiB",
                target if judged else "",
                (rss <= limit) if judged else None,
            )
        seconds_at[n] = sum(secs for secs, _ in per_stage.values())
    small, big = sizes
    growth = seconds_at[big] / seconds_at[small]
    table.add(
        f"time growth {small:,} -> {big:,} rows (prepare+train+evaluate)",
        f"{growth:.1f}x",
        f"<= {1.2 * big / small:.0f}x",
        growth <= 1.2 * big / small,
    )


def bench_huge(table: Table, repeats: int, work: Path, sizes: list[int]) -> None:
    """Peak memory per stage must not grow with the number of rows (batch 65536)."""
    repo = fresh_copy(work / "huge")
    peaks: dict[str, list[int]] = {stage: [] for stage in DATA_STAGES}
    for n in sizes:
        per_stage, size = stage_runs(repo, n, 65536, repeats)
        for stage, (secs, rss) in per_stage.items():
            peaks[stage].append(rss)
            table.add(
                f"{n:,} rows x 4 ({size / 2**30:.2f} GiB), batch 65536, 1 epoch: {stage}",
                f"{secs:.1f} s, peak RSS {rss / 2**20:.0f} MiB",
            )
    for stage, (small, big) in peaks.items():
        table.add(
            f"peak RSS {sizes[0]:,} -> {sizes[1]:,} rows: {stage}",
            f"{big / small:.2f}x",
            "flat (<= 1.1x)",
            big / small <= 1.1,
        )
    shutil.rmtree(repo / "data", ignore_errors=True)


def bench_ddp(table: Table, repeats: int, work: Path, rows: int) -> None:
    """The train stage with 1 and 2 processes, where compute dominates and where it does not."""
    repo = fresh_copy(work / "ddp")
    cases = {
        f"mlp [256, 256], {rows:,} rows, batch 4096, 1 epoch": dict(
            data__n_train=rows,
            model__kind="mlp",
            model__hidden=[256, 256],
            train__batch_size=4096,
            train__epochs=1,
            train__optimizer="adam",
        ),
        "linear, default params (500 rows, batch 16, 1000 epochs)": {},
    }
    for name, changes in cases.items():
        subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=repo, check=True)
        set_params(repo, **changes)
        run_stage(repo, "prepare")
        times = {}
        for nproc in (1, 2):
            set_params(repo, train__nproc=nproc)
            times[nproc] = statistics.median(run_stage(repo, "train")[0] for _ in range(repeats))
        table.add(
            f"train stage, {name}: 1 vs 2 processes",
            f"{times[1]:.1f} s vs {times[2]:.1f} s = {times[2] / times[1]:.2f}x",
        )
