"""Outputs: temporary files swept by the next writer in the folder (never a live writer's, never
a user's own), every output checked writable before the work. Inputs: tables and JSON read
within bounds and refused when they hold what no stage writes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import locale
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
from array import array
from pathlib import Path

import pytest

from support import ROOT
from torchreg import files
from torchreg.errors import DataError, UserError
from torchreg.files import (
    MAX_JSON_BYTES,
    MAX_LINE_CHARS,
    TEMP_SUFFIX,
    atomic_path,
    bounded_lines,
    check_writable,
    describe_mode,
    open_input,
    read_json,
    read_tsv,
    write_bytes,
    write_json,
    write_tsv,
)


@contextlib.contextmanager
def within(seconds: float):
    """Fail, not hang, where the block blocks (a FIFO opened the blocking way waits for ever)."""
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"blocked for over {seconds} s"))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def c_locale():
    """A locale whose default encoding is ASCII: what the files hold must not depend on it."""
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


def char_device(tmp_path: Path) -> Path:
    """A null device to write to: a fresh one in tmp_path as root (so a bug replaces that one,
    not the machine's /dev/null), else /dev/null itself (which a non-root user cannot replace)."""
    if os.geteuid() != 0:
        return Path("/dev/null")
    os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return tmp_path / "null"


def message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


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
    """A killed prepare's data/.train.npy.*.tmp goes at the next write of any file there."""
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
    with pytest.raises(UserError, match="in.csv is a file, not a folder"):
        check_writable("/dev/null", tmp_path / "in.csv/deeper/out.csv")  # a stream first
    assert (tmp_path / "in.csv").read_text() == "rows"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_found_before_the_work(tmp_path):
    (tmp_path / "models").mkdir(mode=0o500)
    with pytest.raises(UserError, match="cannot write .*models/m.bin: Permission denied"):
        check_writable(tmp_path / "models/m.bin")


def test_the_check_leaves_no_file_and_no_folder_behind(tmp_path):
    check_writable(tmp_path / "a/b/c.bin", tmp_path / "d.bin")
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_leaves_what_is_not_a_temporary_file_alone(tmp_path, monkeypatch):
    """A FIFO, a socket or a broken link named like a leftover is no writer's: it stays, and
    the sweep neither blocks on the FIFO nor stops."""
    monkeypatch.chdir(tmp_path)  # a socket's path must fit in 108 bytes: bind a relative one
    os.mkfifo(f".a.fifo{TEMP_SUFFIX}")
    server = socket.socket(socket.AF_UNIX)
    server.bind(f".a.sock{TEMP_SUFFIX}")
    Path(f".a.link{TEMP_SUFFIX}").symlink_to("gone")
    with server, within(5):
        write_bytes(tmp_path / "out.bin", b"data")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f".a.fifo{TEMP_SUFFIX}", f".a.link{TEMP_SUFFIX}", f".a.sock{TEMP_SUFFIX}",
                     "out.bin"]  # fmt: skip


def test_a_leftover_another_writer_sweeps_first_is_no_error(tmp_path, monkeypatch):
    """Two stages sweep one folder at once: the one that finds the leftover gone carries on."""
    (tmp_path / f".a.bin.d3ad{TEMP_SUFFIX}").write_bytes(b"half")
    unlocked = files._unlocked

    def swept_meanwhile(temp: Path) -> bool:
        free = unlocked(temp)
        temp.unlink()
        return free

    monkeypatch.setattr(files, "_unlocked", swept_meanwhile)
    write_bytes(tmp_path / "b.bin", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["b.bin"]


def test_a_broken_link_where_a_folder_goes_is_one_error(tmp_path):
    (tmp_path / "models").symlink_to(tmp_path / "gone")
    for write in (check_writable, lambda path: write_bytes(path, b"")):
        with pytest.raises(UserError) as e:
            write(tmp_path / "models/m.bin")
        assert message(e) == f"cannot write {tmp_path / 'models/m.bin'}: File exists"


def test_an_output_name_too_long_for_its_temporary_file_is_refused_up_front(tmp_path):
    """`.<name>.<8 random>.torchreg.tmp` is 23 characters longer than the name: a name of 240
    fits (255 at most), its temporary file does not, and the check finds that out first."""
    path = tmp_path / ("x" * 240)
    for write in (check_writable, lambda path: write_bytes(path, b"data")):
        with pytest.raises(UserError) as e:
            write(path)
        assert message(e) == f"cannot write {path}: {os.strerror(errno.ENAMETOOLONG)}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="no sysfs here")
def test_a_folder_that_takes_no_file_is_found_before_the_work():
    """sysfs takes no new file, from root either: the check writes in the output's folder."""
    with pytest.raises(UserError, match=r"^cannot write /sys/torchreg\.bin: \w"):
        check_writable("/sys/torchreg.bin")


def test_a_descriptors_name_is_written_through(tmp_path):
    """/dev/fd/N (bash's `>(cmd)`, or a file the shell opened) is written into, as `>` does."""
    with (tmp_path / "out.txt").open("wb") as f:
        write_bytes(f"/dev/fd/{f.fileno()}", b"through the descriptor")
    assert (tmp_path / "out.txt").read_bytes() == b"through the descriptor"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_character_device_is_written_into_not_replaced(tmp_path):
    null = char_device(tmp_path)
    write_bytes(null, b"discarded")
    assert stat.S_ISCHR(null.stat().st_mode)


def test_a_symlink_loop_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    why = os.strerror(errno.ELOOP)
    with pytest.raises(UserError) as e:
        write_bytes(loop, b"")
    assert message(e) == f"cannot write {loop}: {why}"
    with pytest.raises(DataError) as e:
        open_input(loop)
    assert message(e) == f"{loop}: cannot be read ({why})"


def test_a_fifo_nobody_reads_is_one_error_soon_after_the_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "FIFO_READER_WAIT_S", 0.2)
    os.mkfifo(tmp_path / "pipe")
    naps = []
    sleep = time.sleep
    monkeypatch.setattr(files.time, "sleep", lambda s: naps.append(s) or sleep(s))
    start = time.monotonic()
    with within(5), pytest.raises(UserError) as e:
        write_bytes(tmp_path / "pipe", b"lost")
    assert message(e) == (
        f"cannot write {tmp_path / 'pipe'}: it is a FIFO (named pipe) and no process opened it "
        "for reading within 0.2 s; start the reader first"
    )
    assert time.monotonic() - start >= 0.2
    assert naps and max(naps) <= 0.05  # polled often: a reader that comes is seen at once


def test_a_fifo_whose_reader_comes_late_gets_the_bytes(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []

    def late_reader():
        time.sleep(0.2)
        received.append(fifo.read_bytes())

    reader = threading.Thread(target=late_reader, daemon=True)
    reader.start()
    with within(5):
        write_bytes(fifo, b"late but read")
    reader.join(5)
    assert received == [b"late but read"]


def test_a_fifo_that_cannot_be_opened_says_why(tmp_path, monkeypatch):
    """As a FIFO another user owns refuses us (root is refused nothing: the refusal is made)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if path == fifo and flags & os.O_WRONLY:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with within(5), pytest.raises(UserError) as e:
        write_bytes(fifo, b"refused")
    assert message(e) == f"cannot write {fifo}: {os.strerror(errno.EACCES)}"


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_without_a_driver_is_one_error_at_once(tmp_path):
    """Its open fails with ENXIO, as a FIFO's with no reader does: it was waited for, 10 s, then
    called a FIFO."""
    dev = tmp_path / "nodev"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(240, 0))  # 240: local use, no driver
    try:
        os.close(os.open(dev, os.O_WRONLY | os.O_NONBLOCK))
        pytest.skip("a driver answers for device 240,0 here")
    except OSError as exc:
        why = exc.strerror
    with within(5), pytest.raises(UserError) as e:
        write_bytes(dev, b"nowhere")
    assert message(e) == f"cannot write {dev}: {why}"
    assert stat.S_ISCHR(dev.stat().st_mode)


def not_regular(kind: str, folder: Path) -> Path:
    """A `kind` of file that is not a regular file, in `folder` (the current directory)."""
    if kind == "character device":
        return Path("/dev/null")  # only read, never written
    path = folder / kind.split()[0]
    if kind == "directory":
        path.mkdir()
    elif kind == "FIFO (named pipe)":
        os.mkfifo(path)
    else:
        socket.socket(socket.AF_UNIX).bind(path.name)  # relative: a socket's path is short
    return path


@pytest.mark.parametrize("kind", ["directory", "FIFO (named pipe)", "socket", "character device"])
def test_an_input_that_is_not_a_regular_file_says_what_it_is(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = not_regular(kind, tmp_path)
    with pytest.raises(DataError) as e:
        open_input(path)
    assert message(e) == f"{path}: is a {kind}, not a regular file"


@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_an_output_that_is_not_a_regular_file_says_what_it_is(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    path = not_regular(kind, tmp_path)
    with pytest.raises(UserError) as e:
        write_bytes(path, b"data")
    assert message(e) == f"cannot write {path}: is a {kind}, not a regular file"


def test_a_block_device_and_any_other_kind_are_named():
    assert describe_mode(stat.S_IFBLK | 0o660) == "is a block device"
    assert describe_mode(stat.S_IFLNK | 0o777) == "is not a regular file"  # as lstat sees a link


def test_an_input_swapped_for_a_fifo_after_its_check_is_refused_without_blocking(
    tmp_path, monkeypatch
):
    path = tmp_path / "t.tsv"
    path.write_text("a\n1\n")
    real_stat, swapped = os.stat, []

    def swap_after(p, *args, **kwargs):
        result = real_stat(p, *args, **kwargs)
        if p == path and not swapped:
            path.unlink()
            os.mkfifo(path)
            swapped.append(path)
        return result

    monkeypatch.setattr(os, "stat", swap_after)
    with within(5), pytest.raises(DataError) as e:
        open_input(path)
    assert message(e) == f"{path}: is a FIFO (named pipe), not a regular file"


def test_an_input_is_read_the_blocking_way(tmp_path):
    """O_NONBLOCK only guards the open: the file handed over reads as any other."""
    (tmp_path / "t.bin").write_bytes(b"data")
    with open_input(tmp_path / "t.bin") as f:
        assert os.get_blocking(f.fileno()) and f.read() == b"data"


def test_json_is_written_indented_with_a_final_newline(tmp_path):
    write_json(tmp_path / "m.json", {"test": {"mae": 0.5}, "w": [1, 2]})
    assert (tmp_path / "m.json").read_bytes() == (
        b'{\n  "test": {\n    "mae": 0.5\n  },\n  "w": [\n    1,\n    2\n  ]\n}\n'
    )


def test_a_table_is_written_in_utf8_floats_to_7_decimals_whatever_the_locale(tmp_path):
    with c_locale():
        write_tsv(
            tmp_path / "t.tsv", ["step", "x", "größe"], [[0, 0.1 + 0.2, 1 / 3], [1, -2.5, 1e-9]]
        )
        columns = read_tsv(tmp_path / "t.tsv", "evaluate")
    expected = "step\tx\tgröße\n0\t0.3\t0.3333333\n1\t-2.5\t0.0\n"
    assert (tmp_path / "t.tsv").read_bytes() == expected.encode("utf-8")
    assert list(columns) == ["step", "x", "größe"]


# --- tables and JSON: bounded, finite, or one line -----------------------------------------


def test_a_table_without_line_breaks_is_refused_unread(tmp_path):
    (tmp_path / "t.tsv").write_bytes(b"\0" * (3 << 20))
    with pytest.raises(DataError, match="line 1 is longer than 1,048,576 characters"):
        read_tsv(tmp_path / "t.tsv", "evaluate")


@pytest.mark.parametrize(
    "cell,why",
    [
        ("nan", "nan where a finite number belongs"),
        ("inf", "inf where a finite number belongs"),
        ("-Infinity", "-inf where a finite number belongs"),
        ("x", "could not convert string to float: 'x'"),
    ],
)
def test_a_table_cell_that_is_not_a_finite_number_is_refused(tmp_path, cell, why):
    (tmp_path / "t.tsv").write_text(f"step\ttrain_loss\n0\t1.5\n1\t{cell}\n")
    with pytest.raises(DataError) as e:
        read_tsv(tmp_path / "t.tsv", "train")
    assert message(e) == f"{tmp_path / 't.tsv'}: not a table of finite numbers ({why})"


def test_a_table_reads_into_float64_columns_by_name(tmp_path):
    (tmp_path / "t.tsv").write_text("step\ttrain_loss\n0\t1.5\n1\t-2e-3\n")
    columns = read_tsv(tmp_path / "t.tsv", "train", ["train_loss"])
    assert columns == {"step": array("d", [0, 1]), "train_loss": array("d", [1.5, -0.002])}


@pytest.mark.parametrize(
    "text,problem",
    [
        (b"", "has no rows"),
        (b"step\tloss\n", "has no rows"),
        (b"step\tloss\n0\t1.5\n1\n", "row 3 has 1 cells, the header 2: rerun the train stage"),
        (b"step\tstep\n0\t1\n", "its header names a column twice: rerun the train stage"),
        (b"step\tloss\n0\t1\n", "has no column lr, epoch (has step, loss): rerun the train stage"),
        (b"\xff\n", "cannot be read: 'utf-8' codec can't decode byte 0xff in position 0: "
                     "invalid start byte"),
    ],
    ids=["empty", "header only", "short row", "twice", "missing", "not utf-8"],
)  # fmt: skip
def test_a_table_no_stage_writes_is_one_line(tmp_path, text, problem):
    (tmp_path / "t.tsv").write_bytes(text)
    with pytest.raises(DataError) as e:
        read_tsv(tmp_path / "t.tsv", "train", ["step", "lr", "epoch"])
    rerun = " (dvc repro train)" if "rerun" in problem else ""
    assert message(e) == f"{tmp_path / 't.tsv'}: {problem}{rerun}"


def test_a_missing_input_says_which_stage_makes_it(tmp_path):
    for read in (read_tsv, read_json):
        with pytest.raises(DataError) as e:
            read(tmp_path / "t.tsv", "train")
        assert (
            message(e)
            == f"{tmp_path / 't.tsv'} not found: run the train stage first (dvc repro train)"
        )


def test_a_missing_column_message_shows_200_characters_of_the_header(tmp_path):
    names = [f"column{i:03}" for i in range(40)]  # 11 characters each with ", "
    (tmp_path / "t.tsv").write_text("\t".join(names) + "\n" + "\t".join(["1"] * 40) + "\n")
    with pytest.raises(DataError) as e:
        read_tsv(tmp_path / "t.tsv", "train", ["step"])
    has = ", ".join(names[:18]) + ", co"
    assert message(e) == (
        f"{tmp_path / 't.tsv'}: has no column step (has {has}): rerun the train stage "
        "(dvc repro train)"
    )


def test_a_table_is_utf8_whatever_the_locale(tmp_path):
    (tmp_path / "t.tsv").write_bytes("größe\n1\n".encode())
    with c_locale():
        assert list(read_tsv(tmp_path / "t.tsv", "train")) == ["größe"]


def test_a_crlf_counts_two_characters_against_the_line_limit(tmp_path):
    (tmp_path / "t.tsv").write_bytes(b"a" * (MAX_LINE_CHARS - 1) + b"\r\n1\r\n")
    with pytest.raises(DataError) as e:
        read_tsv(tmp_path / "t.tsv", "train")
    assert message(e) == (
        f"{tmp_path / 't.tsv'}: line 1 is longer than 1,048,576 characters: not a text table "
        "(a binary file, or no line breaks?)"
    )


def test_a_table_holds_at_most_max_table_cells_lines_times_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_TABLE_CELLS", 12)
    (tmp_path / "t.tsv").write_text("a\tb\tc\n" + "1\t2\t3\n" * 3)  # 4 lines of 3: 12
    assert len(read_tsv(tmp_path / "t.tsv", "evaluate")["a"]) == 3
    (tmp_path / "t.tsv").write_text("a\tb\tc\n" + "1\t2\t3\n" * 4)
    with pytest.raises(DataError) as e:
        read_tsv(tmp_path / "t.tsv", "evaluate")
    assert message(e) == (
        f"{tmp_path / 't.tsv'}: has over 3 rows of 3 columns, more than the evaluate stage "
        "writes: rerun it (dvc repro evaluate)"
    )


def test_a_long_line_is_refused_by_number_having_read_one_character_past_the_limit():
    f = io.StringIO("abc\n" + "defg\n" + "x" * 10 + "\n")
    lines = bounded_lines(f, "t.tsv", limit=5)
    assert [next(lines), next(lines)] == ["abc\n", "defg\n"]  # 5 with its line break: kept
    with pytest.raises(DataError) as e:
        next(lines)
    assert message(e) == (
        "t.tsv: line 3 is longer than 5 characters: not a text table (a binary file, or no line "
        "breaks?)"
    )
    assert f.read() == "xxxx\n"


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
        f.truncate(4 * MAX_JSON_BYTES)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            read_json(tmp_path / "m.json", "evaluate")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message(e) == (
        f"{tmp_path / 'm.json'}: over 16 MiB, far more than the evaluate stage writes: rerun it "
        "(dvc repro evaluate)"
    )
    assert peak < 2 * MAX_JSON_BYTES


def test_a_json_of_16_mib_is_read(tmp_path):
    (tmp_path / "m.json").write_bytes(b"{}" + b" " * (MAX_JSON_BYTES - 2))
    assert read_json(tmp_path / "m.json", "evaluate") == {}


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


# --- the environment variables a stage reads -----------------------------------------------


@pytest.mark.parametrize("value", ["bogus", "", "1e3"])
def test_a_log_level_that_is_none_is_one_line(monkeypatch, capsys, value):
    from torchreg.stage import run_main

    monkeypatch.setenv("TORCHREG_LOG_LEVEL", value)
    with pytest.raises(SystemExit) as exit_:
        run_main("predict", lambda: None)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"predict: error: TORCHREG_LOG_LEVEL = {value.upper()!r} is not a log level "
        "(allowed: DEBUG, INFO, WARNING, ERROR, CRITICAL)\n"
    )


def wait_for_text(path: Path, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (found := path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@pytest.mark.parametrize("how", ["by-dvc", "by-dvc-through-a-shell", "by-hand"])
def test_a_stage_ends_with_the_dvc_that_started_it(tmp_path, how):
    """kill -9 of `dvc repro` leaves no trainer behind, whether the shell DVC runs the command
    in execs it (bash) or waits for it (dash, DVC's /bin/sh where SHELL is unset); a stage
    started by hand outlives its parent, as `nohup` expects."""
    log = tmp_path / "stage.log"
    log.touch()
    stage = [
        sys.executable,
        "-c",
        "import sys, time\nfrom torchreg.stage import run_main\n"
        "run_main('train', lambda: (print('up', file=sys.stderr, flush=True), time.sleep(60)))",
    ]
    if how == "by-dvc-through-a-shell":  # a shell that stays: the command is not its last
        stage = ["/bin/sh", "-c", f"{shlex.join(stage)}; exit $?"]
    dvc_env = "" if how == "by-hand" else ", env={**os.environ, 'DVC_STAGE': 'train'}"
    dvc = (  # stands for dvc: starts the stage as DVC does, says its pid, waits
        "import os, subprocess, sys\n"
        f"p = subprocess.Popen({stage!r}, stderr=open({str(log)!r}, 'w'){dvc_env})\n"
        "print(p.pid, flush=True)\np.wait()"
    )
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    parent = subprocess.Popen([sys.executable, "-c", dvc], stdout=subprocess.PIPE, env=env)
    pid = int(parent.stdout.readline())
    try:
        assert wait_for_text(log, "up\n") == "up\n"
        parent.kill()
        parent.wait()
        if how != "by-hand":
            said = "train: terminated (SIGTERM); no output was written\n"
            assert wait_for_text(log, said) == "up\n" + said
        else:
            time.sleep(2)
            os.kill(pid, 0)  # still running
            assert log.read_text() == "up\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_no_output_is_put_in_place_once_dvc_is_gone(tmp_path, monkeypatch):
    from torchreg import stage

    target = tmp_path / "metrics.json"
    target.write_text("old")
    monkeypatch.setattr(stage.ORPHANED, "is_set", lambda: True)
    with pytest.raises(UserError) as e, files.atomic_path(target) as tmp:
        tmp.write_text("new")
    assert str(e.value) == f"not writing {target}: the dvc process that ran this stage is gone"
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_a_peer_timeout_that_is_no_number_of_seconds_is_one_line(monkeypatch, value):
    from torchreg.context import dist_timeout_s

    monkeypatch.setenv("TORCHREG_DIST_TIMEOUT_S", value)
    with pytest.raises(UserError) as e:
        dist_timeout_s()
    assert message(e) == (f"TORCHREG_DIST_TIMEOUT_S = {value!r} is not a number of seconds above 0")
    monkeypatch.setenv("TORCHREG_DIST_TIMEOUT_S", "2.5")
    assert dist_timeout_s() == 2.5


STAGE = (
    "import sys, time\nfrom torchreg.stage import quiet_interrupts, run_main\n"
    "quiet_interrupts('train')\n"
    "run_main('train', lambda: (print('up', file=sys.stderr, flush=True), time.sleep(60)))"
)


def test_a_stage_whose_dvc_died_before_it_started_stops(tmp_path):
    """dvc killed while the stage's python starts: the stage finds init (pid 1) where dvc was,
    and stops as if it had seen dvc go."""
    log = tmp_path / "stage.log"
    log.touch()
    stage = shlex.join([sys.executable, "-c", STAGE])
    dvc = (  # starts the stage as DVC does, through a shell, and dies before the stage is up
        "import os, subprocess, sys\n"
        f"p = subprocess.Popen(['/bin/sh', '-c', 'sleep 1; exec ' + {stage!r}],"
        f" stderr=open({str(log)!r}, 'w'), env={{**os.environ, 'DVC_STAGE': 'train'}})\n"
        "print(p.pid, flush=True)\nos._exit(0)"
    )
    parent = subprocess.Popen([sys.executable, "-c", dvc], stdout=subprocess.PIPE)
    pid = int(parent.stdout.readline())
    parent.wait()
    try:
        import psutil

        if psutil.Process(pid).ppid() != 1:
            pytest.skip("orphans go to a subreaper here, not to init")
        said = "train: terminated (SIGTERM); no output was written\n"
        assert wait_for_text(log, said).endswith(said)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_stage_outlives_the_shell_of_a_dvc_with_dvc_stage_exported(tmp_path):
    """DVC_STAGE exported in the user's shell: dvc's environment has it too, so dvc is known
    by its command line; the shell that started dvc may go, the stage stays while dvc lives."""
    log = tmp_path / "stage.log"
    log.touch()
    fake = tmp_path / "bin" / "dvc"  # stands for dvc: `python .../dvc` as its entry point runs
    fake.parent.mkdir()
    fake.write_text(
        "import os, subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {STAGE!r}], stderr=open({str(log)!r}, 'w'),"
        " env={**os.environ, 'DVC_STAGE': 'train'})\n"
        "print(os.getpid(), p.pid, flush=True)\np.wait()"
    )
    user_shell = (  # starts dvc with DVC_STAGE exported, passes on its pids, waits
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, {str(fake)!r}], stdout=subprocess.PIPE)\n"
        "print(p.stdout.readline().decode(), end='', flush=True)\np.wait()"
    )
    env = {**os.environ, "DVC_STAGE": "mine"}
    shell = subprocess.Popen([sys.executable, "-c", user_shell], stdout=subprocess.PIPE, env=env)
    dvc, pid = map(int, shell.stdout.readline().split())
    try:
        assert wait_for_text(log, "up\n") == "up\n"
        shell.kill()
        shell.wait()
        time.sleep(2)
        os.kill(pid, 0)  # still running
        assert log.read_text() == "up\n"
        os.kill(dvc, signal.SIGKILL)
        said = "train: terminated (SIGTERM); no output was written\n"
        assert wait_for_text(log, said) == "up\n" + said
    finally:
        for p in (dvc, pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
