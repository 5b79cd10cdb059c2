"""Shared fixtures: the repo's own params, a throwaway copy of the repo for dvc runs, and an
S3 server on loopback for remote tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchreg.config import Params, parse_params, read_params_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from sweep import set_params  # noqa: E402, F401 - re-exported for the tests

BIN = Path(sys.executable).parent  # the venv's dvc and python, whatever PATH says

# Every output of `dvc repro`.
OUTPUTS = [
    "data/train.npy",
    "data/test.npy",
    "models/model.safetensors",
    "dvclive/metrics.json",
    "dvclive/plots/metrics/train_loss.tsv",
    "metrics/evaluate.json",
    "plots/predictions.tsv",
    "plots/curves.tsv",
    "plots/fit.png",
    "plots/loss.png",
    "plots/predicted_vs_actual.png",
    "plots/residuals.png",
]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


@pytest.fixture
def raw_params() -> dict:
    """params.yaml of the repo as a plain dict (read as the stages read it), to modify per test."""
    return read_params_file(ROOT / "params.yaml")


@pytest.fixture
def params(raw_params) -> Params:
    return parse_params(raw_params)


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DVC_ROOT", None)
    kw.setdefault("capture_output", True)
    result = subprocess.run(cmd, cwd=cwd, env=env, text=True, **kw)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture
def repo(tmp_path) -> Path:
    """A fresh git + DVC copy of the tracked files (not the working tree's outputs), with a
    short training run so end-to-end tests stay fast."""
    dest = tmp_path / "repo"
    files = run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    # Start from no outputs: the copy must rebuild everything itself.
    for out in ("dvc.lock", "dvclive", "metrics", "plots"):
        shutil.rmtree(dest / out, ignore_errors=True) if (dest / out).is_dir() else (
            dest / out
        ).unlink(missing_ok=True)
    set_params(dest, train__epochs=30, train__lr=0.05)
    run(["git", "init", "-q", "-b", "main"], cwd=dest)
    run(["git", "add", "-A"], cwd=dest)
    run(["git", "commit", "-q", "-m", "copy"], cwd=dest)
    return dest


@pytest.fixture
def s3_server():
    """An S3 server (moto) on 127.0.0.1 with an empty bucket `models`; yields its endpoint URL.
    Clients need AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY = testing."""
    pytest.importorskip("dvc_s3", reason="S3 support not installed: pip install -e '.[s3]'")
    server_mod = pytest.importorskip("moto.server", reason="moto not installed (the s3 extra)")
    import boto3

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="models")
        yield url
    finally:
        with contextlib.suppress(Exception):
            server.stop()
