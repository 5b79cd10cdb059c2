"""Atomic, deterministic file writing, safe opening of inputs, small text formats (no torch).

Every output goes to a temporary file in the same folder and is renamed into place only when
complete, so an interrupted stage never leaves a half-written file for DVC to cache. A character
device or a pipe (/dev/null, /dev/stdout, a FIFO) is written directly instead: renaming a file
over it would replace the device, not write to it.

Every input is opened with `open_input`, which refuses anything but a regular file: reading a
FIFO nobody writes to would block for ever, and a directory or a device is never a data file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import io
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from torchreg.errors import DataError, UserError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block succeeds.

    Temporary files left by a killed earlier run (SIGKILL gives no chance to clean up) are
    removed first. A failure to write (no permission, disk full) becomes one clear UserError.
    A character device or a FIFO (/dev/null, /dev/stdout, a pipe) is yielded itself, to be
    written directly; a directory or other special file is refused.
    """
    path = Path(path)
    if _writes_directly(path):
        reader = _wait_for_reader(path)
        try:
            yield path
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            if reader is not None:
                os.close(reader)
        return
    try:
        remove_stale_temps(path)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(path: str | Path) -> None:
    """Create `path`'s folder and remove the temporary files a killed writer of `path` left.

    A free-space check calls this first, so that a leftover from a killed run is not counted
    against the rerun.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


# How long an output FIFO may wait for its reader (seconds), as `cmd > fifo & reader` needs.
try:
    FIFO_READER_WAIT_S = float(os.environ.get("TORCHREG_FIFO_WAIT_S", "10"))
except ValueError:
    FIFO_READER_WAIT_S = 10.0
_DESCRIPTOR_NAMES = ("/dev/fd/", "/dev/stdout", "/dev/stderr", "/proc/")


def _writes_directly(path: Path) -> bool:
    """True for a target that is a stream, not a file: a character device or a FIFO, or a
    descriptor's name (/dev/stdout may name a file the shell opened: write to it, as `>` does).
    A directory, socket or block device is refused: a regular file is expected there."""
    if str(path.absolute()).startswith(_DESCRIPTOR_NAMES):
        return True
    try:
        mode = path.stat().st_mode  # follows symlinks: the link's target is what gets written
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return True
    if not stat.S_ISREG(mode):
        raise UserError(f"cannot write {path}: {describe_mode(mode)}, not a regular file")
    return False


def _wait_for_reader(path: Path) -> int | None:
    """For a FIFO: wait up to FIFO_READER_WAIT_S for a process to read it, so that a pipe
    nobody reads is one clear error, not a stage blocked for ever in open(). Returns a write
    descriptor held until the writing is done (None for anything but a FIFO)."""
    deadline = time.monotonic() + FIFO_READER_WAIT_S
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: a FIFO with no reader yet
                if exc.errno in (errno.ENOENT, errno.ENODEV, errno.EISDIR):
                    return None
                if not stat.S_ISFIFO(_mode(path)):
                    return None  # a device that refuses O_NONBLOCK: the caller's open decides
                raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        if time.monotonic() > deadline:
            raise UserError(
                f"cannot write {path}: it is a FIFO (named pipe) and no process opened it for "
                f"reading within {FIFO_READER_WAIT_S:g} s; start the reader first"
            )
        time.sleep(0.05)


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode
    except OSError:
        return 0


def describe_mode(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    kinds = [
        (stat.S_ISDIR, "is a directory"),
        (stat.S_ISFIFO, "is a FIFO (named pipe)"),
        (stat.S_ISSOCK, "is a socket"),
        (stat.S_ISCHR, "is a character device"),
        (stat.S_ISBLK, "is a block device"),
    ]
    return next((text for test, text in kinds if test(mode)), "is not a regular file")


def open_input(path: str | Path) -> BinaryIO:
    """Open an input file for binary reading; refuse anything but a regular file.

    Checked twice: `stat` first (opening a FIFO for reading blocks until a writer comes, a
    socket cannot be opened at all), then `fstat` on the descriptor opened with O_NONBLOCK, so a
    path swapped for a FIFO between the two can neither block the open nor be read.
    FileNotFoundError is left to the caller, which knows what to advise.
    """
    path = Path(path)
    try:
        _require_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, DataError):
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        _require_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: {describe_mode(mode)}, not a regular file")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: object) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_tsv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[float]]) -> None:
    """Write a table a row at a time (memory stays at one row, however wide the table)."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(_fmt(v) for v in row) + "\n")


def _fmt(value: float) -> str:
    return repr(round(float(value), 7)) if isinstance(value, float) else str(value)


def read_tsv(path: str | Path, stage: str, required: Sequence[str] = ()) -> dict[str, list[float]]:
    """Read a numeric TSV into columns; say which stage makes it if it is missing, and which
    `required` columns it lacks."""
    path = Path(path)
    try:
        with io.TextIOWrapper(open_input(path), encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: run the {stage} stage first (dvc repro {stage})"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    if not rows:
        raise DataError(f"{path}: has no rows")
    missing = [name for name in required if name not in rows[0]]
    if missing:
        has = ", ".join(map(str, rows[0]))[:200]
        raise DataError(
            f"{path}: has no column {', '.join(missing)} (has {has}): "
            f"rerun the {stage} stage (dvc repro {stage})"
        )
    try:
        return {k: [float(r[k]) for r in rows] for k in rows[0]}
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a numeric table: {exc}") from None


def read_json(path: str | Path, stage: str) -> dict:
    path = Path(path)
    try:
        with open_input(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: run the {stage} stage first (dvc repro {stage})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a valid JSON file: {exc}") from None
