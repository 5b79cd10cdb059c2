"""The free-space check of prepare: leftovers of a killed run, DVC's cache copy, the figures."""

import importlib.util
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

import torchreg.data
from support import ROOT, subprocess_env
from torchreg.data import check_disk, dvc_cache_copy_dir, nbytes
from torchreg.errors import DataError

Usage = namedtuple("Usage", "total used free")
spec = importlib.util.spec_from_file_location("prepare_stage", ROOT / "stages/prepare.py")
prepare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare)


def fake_disk(monkeypatch, free: int) -> None:
    """A disk with `free` bytes, less whatever temporary files lie in the folder asked about."""

    def usage(folder):
        temps = sum(p.stat().st_size for p in __import__("pathlib").Path(folder).glob(".*.tmp"))
        return Usage(10**12, 0, free - temps)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def refusal(outputs: dict) -> str:
    """The message check_disk(outputs) is refused with."""
    with pytest.raises(DataError) as exc:
        check_disk(outputs)
    return str(exc.value)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def data_bytes(params) -> int:
    splits = (params.data.n_train, params.data.n_val, params.data.n_test)
    return sum(nbytes(n, params.data.n_features) for n in splits)


def test_a_killed_runs_leftover_does_not_count_against_the_rerun(workdir, monkeypatch, params):
    needed = data_bytes(params)
    (workdir / "data").mkdir()
    stale = workdir / "data/.train.npy.abc123.tmp"  # what a SIGKILLed prepare leaves
    stale.write_bytes(b"\0" * needed)
    fake_disk(monkeypatch, free=needed + 1000)  # enough once the leftover is gone
    prepare.main([])
    assert not stale.exists()
    assert (workdir / "data/train.npy").exists()


def test_under_dvc_the_cache_copy_counts(workdir, monkeypatch, params, capsys):
    needed = data_bytes(params)
    (workdir / ".dvc").mkdir()
    (workdir / ".dvc/config").write_text("[core]\n    remote = local\n")
    monkeypatch.setenv("DVC_ROOT", str(workdir))  # what DVC sets for a stage command
    assert dvc_cache_copy_dir() == workdir / ".dvc/cache"
    fake_disk(monkeypatch, free=needed + needed // 2)  # room for the data, not for its copy
    with pytest.raises(SystemExit) as exc:
        prepare.main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "DVC's cache copy" in err and "dvc cache dir" in err, err
    assert not (workdir / "data/train.npy").exists()
    assert not list((workdir / "data").glob(".*.tmp"))

    # Outside DVC the same disk is enough.
    monkeypatch.delenv("DVC_ROOT")
    prepare.main([])
    assert (workdir / "data/train.npy").exists()


@pytest.mark.parametrize(
    ("cache", "copies"),
    [
        ("", True),  # DVC's default: reflink,copy
        ("[cache]\n    type = reflink,copy\n", True),
        ("[cache]\n    type = copy\n", True),
        ("[cache]\n    type = hardlink,symlink\n", False),
        ("[cache]\n    type = reflink\n", False),
    ],
)
def test_cache_link_types(tmp_path, monkeypatch, cache, copies):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text(cache)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert (dvc_cache_copy_dir() is not None) == copies


def test_a_cache_dir_set_in_config_local(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[cache]\n    dir = cache\n")
    (tmp_path / ".dvc/config.local").write_text("[cache]\n    dir = ../../elsewhere\n")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert dvc_cache_copy_dir() == tmp_path / ".dvc/../../elsewhere"


def test_the_message_tells_close_figures_apart(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: Usage(10**12, 0, 200_000_000))
    with pytest.raises(DataError, match=r"needs 0\.21 GB but .* has 0\.20 GB free"):
        check_disk({tmp_path / "data/train.npy": 207_000_000})
    with pytest.raises(DataError, match=r"needs 0\.2001 GB but .* has 0\.2000 GB free"):
        check_disk({tmp_path / "data/train.npy": 200_100_000})
    check_disk({tmp_path / "data/train.npy": 200_000_000})  # exactly fits
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: Usage(10**12, 0, 10**9))
    with pytest.raises(DataError, match=r"needs 1\.000000001 GB but .* has 1\.000000000 GB free"):
        check_disk({tmp_path / "data/train.npy": 10**9 + 1})


def test_a_cache_on_another_file_system_is_checked_on_its_own(tmp_path, monkeypatch):
    """The data's folder and DVC's cache on two file systems: each must hold its own copy, and
    a full cache is named in the message, the data's folder not."""
    (tmp_path / ".dvc").mkdir()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    data = tmp_path / "data/train.npy"
    cache_dev = os.stat(tmp_path).st_dev + 1
    real_stat = os.stat

    class Stat:  # the cache folder reports another device
        def __init__(self, path):
            self.st_dev = cache_dev if ".dvc" in str(path) else real_stat(path).st_dev
            self.st_mode = real_stat(path).st_mode

    def disk(cache_free: int):
        asked = []

        def usage(folder):
            asked.append(str(folder))
            return Usage(10**12, 0, cache_free if ".dvc" in str(folder) else 150)

        monkeypatch.setattr(shutil, "disk_usage", usage)
        return asked

    monkeypatch.setattr("pathlib.Path.stat", lambda self, **kw: Stat(self))
    asked = disk(cache_free=150)
    check_disk({data: 100})  # 100 on each file system, 150 free on each
    assert sorted(asked) == sorted([str(tmp_path / "data"), str(tmp_path / ".dvc")])
    disk(cache_free=99)  # the data fits; its copy in the cache does not
    with pytest.raises(DataError, match=r"needs .* \(with .* for DVC's cache copy\) but .*\.dvc/ "):
        check_disk({data: 100})
    monkeypatch.setattr("pathlib.Path.stat", lambda self, **kw: real_stat(self))
    disk(cache_free=150)  # one file system: the data and its copy, 200 in 150
    with pytest.raises(DataError, match=r"needs 0\.0000002 GB \(with 0\.0000001 GB for DVC"):
        check_disk({data: 100})


def test_the_whole_message_with_and_without_dvcs_cache_copy(tmp_path, monkeypatch):
    """Both outputs count, each once more for DVC's cache copy when the cache is on the same
    file system."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: Usage(10**12, 0, 8 * 10**9))
    outputs = {tmp_path / "data/train.npy": 3 * 10**9, tmp_path / "data/test.npy": 2 * 10**9}
    advice = "free some space, lower data.n_train / data.n_test"
    assert refusal({tmp_path / "data/train.npy": 9 * 10**9}) == (
        f"the data needs 9.00 GB but {tmp_path / 'data'}/ has 8.00 GB free: {advice}"
    )
    (tmp_path / ".dvc").mkdir()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert refusal(outputs) == (
        f"the data needs 10.00 GB (with 5.00 GB for DVC's cache copy) but {tmp_path / 'data'}/ "
        f"has 8.00 GB free: {advice}, or set `dvc cache dir` to another disk"
    )


def test_an_output_whose_folder_cannot_be_made_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    path = tmp_path / ("x" * 300) / "train.npy"
    assert refusal({path: 1}) == f"cannot write {path}: File name too long"


@pytest.mark.parametrize(
    "config", [b"dir = elsewhere\n", b"[cache]\n    dir = \xff\n"], ids=["no-section", "latin-1"]
)
def test_a_config_dvc_would_refuse_means_the_default_cache(tmp_path, monkeypatch, config):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_bytes(config)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert dvc_cache_copy_dir() == tmp_path / ".dvc/cache"


def test_the_config_is_read_as_utf_8_under_any_locale(tmp_path, monkeypatch):
    """Here, then in a process whose locale is C (ASCII)."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[cache]\n    dir = cach\u00e9\n", encoding="utf-8")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert dvc_cache_copy_dir() == tmp_path / ".dvc/cach\u00e9"
    env = subprocess_env(
        Path(torchreg.data.__file__).parents[2],  # this package, mutated or not
        LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", DVC_ROOT=str(tmp_path),
    )  # fmt: skip
    code = "from torchreg.data import dvc_cache_copy_dir; print(ascii(str(dvc_cache_copy_dir())))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == ascii(str(tmp_path / ".dvc/cach\u00e9")), out.stderr
