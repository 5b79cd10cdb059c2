"""Remotes, artifact versions and checkouts, end to end with the real CLI: push and pull (a
folder, S3), tagged versions, and a corrupt file in a remote refused on pull."""

import pytest
import yaml

from support import commit, run, set_params

pytestmark = pytest.mark.slow

TRACKED = ["data/train.npy", "data/test.npy", "models/model.safetensors"]


def read(repo, paths=TRACKED) -> dict[str, bytes]:
    return {p: (repo / p).read_bytes() for p in paths}


def test_push_then_pull_in_a_fresh_clone(built, tmp_path):
    commit(built, "results")
    run(["dvc", "push"], built)  # the default remote: ../torchreg-dvc-storage
    assert (tmp_path / "torchreg-dvc-storage/files/md5").is_dir()

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(built), str(clone)], tmp_path)
    assert not (clone / "models/model.safetensors").exists()
    run(["dvc", "pull"], clone)
    assert read(clone) == read(built)
    status = run(["dvc", "repro"], clone)
    assert "Running stage" not in status.stdout


def test_tagged_versions_can_be_fetched_and_checked_out(built, tmp_path):
    commit(built, "v1")
    run(["gto", "register", "regressor", "--version", "v1.0.0"], built)
    v1 = read(built)
    set_params(built, train__lr=0.01)
    run(["dvc", "repro"], built)
    commit(built, "v2")
    run(["gto", "register", "regressor", "--version", "v1.1.0"], built)
    assert read(built)["models/model.safetensors"] != v1["models/model.safetensors"]
    assert "regressor@v1.0.0" in run(["git", "tag"], built).stdout

    out = tmp_path / "fetched.pt"
    run(
        ["dvc", "artifacts", "get", str(built), "regressor", "--rev", "v1.0.0", "-o", str(out)],
        tmp_path,
    )
    assert out.read_bytes() == v1["models/model.safetensors"]

    run(["git", "checkout", "-q", "regressor@v1.0.0"], built)
    run(["dvc", "checkout"], built)
    assert read(built) == v1


def push_to_s3(repo, url: str, *settings: str) -> None:
    """Add the moto bucket as remote `s3` (plus `settings`, e.g. "verify", "true"), commit it
    and push there."""
    run(["dvc", "remote", "add", "s3", "s3://models/store"], repo)
    run(["dvc", "remote", "modify", "s3", "endpointurl", url], repo)
    if settings:
        run(["dvc", "remote", "modify", "s3", *settings], repo)
    commit(repo, "s3 remote")
    run(["dvc", "push", "-r", "s3"], repo)


def test_s3_remote_round_trip(built, tmp_path, s3_server):
    push_to_s3(built, s3_server)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(built), str(clone)], tmp_path)
    run(["dvc", "pull", "-r", "s3"], clone)
    assert read(clone) == read(built)


# --- what comes back from a remote is checked ------------------------------------------------


def md5_of(repo, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = [o for s in lock["stages"].values() for o in s.get("outs", [])]
    return next(o["md5"] for o in outs if o["path"] == path)


def flip(data: bytes) -> bytes:
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def pull_refuses(repo, tmp_path, *remote: str) -> str:
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    result = run(["dvc", "pull", *remote], clone, check=False)
    assert result.returncode != 0, result.stdout
    out = result.stdout + result.stderr
    assert "data/train.npy" in out, out
    # The corrupt copy reaches neither the workspace nor the clone's cache.
    assert not (clone / "data/train.npy").exists()
    md5 = md5_of(repo, "data/train.npy")
    assert not (clone / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).exists()
    # Every other file came through; a repro then stops at the missing one, not later.
    assert (clone / "models/model.safetensors").read_bytes() == (
        repo / "models/model.safetensors"
    ).read_bytes()
    return out


def test_a_flipped_byte_in_the_default_remote_is_refused(built, tmp_path):
    commit(built, "results")
    run(["dvc", "push"], built)
    md5 = md5_of(built, "data/train.npy")
    stored = tmp_path / "torchreg-dvc-storage/files/md5" / md5[:2] / md5[2:]
    stored.chmod(0o644)
    stored.write_bytes(flip(stored.read_bytes()))
    print(pull_refuses(built, tmp_path))


def test_a_flipped_byte_in_an_s3_remote_is_refused(built, tmp_path, s3_server):
    import boto3

    push_to_s3(built, s3_server, "verify", "true")  # as the README says to add a remote

    md5 = md5_of(built, "data/train.npy")
    key = f"store/files/md5/{md5[:2]}/{md5[2:]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    body = s3.get_object(Bucket="models", Key=key)["Body"].read()
    s3.put_object(Bucket="models", Key=key, Body=flip(body))
    print(pull_refuses(built, tmp_path, "-r", "s3"))
