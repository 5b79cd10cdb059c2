"""The .npy files that hold a split: written a block at a time, read a range of rows at a time.

A data file is one float32 array of shape (rows, features + 1): the features, then y, sealed
with the sha256 of its rows. Files are read a range of rows at a time (DataFile), so memory
does not grow with the number of rows.

This module uses NumPy, not torch: the prepare stage does not need torch, and importing it
would cost the stage most of its run time. Callers wrap the arrays with torch.from_numpy.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from torchreg.errors import DataError, first_line, rebuild_advice, shown
from torchreg.files import atomic_path, open_input, remove_stale_temps

GENERATE_HINT = "run the prepare stage first (dvc repro prepare)"
# Rows handled at once everywhere: a generated block (the data's bytes depend on it, so it never
# changes), a read, a gather of shuffled rows, an evaluation pass. 65,536 rows of 5 float32 are
# 1.25 MiB: memory stays flat at any size, and the per-chunk Python cost is negligible.
CHUNK_ROWS = 1 << 16


def nbytes(rows: int, n_features: int) -> int:
    return rows * (n_features + 1) * 4


def check_disk(outputs: Mapping[Path, int]) -> None:
    """Refuse before writing anything if the outputs (path -> bytes) cannot fit.

    Leftover temporary files of these outputs (a killed run) are removed first, so they do not
    count against the rerun. The old output is not counted as freed: it stays on disk until
    its replacement is complete, and DVC's cache may hold the same blocks. Under DVC each
    output is then copied into DVC's cache (`cache.type` reflink,copy falls back to a full
    copy on file systems without reflink), so the cache's file system needs room for it too:
    twice the data when the cache is on the same file system.
    """
    needs: dict[int, list] = {}  # device -> [bytes, folder, bytes of it for DVC's cache]

    def need(folder: Path, size: int, cache: bool) -> None:
        folder = _existing(folder)
        entry = needs.setdefault(folder.stat().st_dev, [0, folder, 0])
        entry[0] += size
        entry[2] += size if cache else 0

    cache_dir = dvc_cache_copy_dir()
    for path, size in outputs.items():
        try:
            remove_stale_temps(path)
        except OSError as exc:
            raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
        need(path.parent, size, cache=False)
        if cache_dir is not None:
            need(cache_dir, size, cache=True)
    for needed, folder, cached in needs.values():
        free = shutil.disk_usage(folder).free
        if needed > free:
            a, b, c = _sizes(needed, free, cached)
            copy = f" (with {c} for DVC's cache copy)" if cached else ""
            raise DataError(
                f"the data needs {a}{copy} but {folder}/ has {b} free: free some space, "
                "lower data.n_train / data.n_test"
                + (", or set `dvc cache dir` to another disk" if cached else "")
            )


def dvc_cache_copy_dir() -> Path | None:
    """DVC's cache folder when this runs as a DVC stage that will copy its outputs into it.

    DVC sets DVC_ROOT for every stage command (dvc/stage/run.py). The cache is `cache.dir`
    from .dvc/config.local or .dvc/config (relative to .dvc/), else .dvc/cache; no copy is made
    when `cache.type` lists only links (hardlink, symlink, reflink).
    """
    root = os.environ.get("DVC_ROOT")
    if not root:
        return None
    dvc_dir = Path(root) / ".dvc"
    config = configparser.ConfigParser(interpolation=None)
    # A file DVC would refuse itself: assume the defaults.
    with contextlib.suppress(configparser.Error, UnicodeDecodeError):
        config.read([dvc_dir / "config", dvc_dir / "config.local"], encoding="utf-8")
    types = config.get("cache", "type", fallback="reflink,copy")
    if "copy" not in [t.strip() for t in types.split(",")]:
        return None
    return dvc_dir / config.get("cache", "dir", fallback="cache")


def _existing(folder: Path) -> Path:
    if folder.exists():
        return folder
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _sizes(*sizes: int) -> list[str]:
    """The sizes in GB with as many decimals as it takes to tell the first two apart."""
    for decimals in range(2, 10):
        shown = [f"{s / 1e9:.{decimals}f} GB" for s in sizes]
        if shown[0] != shown[1]:
            return shown
    return [f"{s} bytes" for s in sizes]


# A data file carries the sha256 of its header's array description and of its rows, as a
# Python comment after the .npy header's dict: numpy parses that dict with a literal parser
# that skips comments, so np.load reads the file as before, while DataFile refuses a file
# whose bytes or dtype/shape/order were changed since prepare wrote it (a damaged copy that
# `dvc checkout` restored from the cache without checking, a flipped bit on disk).
NPY_MAGIC = b"\x93NUMPY"
DIGEST_NOTE = "  # sha256 "
# A data file's header is under 256 bytes (the dict, the digest, padding). numpy's own reader
# would read a header up to 10,000 bytes, then advise `allow_pickle=True` for a larger one.
MAX_HEADER_BYTES = 4096
# A dimension past this is no real file's (a crafted header can hold a 2000-digit hex number).
MAX_DIMENSION = 1 << 40
_VERIFIED: set[tuple[int, ...]] = set()  # files whose digest this process has checked


def _header_dict(rows: int, columns: int) -> str:
    return f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {columns}), }}"


def _npy_header(text: str) -> bytes:
    """A version 1.0 .npy header holding `text`, padded as numpy pads it (to 64 bytes)."""
    size = len(NPY_MAGIC) + 4 + len(text) + 1
    body = text + " " * (-size % 64) + "\n"
    return NPY_MAGIC + b"\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def write_rows(path: str | Path, rows: int, columns: int, blocks: Iterable[np.ndarray]) -> None:
    """Write a data file of `rows` x `columns` float32 from `blocks` (arrays of whole rows, in
    order): the .npy header, then the blocks one after another, so memory stays at one block.
    The digest is hashed as the blocks go out and written into the header last."""
    described = _header_dict(rows, columns)
    header = _npy_header(described + DIGEST_NOTE + "0" * 64)
    digest = hashlib.sha256(described.encode("latin1"))
    written = 0
    with atomic_path(path) as tmp, tmp.open("w+b") as f:
        f.write(header)
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np.float32)
            digest.update(memoryview(block).cast("B"))
            block.tofile(f)
            written += len(block)
        if written != rows:  # a caller's mistake, never the user's
            raise ValueError(f"{path}: {written} rows written, {rows} announced")
        f.seek(header.index(DIGEST_NOTE.encode()) + len(DIGEST_NOTE))
        f.write(digest.hexdigest().encode())


class DataFile:
    """A data file, checked on open and read in row ranges: a range is read into memory only
    when asked for, so a pass over a file larger than memory keeps memory flat."""

    def __init__(self, path: str | Path, missing_hint: str | None = GENERATE_HINT) -> None:
        """`missing_hint`: the advice when the file does not exist (the prepare stage's advice
        fits only the paths that stage writes). A file that carries a digest (every file the
        prepare stage writes) is read once through to check it; a plain .npy of the user's
        own is checked for its type and shape only."""
        self.path = Path(path)
        self._rebuild = rebuild_advice(missing_hint)
        try:
            with open_input(self.path) as f:
                described, note = self._read_header(f)
                self._offset = f.tell()
                size = os.fstat(f.fileno()).st_size
                identity = _identity(os.fstat(f.fileno()))
        except FileNotFoundError:
            advice = f": {missing_hint}" if missing_hint else ""
            raise DataError(f"{self.path} not found{advice}") from None
        except OSError as exc:
            raise DataError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        expected = self._offset + self.rows * self.columns * 4
        if size != expected:
            which = "shorter" if size < expected else "longer"
            raise DataError(
                f"{self.path}: not a valid data file ({which} than its header says: "
                f"{size} bytes, the header needs {expected})"
            )
        if note is not None and identity not in _VERIFIED:
            self._verify(described, note)
            _VERIFIED.add(identity)

    def _read_header(self, f: BinaryIO) -> tuple[str, str | None]:
        """Check the .npy header (its size bounded before it is read) and set rows and
        columns; return the header's dict text and the digest it carries, if any."""
        start = f.read(len(NPY_MAGIC) + 2)
        if len(start) < len(NPY_MAGIC) + 2 or not start.startswith(NPY_MAGIC):
            raise DataError(f"{self.path}: not a valid data file (not a .npy file)")
        width = {1: 2, 2: 4, 3: 4}.get(start[-2]) if start[-1] == 0 else None  # 1.0, 2.0, 3.0
        if width is None:
            raise DataError(
                f"{self.path}: not a valid data file (.npy version {start[-2]}.{start[-1]})"
            )
        length = int.from_bytes(f.read(width), "little")
        if length > MAX_HEADER_BYTES:
            raise DataError(
                f"{self.path}: not a valid data file (its .npy header is {length:,} bytes; a "
                f"data file's is under {MAX_HEADER_BYTES:,})"
            )
        text = f.read(length).decode("latin1")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read(f)  # numpy's own 10,000-byte limit never binds
        except Exception as exc:  # noqa: BLE001 (numpy's parser on any bytes: ValueError,
            # SyntaxError, TypeError for `{[]: 1}`, tokenize.TokenError for `[[[`, EOFError...)
            reason = re.sub(r" at 0x[0-9a-f]+", "", first_line(exc))  # `<ast.BinOp .. at 0x7f..>`
            raise DataError(f"{self.path}: not a valid data file ({reason})") from None
        if any(type(n) is not int or n > MAX_DIMENSION for n in shape):  # True, 0x<1900 f's>
            raise DataError(
                f"{self.path}: not a valid data file (its shape {shown(shape)} is not a size)"
            )
        if dtype != np.float32:  # a byte-swapped float32 too: numpy's dtypes compare the order
            raise DataError(
                f"{self.path}: holds {dtype.str} ({dtype}) values; a data file holds "
                "little-endian float32 ('<f4')"
            )
        if len(shape) != 2:
            raise DataError(
                f"{self.path}: a {len(shape)}-D array of shape {shape}; a data file is 2-D "
                "(rows, features then y)"
            )
        if fortran_order:
            raise DataError(
                f"{self.path}: stored in Fortran (column-major) order; a data file stores its "
                "rows one after another (C order): save it with "
                "np.save(path, np.ascontiguousarray(array))"
            )
        if shape[0] < 1 or shape[1] < 2:
            raise DataError(
                f"{self.path}: expected at least 1 row and 2 columns (features, then y), "
                f"got {shape}"
            )
        self.rows, self.columns = shape
        described, found, note = text.partition(DIGEST_NOTE)
        return described, note.strip() if found else None

    def _verify(self, described: str, note: str) -> None:
        """Hash the header's dict and every row, a block at a time, against the digest."""
        digest = hashlib.sha256(described.encode("latin1"))
        buffer = bytearray(16 << 20)
        with open_input(self.path) as f:
            f.seek(self._offset)
            while n := f.readinto(buffer):
                digest.update(memoryview(buffer)[:n])
        if digest.hexdigest() != note:
            advice = f": {self._rebuild}" if self._rebuild else ""
            raise DataError(
                f"{self.path}: damaged (its content does not match the sha256 it carries){advice}"
            )

    @property
    def n_features(self) -> int:
        return self.columns - 1

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) as a new (rows, features + 1) float32 array."""
        stop = self.rows if stop is None else min(stop, self.rows)
        out = np.empty((max(stop - start, 0), self.columns), dtype=np.float32)
        if out.size == 0:  # an empty range: nothing to read (and a 0-byte view cannot be cast)
            return out
        with open_input(self.path) as f:
            f.seek(self._offset + start * self.columns * 4)
            if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise DataError(f"{self.path}: file is shorter than its header says")
        _check_finite(out, self.path, start)
        return out

    chunk_rows = CHUNK_ROWS  # rows per block of `blocks`, by default

    def blocks(self, rows: int | None = None) -> Iterator[np.ndarray]:
        rows = rows or self.chunk_rows
        for start in range(0, self.rows, rows):
            yield self.read(start, start + rows)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """A file as it is now: another file, or this one changed, has another identity."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ArrayRows(DataFile):
    """Rows already in memory (a NumPy array or a CPU tensor), read like a DataFile."""

    def __init__(self, array: object) -> None:
        self.path = Path("<memory>")
        self._array = np.asarray(array, dtype=np.float32)  # no copy for float32 CPU tensors
        if self._array.ndim != 2 or self._array.shape[1] < 2:
            raise DataError(f"expected rows of features then y, got shape {self._array.shape}")
        self.rows, self.columns = self._array.shape

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        block = self._array[start:stop]
        _check_finite(block, self.path, start)
        return block


def _check_finite(block: np.ndarray, path: Path, start: int) -> None:
    """NaN or inf in the data would surface later as a 'diverged' loss: name the row instead."""
    if not np.isfinite(block).all():
        row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
        raise DataError(f"{path}: row {row} has a NaN or infinite value; regenerate the data")


def as_rows(source: object) -> DataFile:
    """A data file as it is; an array or tensor of rows wrapped to be read the same way."""
    return source if isinstance(source, DataFile) else ArrayRows(source)
