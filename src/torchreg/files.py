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
import fcntl
import glob
import io
import json
import math
import os
import stat
import tempfile
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from torchreg.errors import DataError, UserError
from torchreg.stage import ORPHANED

# Every temporary file this project writes is `.<output name>.<random>.torchreg.tmp` beside
# its output: hidden, ignored by git and DVC (.gitignore, .dvcignore), recognisably ours (a
# sweep never takes a user's own `.notes.tmp`), and swept by the next writer in that folder.
TEMP_SUFFIX = ".torchreg.tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block succeeds.

    Temporary files left by a killed earlier run (SIGKILL gives no chance to clean up) are
    removed first. A failure to write (no permission, disk full) becomes one clear UserError.
    A character device or a FIFO (/dev/null, /dev/stdout, a pipe) is yielded itself, to be
    written directly; a directory or other special file is refused.

    The temporary file stays locked (flock) while it is written: that lock is how a later
    sweep (`remove_stale_temps`) tells a live writer's file from a dead one's.
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
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        yield tmp
        if ORPHANED.is_set():  # DVC is gone: it would not record this output
            raise UserError(f"not writing {path}: the dvc process that ran this stage is gone")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def remove_stale_temps(path: str | Path) -> None:
    """Create `path`'s folder and remove every temporary file a killed writer left in it.

    Any writer's leftover in the folder goes, not only `path`'s own: a stage that writes
    there sweeps what another one left. A temporary file still locked belongs to a live
    writer and stays. A free-space check calls this first, so that a leftover from a killed
    run is not counted against the rerun.
    """
    path = Path(path)
    make_folder(path)
    own = set(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for stale in sorted(own | set(path.parent.glob(f".*{TEMP_SUFFIX}"))):
        if _unlocked(stale):
            stale.unlink(missing_ok=True)


def _unlocked(temp: Path) -> bool:
    """Whether no process holds `temp`'s lock (its writer is gone)."""
    try:
        # os.open gives a close-on-exec descriptor already (PEP 446): no O_CLOEXEC needed.
        fd = os.open(temp, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False  # gone already, or not ours to judge
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def make_folder(path: str | Path) -> None:
    """Create the folder `path` goes in; when a file stands where a folder is needed, say so
    (mkdir's own "File exists" names neither the file nor the problem)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise
        raise UserError(
            f"cannot write {path}: {blocker} is a file, not a folder (choose a path under a folder)"
        ) from None


def check_writable(*paths: str | Path) -> None:
    """Refuse up front, before any work, an output that cannot be written: its folder cannot
    be made or written to, or a directory stands where the file goes. Each check creates and
    removes a temporary file in the output's folder, exactly as the real write will, and
    removes the folders it had to make (a run that fails later leaves no empty folder)."""
    for path in map(Path, paths):
        if _writes_directly(path):
            continue  # a device or a pipe: written into as it is, checked when opened
        made = [p for p in path.absolute().parents if not p.exists()]
        try:
            remove_stale_temps(path)
            fd, name = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX
            )
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            for folder in made:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()


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
    descriptor held until the writing is done, or None where a device refuses one (the
    caller's own open then decides)."""
    deadline = time.monotonic() + FIFO_READER_WAIT_S
    fifo = stat.S_ISFIFO(_mode(path))
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if not fifo:  # a device that refuses O_NONBLOCK, or has no driver (ENXIO too)
                return None
            if exc.errno != errno.ENXIO:  # ENXIO: a FIFO with no reader yet
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
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
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


def write_tsv(
    path: str | Path,
    header: Sequence[str],
    rows: Iterable[Sequence[float]],
    significant: bool = False,
) -> None:
    """Write a table a row at a time (memory stays at one row, however wide the table).
    Floats are rounded to 7 decimals, or with `significant` to 8 significant digits (a
    table's own units may be 1e-30 or 1e30)."""
    fmt = _significant if significant else _fmt
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(fmt(v) for v in row) + "\n")


def _fmt(value: float) -> str:
    return repr(round(float(value), 7)) if isinstance(value, float) else str(value)


def _significant(value: float) -> str:
    return repr(float(f"{value:.8g}")) if isinstance(value, float) else str(value)


# A table row or a line of predict's input longer than this is not one: a file with no line
# breaks (/dev/zero, a binary file) would otherwise be read into memory whole before any
# check. The widest table (4096 features, a sample row) is about 70 KB.
MAX_LINE_CHARS = 1 << 20
# The most numbers a table may hold (8 bytes each in memory): the loss of 10**7 epochs
# (train.epochs' maximum) is 3 * 10**7.
MAX_TABLE_CELLS = 1 << 25
# The largest JSON this project reads back (metrics/evaluate.json is a few KB, with up to
# 4096 learned weights about 100 KB).
MAX_JSON_BYTES = 16 << 20


def bounded_lines(
    f: TextIO, name: str, limit: int = MAX_LINE_CHARS, why: str = ""
) -> Iterator[str]:
    """The lines of `f`, each refused as soon as it passes `limit` characters (line break
    included), before it is read whole. `why` says what a line legitimately needs."""
    number = 0
    while line := f.readline(limit + 1):
        number += 1
        if len(line) > limit:
            raise DataError(
                f"{name}: line {number} is longer than {limit:,} characters{why}: "
                "not a text table (a binary file, or no line breaks?)"
            )
        yield line


def read_tsv(
    path: str | Path, stage: str, required: Sequence[str] = (), max_rows: int = 10**7 + 1
) -> dict[str, array]:
    """Read a numeric TSV into columns of float64; say which stage makes it if it is missing,
    which `required` columns it lacks, and refuse a line, a row count (over `max_rows`) or a
    value (NaN, infinite) that no table of that stage can have. Memory is bounded by the table
    that stage can write: 8 bytes a cell."""
    path = Path(path)
    try:
        with io.TextIOWrapper(open_input(path), encoding="utf-8", newline="") as f:
            # No quoting: a tab-separated table of numbers never quotes, and a stray quote must
            # not join lines into one unbounded cell.
            rows = csv.reader(bounded_lines(f, str(path)), delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows, None)
            if header is None:
                raise DataError(f"{path}: has no rows")
            columns = {name: array("d") for name in header}
            if len(columns) < len(header):
                raise DataError(
                    f"{path}: its header names a column twice: "
                    f"rerun the {stage} stage (dvc repro {stage})"
                )
            for number, row in enumerate(rows, start=2):
                if number > max_rows or number * len(header) > MAX_TABLE_CELLS:
                    raise DataError(
                        f"{path}: has over {number - 2:,} rows of {len(header)} columns, more "
                        f"than the {stage} stage writes: rerun it (dvc repro {stage})"
                    )
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: row {number} has {len(row)} cells, the header {len(header)}: "
                        f"rerun the {stage} stage (dvc repro {stage})"
                    )
                for column, cell in zip(columns.values(), row, strict=True):
                    column.append(_finite(float(cell)))
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: run the {stage} stage first (dvc repro {stage})"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a table of finite numbers ({exc})") from None
    if not columns or not len(next(iter(columns.values()))):
        raise DataError(f"{path}: has no rows")
    missing = [name for name in required if name not in columns]
    if missing:
        has = ", ".join(map(str, columns))[:200]
        raise DataError(
            f"{path}: has no column {', '.join(missing)} (has {has}): "
            f"rerun the {stage} stage (dvc repro {stage})"
        )
    return columns


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{value} where a finite number belongs")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} where a finite number belongs")


def read_json(path: str | Path, stage: str) -> dict:
    """A JSON object this project wrote, refused in one line when it is too large, nested too
    deeply or holds NaN or Infinity (none of which a stage writes)."""
    path = Path(path)
    try:
        with open_input(path) as f:
            text = f.read(MAX_JSON_BYTES + 1)
        if len(text) > MAX_JSON_BYTES:
            raise DataError(
                f"{path}: over {MAX_JSON_BYTES >> 20} MiB, far more than the {stage} stage "
                f"writes: rerun it (dvc repro {stage})"
            )
        obj = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: run the {stage} stage first (dvc repro {stage})"
        ) from None
    except RecursionError:
        raise DataError(f"{path}: not a valid JSON file: nested too deeply") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: not a valid JSON file: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a JSON object: rerun the {stage} stage (dvc repro {stage})")
    return obj
