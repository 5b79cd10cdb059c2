"""What comes back from a remote is checked: a corrupt file in the remote is refused on pull."""

import pytest
import yaml

from conftest import run
from test_versioning import commit

pytestmark = pytest.mark.slow


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


def test_a_flipped_byte_in_the_default_remote_is_refused(repo, tmp_path):
    run(["dvc", "repro"], repo)
    commit(repo, "results")
    run(["dvc", "push"], repo)
    md5 = md5_of(repo, "data/train.npy")
    stored = tmp_path / "torchreg-dvc-storage/files/md5" / md5[:2] / md5[2:]
    stored.chmod(0o644)
    stored.write_bytes(flip(stored.read_bytes()))
    print(pull_refuses(repo, tmp_path))


def test_a_flipped_byte_in_an_s3_remote_is_refused(repo, tmp_path, s3_server, monkeypatch):
    import boto3

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # As the README says to add a remote: verify what it sends back.
    run(["dvc", "remote", "add", "s3", "s3://models/store"], repo)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_server], repo)
    run(["dvc", "remote", "modify", "s3", "verify", "true"], repo)
    run(["dvc", "repro"], repo)
    commit(repo, "s3 remote")
    run(["dvc", "push", "-r", "s3"], repo)

    md5 = md5_of(repo, "data/train.npy")
    key = f"store/files/md5/{md5[:2]}/{md5[2:]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    body = s3.get_object(Bucket="models", Key=key)["Body"].read()
    s3.put_object(Bucket="models", Key=key, Body=flip(body))
    print(pull_refuses(repo, tmp_path, "-r", "s3"))
