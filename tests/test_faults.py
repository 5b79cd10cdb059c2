"""Faults from outside: bad files, kills, Ctrl-C, divergence, threads, unwritable folders.
Each runs the real stage scripts (and dvc) in a temporary copy of the repo."""

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, GIT_ENV, OUTPUTS, run, set_params

pytestmark = pytest.mark.slow


def _stage(repo: Path, name: str, *args: str, check=False) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV, "PYTHONPATH": "src", "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, f"stages/{name}.py", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def start(repo: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": "src"}
    return subprocess.Popen(
        [sys.executable, f"stages/{name}.py"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_clean_line(result: subprocess.CompletedProcess, stage_name: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{stage_name}: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def digest(repo: Path, names=OUTPUTS) -> dict[str, str]:
    return {n: hashlib.sha256((repo / n).read_bytes()).hexdigest() for n in names}


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def built(repo):
    run(["dvc", "repro"], repo)
    return repo


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "models/model.safetensors: not a valid model file"),
        (b"PK\x03\x04 truncated zip", "models/model.safetensors: not a valid model file"),
        (bytes(range(256)) * 64, "models/model.safetensors: not a valid model file"),
    ],
    ids=["empty", "truncated", "random"],
)
def test_bad_model_file(built, content, expected):
    before = digest(built, ["metrics/evaluate.json", "plots/predictions.tsv"])
    (built / "models/model.safetensors").write_bytes(content)
    assert expected in one_clean_line(_stage(built, "evaluate"), "evaluate")
    assert digest(built, ["metrics/evaluate.json", "plots/predictions.tsv"]) == before


def test_truncated_real_model_file(built):
    data = (built / "models/model.safetensors").read_bytes()
    (built / "models/model.safetensors").write_bytes(data[: len(data) // 2])
    line = one_clean_line(_stage(built, "evaluate"), "evaluate")
    assert "models/model.safetensors: not a valid model file" in line


def test_model_file_carrying_code_is_not_run(built):
    marker = built / "pwned"
    (built / "models/model.safetensors").write_bytes(
        pickle.dumps({"state_dict": _Payload(str(marker))})
    )
    line = one_clean_line(_stage(built, "evaluate"), "evaluate")
    assert "models/model.safetensors: not a valid model file" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("test.npy", b"", "data/test.npy: not a valid data file"),
        ("test.npy", os.urandom(4096), "data/test.npy: not a valid data file"),
        ("train.npy", None, "data/train.npy: not a valid data file"),  # truncated
    ],
    ids=["empty", "random", "truncated"],
)
def test_bad_data_file(built, name, content, expected):
    path = built / "data" / name
    if content is None:
        content = path.read_bytes()[:1000]
    path.write_bytes(content)
    assert expected in one_clean_line(_stage(built, "evaluate"), "evaluate")


def test_data_of_the_wrong_shape(built):
    np.save(built / "data/test.npy", np.zeros((10, 4), dtype=np.float32))  # 3 features + y
    line = one_clean_line(_stage(built, "evaluate"), "evaluate")
    assert "data/test.npy has 3 features but models/model.safetensors expects 4" in line
    np.save(built / "data/train.npy", np.zeros((10, 4), dtype=np.float32))
    (built / "models/model.safetensors").unlink()
    run(["dvc", "repro"], built)  # regenerates what is stale, recovers


def test_missing_files_name_the_stage_to_run(repo):
    assert "run the generate stage first" in one_clean_line(_stage(repo, "train"), "train")
    assert "run the train stage first" in one_clean_line(_stage(repo, "evaluate"), "evaluate")
    assert "run the train stage first" in one_clean_line(_stage(repo, "plot"), "plot")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_while_writing_keeps_the_old_output(repo, sig):
    _stage(repo, "generate", check=True)
    old = (repo / "data/train.npy").read_bytes()
    set_params(repo, data__n_train=30_000_000)  # ~600 MB: seconds of writing
    proc = start(repo, "generate")

    def tmp_files():
        return [
            p
            for p in (repo / "data").glob(".train.npy.*.tmp")  # noqa: E731
            if p.stat().st_size > 0
        ]

    wait_for(lambda: tmp_files() or proc.poll() is not None, what="generate to start writing")
    assert proc.poll() is None, "generate finished before it could be interrupted"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert (repo / "data/train.npy").read_bytes() == old  # never a half-written file
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert stderr.strip().splitlines()[-1] == "generate: interrupted; no output was written"
        assert "Traceback" not in stderr
        assert not list((repo / "data").glob(".*.tmp"))
    set_params(repo, data__n_train=500)
    run(["dvc", "repro"], repo)  # recovers; clears what a SIGKILL left behind
    assert not list((repo / "data").glob(".*.tmp"))
    assert (repo / "data/train.npy").read_bytes() == old


def test_ctrl_c_during_training_exits_promptly(repo):
    _stage(repo, "generate", check=True)
    set_params(repo, train__epochs=1_000_000)
    proc = start(repo, "train")
    for line in proc.stderr:
        if "epoch 1/" in line:
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert proc.returncode == 130
    assert stderr.strip().splitlines() == ["train: interrupted; no output was written"]
    assert not (repo / "models/model.safetensors").exists()
    assert not (repo / "dvclive").exists()


def test_divergence_names_the_epoch_and_writes_no_model(repo):
    _stage(repo, "generate", check=True)
    set_params(repo, train__lr=1e6)
    line = one_clean_line(_stage(repo, "train"), "train")
    assert "training diverged at epoch" in line and "try a smaller train.lr" in line
    assert not (repo / "models/model.safetensors").exists()


def test_same_params_same_bytes_across_processes_and_threads(repo):
    runner = (
        "import runpy, sys, torch; torch.set_num_threads(int(sys.argv[1])); "
        "sys.argv = [sys.argv[2]]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    results = []
    for threads in ("1", "2", "2"):
        for name in ("generate", "train", "evaluate", "plot"):
            env = {**os.environ, "PYTHONPATH": "src"}
            subprocess.run(
                [sys.executable, "-c", runner, threads, f"stages/{name}.py"],
                cwd=repo,
                env=env,
                check=True,
                capture_output=True,
            )
        results.append(digest(repo))
        for name in OUTPUTS:
            (repo / name).unlink()
    assert results[0] == results[1] == results[2]


def test_unwritable_output_is_one_clear_error(repo, tmp_path):
    _stage(repo, "generate", check=True)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    line = one_clean_line(
        _stage(repo, "train", "--model", str(blocker / "model.safetensors")), "train"
    )
    assert f"cannot write {blocker / 'model.safetensors'}" in line
    assert blocker.read_text() == "a file where a folder should be"
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        line = one_clean_line(_stage(repo, "train", "--model", str(locked / "m.pt")), "train")
        assert "Permission denied" in line and not list(locked.iterdir())
