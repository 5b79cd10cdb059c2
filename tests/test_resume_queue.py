"""A queued experiment whose worker dies: what DVC does with it, and the README's way to finish
it from its checkpoint instead of from scratch (README, Interrupted runs)."""

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from support import run

pytestmark = pytest.mark.slow


def processes_in(repo: Path) -> list[int]:
    """The processes working in the repo or in one of its temporary experiment copies: the
    queue's worker, DVC's executor and the stage."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = os.readlink(entry / "cwd")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(entry.name) != os.getpid() and cwd.startswith(str(repo)):
            pids.append(int(entry.name))
    return pids


def test_a_dead_workers_experiment_resumes_in_the_workspace(repo):
    epochs = ["-S", "train.epochs=2000"]
    run(
        ["dvc", "exp", "run", "--queue", "-n", "long", *epochs, "-S", "train.checkpoint_every_s=0"],
        repo,
    )
    with open(repo.parent / "queue.log", "w") as log:  # the workers inherit it; a pipe would hang
        run(["dvc", "queue", "start", "-j", "1"], repo, capture_output=False, stdout=log)
    deadline = time.monotonic() + 180
    while not (found := list(repo.glob(".dvc/tmp/exps/tmp*/checkpoints/train.ckpt"))):
        assert time.monotonic() < deadline, "no checkpoint in the queued run within 180 s"
        time.sleep(0.1)
    for pid in processes_in(repo):  # the machine is gone: worker, executor and stage at once
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)

    status = run(["dvc", "queue", "status"], repo).stdout
    assert any(ln.split()[1:2] == ["long"] and ln.endswith("Running") for ln in status.splitlines())
    assert "0 active" in status
    run(["dvc", "queue", "kill", "long"], repo)
    assert "Failed" in run(["dvc", "queue", "status"], repo).stdout
    assert found[0].exists()  # the temporary copy stays, with its checkpoint

    (repo / "checkpoints").mkdir()
    shutil.copy(found[0], repo / "checkpoints/train.ckpt")
    # The same params but the interval (not part of what a checkpoint must match): the
    # workspace run resumes and, at the default interval, saves no more checkpoints.
    result = run(["dvc", "exp", "run", "-n", "long", *epochs], repo)
    output = result.stdout + result.stderr
    assert "train: resuming after epoch " in output and " of 2000 from checkpoints" in output
    assert not (repo / "checkpoints/train.ckpt").exists()
