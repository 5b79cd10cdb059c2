"""The whole pipeline: `dvc repro` from nothing against the tutorial script and against a floor
pipeline of bare imports, where each stage's time goes, and a `dvc repro` with nothing to do."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from common import (
    BIN,
    ROOT,
    STAGES,
    Table,
    clean_outputs,
    describe_costs,
    fresh_copy,
    measured,
    median_of,
    stage_costs,
)
from sweep import set_params

# The floor: the same five stages, each a bare process that imports only the library the real
# stage cannot do without and writes one small output, chained as the real ones are. No
# pipeline with these stages as separate processes can be faster than this under DVC.
FLOOR_IMPORTS = {
    "validate": "",
    "prepare": "import numpy",
    "train": "import torch",
    "evaluate": "import torch",
    "plot": "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot",
}


def floor_repo(dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=dest, check=True)
    lines, previous = ["stages:"], None
    for stage, imports in FLOOR_IMPORTS.items():
        code = f"{imports}; " if imports else ""
        lines += [
            f"  {stage}:",
            f"    cmd: python -c \"{code}open('out/{stage}', 'w').write('done')\"",
            *([f"    deps: [out/{previous}]"] if previous else []),
            f"    outs: [out/{stage}]",
        ]
        previous = stage
    (dest / "dvc.yaml").write_text("\n".join(lines) + "\n")
    return dest


def floor_command(stage: str) -> list[str]:
    return [sys.executable, "-c", FLOOR_IMPORTS[stage] or "pass"]


def bench_pipeline(table: Table, repeats: int, work: Path, epochs: int | None) -> None:
    repo = fresh_copy(work / "pipeline")
    floor = floor_repo(work / "floor")
    if epochs:
        set_params(repo, train__epochs=epochs)
    tutorial = [sys.executable, str(ROOT / "bench/tutorial.py"), str(work / "tutorial.png")]
    t_tut, t_dvc, t_floor = [], [], []
    for _ in range(repeats):  # interleaved, so a slow spell hits all three alike
        t_tut.append(measured(tutorial, work)[0])
        clean_outputs(repo)
        t_dvc.append(measured(["dvc", "repro"], repo)[0])
        clean_outputs(floor, ("out",))
        (floor / "out").mkdir()
        t_floor.append(measured(["dvc", "repro"], floor)[0])
    tut, dvc, bare = (statistics.median(t) for t in (t_tut, t_dvc, t_floor))
    bare_alone = sum(median_of(floor_command(s), floor, repeats) for s in STAGES)
    table.add("tutorial script, one process (data, 1000 epochs, plot)", f"{tut:.2f} s")
    table.ratio("`dvc repro` from nothing, default params (5 stages)", dvc, tut, "tutorial", 1.25)
    table.add(
        "floor: `dvc repro` of 5 bare stages (python; numpy; torch; torch; pyplot)",
        f"{bare:.2f} s = {bare / tut:.2f}x tutorial; the 5 processes alone {bare_alone:.2f} s, "
        f"DVC's own work {bare - bare_alone:.2f} s",
    )
    table.add("  project / floor", f"{dvc / bare:.2f}x ({dvc - bare:+.2f} s above the floor)")
    costs = stage_costs(repo, STAGES, repeats)
    alone = sum(whole for _, whole in costs.values())
    table.add("  where the time goes (each stage alone)", describe_costs(costs))
    table.add(
        "  DVC's own work in the cold repro (repro - stages alone)",
        f"{dvc - alone:.2f} s of {dvc:.2f} s",
    )

    status = median_of(["dvc", "status"], repo, max(repeats, 5))
    noop = median_of(["dvc", "repro"], repo, max(repeats, 5))
    table.add("`dvc status`, up to date", f"{status:.2f} s")
    table.ratio("`dvc repro`, nothing to do", noop, status, "status", 1.5)
