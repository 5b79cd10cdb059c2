"""Outputs: temporary files swept by the next writer in the folder (never a live writer's, never
a user's own), every output checked writable before the work. Inputs: tables and JSON read
within bounds and refused when they hold what no stage writes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from support import ROOT
from torchreg.errors import DataError, UserError
from torchreg.files import (
    MAX_JSON_BYTES,
    TEMP_SUFFIX,
    atomic_path,
    check_writable,
    read_json,
    read_tsv,
    write_bytes,
)


def test_a_temporary_file_is_hidden_ours_and_ignored_by_git_and_dvc(tmp_path):
    with atomic_path(tmp_path / "out.bin") as tmp:
        assert tmp.name.startswith(".out.bin.") and tmp.name.endswith(TEMP_SUFFIX)
    for ignore in (".gitignore", ".dvcignore"):
        assert f"*{TEMP_SUFFIX}" in (ROOT / ignore).read_text().splitlines()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"data/.train.npy.abc123{TEMP_SUFFIX}"], cwd=ROOT
    )
    assert ignored.returncode == 0


def test_a_dead_writers_temporaries_are_swept_by_any_writer_in_the_folder(tmp_path):
    """A killed generate's data/.train.npy.*.tmp goes at the next write of any file there."""
    dead = tmp_path / f".train.npy.k1ll3d00{TEMP_SUFFIX}"
    dead.write_bytes(b"\0" * 1000)
    old_style = tmp_path / ".other.bin.abc123.tmp"  # an older version's name for its own output
    old_style.write_bytes(b"x")
    users = tmp_path / ".notes.tmp"  # not ours: never touched
    users.write_text("mine")
    write_bytes(tmp_path / "other.bin", b"data")
    assert not dead.exists() and not old_style.exists()
    assert users.read_text() == "mine"


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    live = tmp_path / f".model.bin.l1v3l1v3{TEMP_SUFFIX}"
    live.write_bytes(b"half")
    with live.open("rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # what atomic_path holds while it writes
        write_bytes(tmp_path / "other.bin", b"data")
        assert live.exists()
    write_bytes(tmp_path / "other.bin", b"data")  # its writer is gone now
    assert not live.exists()


def test_an_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_regular_file_names_the_file(tmp_path):
    (tmp_path / "in.csv").write_text("rows")
    with pytest.raises(UserError, match=r"in.csv/out.csv: .*in.csv is a file, not a folder"):
        check_writable(tmp_path / "in.csv/out.csv")
    with pytest.raises(UserError, match="in.csv is a file, not a folder"):
        write_bytes(tmp_path / "in.csv/deeper/out.csv", b"")
    assert (tmp_path / "in.csv").read_text() == "rows"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_found_before_the_work(tmp_path):
    (tmp_path / "models").mkdir(mode=0o500)
    with pytest.raises(UserError, match="cannot write .*models/m.bin: Permission denied"):
        check_writable(tmp_path / "models/m.bin")


def test_the_check_leaves_no_file_and_no_folder_behind(tmp_path):
    check_writable(tmp_path / "a/b/c.bin", tmp_path / "d.bin")
    assert list(tmp_path.iterdir()) == []


# --- tables and JSON: bounded, finite, or one line -----------------------------------------


def test_a_table_without_line_breaks_is_refused_unread(tmp_path):
    (tmp_path / "t.tsv").write_bytes(b"\0" * (3 << 20))
    with pytest.raises(DataError, match="line 1 is longer than 1,048,576 characters"):
        read_tsv(tmp_path / "t.tsv", "evaluate")


@pytest.mark.parametrize("cell", ["nan", "inf", "-Infinity", "x"])
def test_a_table_cell_that_is_not_a_finite_number_is_refused(tmp_path, cell):
    (tmp_path / "t.tsv").write_text(f"step\ttrain_loss\n0\t1.5\n1\t{cell}\n")
    with pytest.raises(DataError, match="t.tsv: not a table of finite numbers"):
        read_tsv(tmp_path / "t.tsv", "train")


def test_a_table_longer_than_its_stage_writes_is_refused(tmp_path):
    (tmp_path / "t.tsv").write_text("step\n" + "1\n" * 11)
    with pytest.raises(DataError, match="has over 10 rows of 1 columns, more than the train"):
        read_tsv(tmp_path / "t.tsv", "train", max_rows=11)
    assert len(read_tsv(tmp_path / "t.tsv", "train", max_rows=12)["step"]) == 11


def test_a_stray_quote_does_not_join_table_lines(tmp_path):
    (tmp_path / "t.tsv").write_text('a\tb\n"1\t2\n3\t4"\n')
    with pytest.raises(DataError, match="not a table of finite numbers"):
        read_tsv(tmp_path / "t.tsv", "evaluate")


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"test": {"mae": NaN}}', "NaN where a finite number belongs"),
        ('{"test": {"mae": Infinity}}', "Infinity where a finite number belongs"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("[1, 2]", "not a JSON object"),
    ],
    ids=["nan", "infinity", "deep", "list"],
)
def test_json_that_no_stage_writes_is_one_line(tmp_path, text, message):
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(DataError, match=message):
        read_json(tmp_path / "m.json", "evaluate")


def test_a_huge_json_is_refused_unread(tmp_path):
    with (tmp_path / "m.json").open("wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(DataError, match="over 16 MiB"):
        read_json(tmp_path / "m.json", "evaluate")


# --- Ctrl-C while a stage is still importing -----------------------------------------------


SLOW_TORCH = """import sys, time
print("importing torch", file=sys.stderr, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(
    "stage,args",
    [
        ("evaluate", [str(ROOT / "stages/evaluate.py")]),
        ("predict", ["-m", "torchreg.predict", "--input", "-"]),
    ],
)
def test_ctrl_c_while_importing_is_one_line(tmp_path, stage, args):
    """A `torch` that takes a minute to import stands for the real one's seconds."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch/__init__.py").write_text(SLOW_TORCH)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'src'}"}
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=tmp_path, env=env, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr.readline() == "importing torch\n"
    proc.send_signal(2)
    _, stderr = proc.communicate(timeout=30)
    assert stderr == f"{stage}: interrupted; no output was written\n"
    assert proc.returncode == 130


def test_a_model_that_cannot_be_saved_leaves_no_dvclive_log(tmp_path, params, monkeypatch):
    """The disk fills, or the folder goes read-only, after training: the run left nothing."""
    import importlib.util

    import torch

    from torchreg.context import RunContext
    from torchreg.data import write_dataset

    spec = importlib.util.spec_from_file_location("train_stage", ROOT / "stages/train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)

    def full_disk(path, *args):
        raise UserError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(train, "save_model", full_disk)
    write_dataset(tmp_path / "train.npy", params.data, "train", 100)
    short = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 2})})
    with pytest.raises(UserError, match="No space left on device"):
        train.run(
            short, RunContext(torch.device("cpu")), tmp_path / "train.npy",
            tmp_path / "models/model.safetensors", tmp_path / "dvclive",
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npy"]
