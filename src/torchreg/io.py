"""Atomic, deterministic file writing and small text formats (no torch here).

Every output goes to a temporary file in the same folder and is renamed into place only when
complete, so an interrupted stage never leaves a half-written file for DVC to cache.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from torchreg.errors import DataError, UserError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block succeeds.

    Temporary files left by a killed earlier run (SIGKILL gives no chance to clean up) are
    removed first. A failure to write (no permission, disk full) becomes one clear UserError.
    """
    path = Path(path)
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
        with path.open(newline="", encoding="utf-8") as f:
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
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: run the {stage} stage first (dvc repro {stage})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a valid JSON file: {exc}") from None
