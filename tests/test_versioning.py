"""Remotes, artifact versions and checkouts, end to end with the real CLI."""

import pytest

from conftest import run, set_params

pytestmark = pytest.mark.slow

TRACKED = ["data/train.npy", "data/test.npy", "models/model.safetensors"]


def commit(repo, message):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


def read(repo, paths=TRACKED) -> dict[str, bytes]:
    return {p: (repo / p).read_bytes() for p in paths}


def test_push_then_pull_in_a_fresh_clone(repo, tmp_path):
    run(["dvc", "repro"], repo)
    commit(repo, "results")
    run(["dvc", "push"], repo)  # the default remote: ../torchreg-dvc-storage
    assert (tmp_path / "torchreg-dvc-storage/files/md5").is_dir()

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models/model.safetensors").exists()
    run(["dvc", "pull"], clone)
    assert read(clone) == read(repo)
    status = run(["dvc", "repro"], clone)
    assert "Running stage" not in status.stdout


def test_tagged_versions_can_be_fetched_and_checked_out(repo, tmp_path):
    run(["dvc", "repro"], repo)
    commit(repo, "v1")
    run(["gto", "register", "regressor", "--version", "v1.0.0"], repo)
    v1 = read(repo)
    set_params(repo, train__lr=0.01)
    run(["dvc", "repro"], repo)
    commit(repo, "v2")
    run(["gto", "register", "regressor", "--version", "v1.1.0"], repo)
    assert read(repo)["models/model.safetensors"] != v1["models/model.safetensors"]
    assert "regressor@v1.0.0" in run(["git", "tag"], repo).stdout

    out = tmp_path / "fetched.pt"
    run(
        ["dvc", "artifacts", "get", str(repo), "regressor", "--rev", "v1.0.0", "-o", str(out)],
        tmp_path,
    )
    assert out.read_bytes() == v1["models/model.safetensors"]

    run(["git", "checkout", "-q", "regressor@v1.0.0"], repo)
    run(["dvc", "checkout"], repo)
    assert read(repo) == v1


def test_s3_remote_round_trip(repo, tmp_path, s3_server, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    run(["dvc", "remote", "add", "s3", "s3://models/store"], repo)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_server], repo)
    run(["dvc", "repro"], repo)
    commit(repo, "s3 remote")
    run(["dvc", "push", "-r", "s3"], repo)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull", "-r", "s3"], clone)
    assert read(clone) == read(repo)
