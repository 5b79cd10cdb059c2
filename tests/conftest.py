"""Shared fixtures: the repo's own params, a throwaway copy of the repo for dvc runs (fresh, or
after `dvc repro`), and an S3 server on loopback for remote tests. Helpers: support.py."""

from __future__ import annotations

import contextlib
import shutil
import signal
from pathlib import Path

import pytest

from support import ROOT, run, set_params
from torchreg.config import Params, parse_params, read_params_file


def pytest_configure(config):
    """Ctrl-C as from a terminal. A shell script that starts the tests in the background (`cmd &`,
    nohup) leaves SIGINT ignored, and every stage a test starts would inherit that: the tests of
    what Ctrl-C does would wait in vain. A handler, unlike an ignored signal, is not inherited."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_make_parametrize_id(config, val, argname):
    """A string's id in printable ASCII without a backslash (a newline shows as ^n). pytest
    escapes other ids again each time it collects them in one process, so an id that holds a
    backslash selects no test the second time: mutmut collects once, then runs each mutant's
    tests by id in the same process. pytest_collection_modifyitems keeps every id this way."""
    if isinstance(val, bytes):
        val = val.decode("latin-1")
    if isinstance(val, str):
        return repr(val)[1:-1].encode("ascii", "backslashreplace").decode().replace("\\", "^")
    return None


def pytest_collection_modifyitems(items):
    bad = [item.nodeid for item in items if "\\" in item.nodeid or not item.nodeid.isascii()]
    if bad:
        raise pytest.UsageError(
            f"{len(bad)} test ids hold a backslash or non-ASCII, e.g. {bad[0]}: give them ids "
            "in printable ASCII (see pytest_make_parametrize_id in tests/conftest.py)"
        )


@pytest.fixture
def raw_params() -> dict:
    """params.yaml of the repo as a plain dict (read as the stages read it), to modify per test."""
    return read_params_file(ROOT / "params.yaml")


@pytest.fixture
def params(raw_params) -> Params:
    """params.yaml's, train's `auto` values chosen as for the synthetic source."""
    parsed = parse_params(raw_params)
    return parsed.resolved("synthetic", parsed.data.n_train)


def copy_of_the_repo(dest: Path) -> Path:
    """A fresh git + DVC copy of the tracked files (not the working tree's outputs), with a
    short training run so end-to-end tests stay fast."""
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
def repo(tmp_path) -> Path:
    """A fresh git + DVC copy of the tracked files at tmp_path/repo, nothing built yet."""
    return copy_of_the_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def built_once(tmp_path_factory) -> Path:
    """`repo` after one `dvc repro`, built once per test process: only ever copied, never
    used itself (see `built`)."""
    dest = copy_of_the_repo(tmp_path_factory.mktemp("built") / "repo")
    run(["dvc", "repro"], dest)
    return dest


def _dvc_tmp(folder: str, names: list[str]) -> list[str]:
    """DVC's own scratch folder (.dvc/tmp: locks, updater state) is not copied."""
    return ["tmp"] if Path(folder).name == ".dvc" else []


@pytest.fixture
def built(built_once, tmp_path) -> Path:
    """A copy of its own, at tmp_path/repo, of `repo` after `dvc repro`: the outputs, dvc.lock
    and the cache, uncommitted. The same as `repo` + `dvc repro` without the repro."""
    dest = tmp_path / "repo"
    shutil.copytree(built_once, dest, symlinks=True, ignore=_dvc_tmp)
    return dest


@contextlib.contextmanager
def moto_s3():
    """An S3 server (moto) on 127.0.0.1 with an empty bucket `models`, for any scope; yields
    its endpoint URL. It accepts the key id and secret `testing`, region us-east-1."""
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


@pytest.fixture
def s3_server(monkeypatch):
    """An S3 server (moto) on 127.0.0.1 with an empty bucket `models`; yields its endpoint URL.
    The test's environment has the credentials and region it accepts, for dvc and boto3."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    pytest.importorskip("dvc_s3", reason="S3 support not installed: pip install -e '.[s3]'")
    with moto_s3() as url:
        yield url
