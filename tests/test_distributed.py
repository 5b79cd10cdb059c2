"""Data-parallel training with torchrun (gloo on CPU), on one "node" and on two."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from support import run_stage, set_params, subprocess_env

pytestmark = pytest.mark.slow

# 2 processes vs 1 differ only in float32 summation order (gradients averaged across ranks):
# after 20 epochs the weights agree to this absolute tolerance.
TOLERANCE = 1e-4


def env() -> dict:
    return subprocess_env(TORCHREG_DIST_TIMEOUT_S="10")


def train(repo: Path, *args: str, timeout=120) -> subprocess.CompletedProcess:
    return run_stage(repo, "train", *args, env=env(), timeout=timeout)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_repo(repo):
    set_params(repo, train__epochs=20, train__lr=0.05, model__kind="mlp", model__hidden=[8])
    run_stage(repo, "prepare", check=True, env=env())
    return repo


def test_two_processes_match_one_and_repeat_exactly(data_repo):
    assert train(data_repo, "--model", "one.pt").returncode == 0
    set_params(data_repo, train__nproc=2)
    runs = [train(data_repo, "--model", f"two-{i}.pt", "--live-dir", f"live{i}") for i in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    one, two = weights(data_repo / "one.pt"), weights(data_repo / "two-0.pt")
    for name in one:
        assert torch.allclose(one[name], two[name], atol=TOLERANCE, rtol=0), name
    assert (data_repo / "two-0.pt").read_bytes() == (data_repo / "two-1.pt").read_bytes()
    # Only rank 0 wrote (both ranks were given the same paths): one row per epoch in the loss
    # log (a second writer doubles it), one start line.
    rows = (data_repo / "live0/plots/metrics/train_loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == [str(e) for e in range(20)], rows
    assert (data_repo / "live0/metrics.json").exists()
    assert runs[0].stderr.count("on cpu x 2") == 1, runs[0].stderr  # names the world size


def torchrun(repo: Path, port: int, nnodes: int, nproc: int, *args: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=test-job",
        "--max-restarts=0",
        "stages/train.py",
        *args,
    ]
    return subprocess.Popen(
        cmd, cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_nodes_equal_one_node_with_two_processes(data_repo, tmp_path):
    one_node = torchrun(data_repo, free_port(), 1, 2, "--model", "node1.pt")
    assert one_node.wait(timeout=120) == 0, one_node.stdout.read()
    port = free_port()
    nodes = [
        torchrun(data_repo, port, 2, 1, "--model", "node2.pt", "--live-dir", f"l{i}")
        for i in range(2)
    ]
    for node in nodes:
        assert node.wait(timeout=120) == 0, node.stdout.read()
    a, b = weights(data_repo / "node1.pt"), weights(data_repo / "node2.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    with socket.socket() as s:  # nothing listens on the rendezvous port any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        s.bind(("127.0.0.1", port))
        s.listen()


def rank_pid(rank: int) -> int | None:
    """The pid of the launched training process with RANK=rank (via /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        launched = any(v.startswith(b"TORCHELASTIC_RUN_ID=") for v in environ)
        if b"stages/train.py" in cmdline and launched and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_killed_rank_fails_the_stage_promptly(data_repo):
    set_params(data_repo, train__nproc=2, train__epochs=100_000)
    proc = subprocess.Popen(
        [sys.executable, "stages/train.py"],
        cwd=data_repo,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:
        victim = rank_pid(1)
        time.sleep(0.2)
    assert victim, "rank 1 never started"
    time.sleep(1.0)  # let it get into training
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - killed < 15
    assert proc.returncode == 2
    assert stderr.strip().splitlines()[-1] == (
        "train: error: rank 1 of 2 was killed by signal 9; the others were stopped"
    )
    assert "Traceback" not in stderr
    assert not (data_repo / "models/model.safetensors").exists()


def test_bad_input_on_one_node_fails_both_promptly(data_repo, tmp_path):
    other = tmp_path / "other-node"
    subprocess.run(["cp", "-r", str(data_repo), str(other)], check=True)
    (other / "data/train.npy").write_bytes(b"not a data file")
    port = free_port()
    start = time.monotonic()
    nodes = [torchrun(data_repo, port, 2, 1), torchrun(other, port, 2, 1)]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert all(node.returncode != 0 for node in nodes)
    assert time.monotonic() - start < 60  # the 10 s peer timeout, not the 30 min default
    assert any("data/train.npy: not a valid data file" in out for out in outputs)
    assert not (data_repo / "models/model.safetensors").exists()
    assert not (other / "models/model.safetensors").exists()


def start_two_ranks(repo: Path) -> subprocess.Popen:
    """The train stage with train.nproc 2, in its own process group (as a shell would start
    it), once both ranks are training."""
    set_params(repo, train__nproc=2, train__epochs=1_000_000)
    proc = subprocess.Popen(
        [sys.executable, "stages/train.py"],
        cwd=repo,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    log = repo / "dvclive/plots/metrics/train_loss.tsv"  # rank 0 logs once both train
    deadline = time.monotonic() + 90
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.exists() and rank_pid(0) and rank_pid(1), "the ranks never started training"
    return proc


def wait_gone(timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rank_pid(0) is None and rank_pid(1) is None:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    "sig,to_group,line",
    [
        (signal.SIGINT, True, "train: interrupted; no output was written"),  # Ctrl-C
        (signal.SIGTERM, False, "train: terminated (SIGTERM); no output was written"),
    ],
)
def test_an_interrupt_stops_every_rank_with_one_line(data_repo, sig, to_group, line):
    proc = start_two_ranks(data_repo)
    if to_group:
        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole foreground group
    else:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in stderr and stderr.count("no output was written") == 1, stderr
    assert wait_gone()
    assert not (data_repo / "models/model.safetensors").exists()
    assert not (data_repo / "dvclive").exists()


def test_ranks_die_with_a_killed_launcher_and_never_write(data_repo):
    proc = start_two_ranks(data_repo)
    proc.kill()  # SIGKILL: the launcher cannot stop its ranks itself
    proc.wait(timeout=10)
    assert wait_gone(), "ranks outlived the launcher"
    time.sleep(2)
    assert not (data_repo / "models/model.safetensors").exists()
