"""Training checkpoints: the state the next epoch depends on, saved as training goes, so that a
killed run resumes where it stopped and ends with the same bytes as a run that never stopped.

A checkpoint holds the step's state (weights, optimizer, lr scheduler, the weight average), the
shuffle generator, the next epoch, the loss of every epoch so far (what DVCLive has logged, to
write again) and the divergence yardstick. It is used only by exactly the same run: it carries
the run's key, every input the train stage's output depends on as dvc.yaml lists it (the values
of its params and of its environment.yaml keys, the hash of each of its deps: code and data),
and a checkpoint whose key differs in any of them is ignored with a line naming the first.
Because the key is read from dvc.yaml, a dep or param added to the stage there is keyed too.

The file is a sha256 of the rest, then a `torch.save` archive of tensors and plain containers,
read back with `torch.load(weights_only=True)`: never an arbitrary pickle. A truncated or
damaged file fails the digest and is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchreg.config import Params, read_params_file
from torchreg.environment import found
from torchreg.errors import ConfigError, UserError
from torchreg.files import (
    atomic_path,
    check_writable,
    make_folder,
    open_input,
    remove_stale_temps,
)
from torchreg.stage import LAUNCHER_ENV

log = logging.getLogger(__name__)

FORMAT = 2  # 2: keyed by the stage's inputs as dvc.yaml lists them
DEFAULT_PATH = Path("checkpoints/train.ckpt")
# Params that change when checkpoints are written, never what is trained: not in the key.
NOT_KEYED = ("train.checkpoint_every_s",)
# Fault injection for the resume tests: "epoch:N" (after epoch N's log, before its checkpoint)
# or "write:N" (half-way through writing the checkpoint after epoch N). The process then
# SIGKILLs itself (and the stage process that launched it, under train.nproc > 1): a real
# kill -9, nothing cleaned up.
KILL_ENV = "TORCHREG_KILL_AT"


def file_digest(path: Path) -> str:
    with open_input(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _digest_or_absent(path: Path) -> str:
    """A dep's hash; "absent" for one a stage run by hand does not have (metrics/params.ok)."""
    try:
        return file_digest(path)
    except FileNotFoundError:
        return "absent"


def read_stage(dvc_file: Path, stage: str) -> dict[str, Any]:
    """A stage's entry in dvc.yaml (its deps, params, outs), read as DVC reads YAML."""
    stages = read_params_file(dvc_file).get("stages")
    if not isinstance(stages, dict) or not isinstance(stages.get(stage), dict):
        raise ConfigError(f"{dvc_file}: no stage {stage!r} among its stages")
    return stages[stage]


def _leaves(value: Any, name: str) -> dict[str, Any]:
    """A params section as dotted keys (`model.kind`, ...); a scalar or a list as itself."""
    if isinstance(value, dict):
        return {
            k: v for key, sub in value.items() for k, v in _leaves(sub, f"{name}.{key}").items()
        }
    return {name: value}


@dataclass
class RunKey:
    """What a stage's output depends on, as its entry in dvc.yaml lists it: each param's value
    (params.yaml's by dotted key, another file's as `file:key`) and each dep file, hashed when
    first needed (hashing the data costs time, and most runs never resume)."""

    values: dict[str, Any]
    files: dict[str, Path]
    root: Path = Path()  # where dvc.yaml is: a dep read from elsewhere is named with its path
    _digests: dict[str, str] | None = field(default=None, repr=False)

    @classmethod
    def of_stage(
        cls,
        stage: str,
        params: Params,
        dvc_file: Path,
        given: dict[str, Path] | None = None,
        environment: dict[str, str] | None = None,
    ) -> RunKey:
        """The key of `stage` as `dvc_file` declares it. `given` maps a dep to the file the run
        really reads (a stage started with `--data other.npy`). The environment.yaml keys take
        what this machine has (`environment`, by default torchreg.environment.found()): that,
        not the record, is what the bytes depend on."""
        spec = read_stage(dvc_file, stage)
        environment = found() if environment is None else environment
        dumped = params.model_dump(mode="json")
        values: dict[str, Any] = {}
        for entry in spec.get("params") or []:
            if isinstance(entry, str):
                value: Any = dumped
                for part in entry.split("."):
                    value = value[part]
                values.update(_leaves(value, entry))
            else:
                for file, keys in entry.items():
                    values.update({f"{file}:{k}": environment.get(k) for k in keys})
        for name in NOT_KEYED:
            values.pop(name, None)
        given = given or {}
        deps = [d for d in spec.get("deps") or [] if isinstance(d, str)]
        root = dvc_file.parent
        return cls(values, {d: given.get(d, root / d) for d in deps}, root)

    @property
    def digests(self) -> dict[str, str]:
        if self._digests is None:
            self._digests = {name: _digest_or_absent(path) for name, path in self.files.items()}
        return self._digests

    def record(self) -> dict[str, Any]:
        return {"params": self.values, "files": self.digests}

    def first_change(self, saved: dict[str, Any]) -> str | None:
        """The first input that differs between this key and a saved one, in a phrase."""
        was, now = saved["params"], self.values
        for name in sorted({*was, *now}):
            if was.get(name) != now.get(name):
                return f"{name} changed ({was.get(name)} -> {now.get(name)})"
        was, now = saved["files"], self.digests
        for name in sorted({*was, *now}):
            if was.get(name) != now.get(name):
                read = self.files.get(name, self.root / name)
                where = "" if read == self.root / name else f" (read from {read})"
                return f"{name} changed{where}"
        return None


def keyed(
    path: Path, stage: str, params: Params, dvc_file: Path, given: dict[str, Path]
) -> tuple[Path, RunKey] | None:
    """`stage`'s checkpoint path with its key (RunKey.of_stage); None, with one line, where
    there is no `dvc_file` to key it to."""
    if not dvc_file.exists():
        log.info("no %s here: no checkpoints (nothing to key them to)", dvc_file)
        return None
    return path, RunKey.of_stage(stage, params, dvc_file, given)


def kill_point(point: str, epoch: int) -> None:
    """SIGKILL this run at `point` after epoch `epoch` (1-based) if KILL_ENV asks for it."""
    if os.environ.get(KILL_ENV) != f"{point}:{epoch}":
        return
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher and int(launcher) != os.getpid():
        os.kill(int(launcher), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class Checkpoints:
    """One run's checkpoint file: what it must match, when the next one is due, saving,
    loading and removing it. Only the writing process saves or removes; every process loads."""

    def __init__(
        self,
        path: Path,
        key: RunKey,
        every_s: float = 0.0,
        writer: bool = True,
        max_bytes: int | None = None,
    ) -> None:
        """`max_bytes`: the most a checkpoint of this run can take (`max_checkpoint_bytes`); a
        larger file is ignored unread."""
        self.path, self.key, self.every_s, self.writer = path, key, every_s, writer
        self.max_bytes = max_bytes
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.writer and time.monotonic() - self.last >= self.every_s

    def save(self, state: dict[str, Any], epoch: int) -> None:
        """Write the state after `epoch` epochs (atomically: a killed write leaves the previous
        checkpoint as it was)."""
        record = {"format": FORMAT, "key": self.key.record(), "epoch": epoch, "state": state}
        buffer = io.BytesIO()
        torch.save(record, buffer)
        payload = buffer.getvalue()
        with atomic_path(self.path) as tmp, tmp.open("wb") as f:
            f.write(hashlib.sha256(payload).digest())
            f.write(payload[: len(payload) // 2])
            f.flush()
            kill_point("write", epoch)
            f.write(payload[len(payload) // 2 :])
        self.last = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved record if it belongs to this very run; otherwise None, and one line says
        why it was ignored (nothing is said when there is no checkpoint)."""
        try:
            with open_input(self.path) as f:
                size = os.fstat(f.fileno()).st_size
                if self.max_bytes is not None and size > self.max_bytes:
                    return self._ignore(
                        f"it is larger than this run could have written ({size:,} bytes, at "
                        f"most {self.max_bytes:,})"
                    )
                raw = memoryview(f.read())
        except FileNotFoundError:
            return None
        except Exception as exc:  # a folder, a FIFO, no permission: not a checkpoint
            return self._ignore(f"it cannot be read ({exc})")
        digest, payload = raw[:32], raw[32:]
        if len(raw) < 32 or hashlib.sha256(payload).digest() != digest:
            return self._ignore("it is truncated or corrupt")
        try:
            record = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad archive
            return self._ignore(f"it is not a checkpoint file ({type(exc).__name__})")
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            return self._ignore("it was written by another version of the checkpoint format")
        key = record.get("key")
        if not (
            isinstance(key, dict)
            and all(isinstance(key.get(part), dict) for part in ("params", "files"))
            and {"epoch", "state"} <= record.keys()
        ):
            return self._ignore("it is not a checkpoint file (its record is incomplete)")
        change = self.key.first_change(key)
        if change is not None:
            return self._ignore(change)
        return record

    def ignore(self, why: str) -> None:
        """Say why the checkpoint is not resumed from (the run's own checks found it unfit)."""
        self._ignore(why)

    def _ignore(self, why: str) -> None:
        if self.writer:
            log.info("ignoring the checkpoint %s: %s; training from scratch", self.path, why)
        return None

    def remove(self) -> None:
        """The checkpoint, and what a write killed half-way left next to it."""
        if self.writer:
            self.path.unlink(missing_ok=True)
            remove_stale_temps(self.path)


# How long a run waits for another one that holds its checkpoint (one whose dvc was killed
# stops within a second; see stage.stop_with_dvc) before it gives up.
LOCK_WAIT_S = 30.0


@contextlib.contextmanager
def held(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """The checkpoint `path` for this run alone, while the block runs: two trainers never
    share one. The lock is an flock on `lock_path(path)` (the kernel drops it when its holder
    dies, even on kill -9), a file that holds the holder's pid and nothing else; another
    holder is waited for up to `wait_s`, then refused. Anything else at that path (a folder, a
    link, a file of someone's) is refused, never followed or overwritten. At the end the lock
    file goes, and the folder with it when this run made it, or it is the project's own
    `checkpoints/`, and nothing else is left there."""
    lock = lock_path(path)
    made_folder = not path.parent.exists()
    make_folder(lock)
    deadline, said = time.monotonic() + wait_s, False
    while True:
        fd = _open_lock(lock)
        if fd is None:  # the last holder removed it (and maybe the folder) just now
            make_folder(lock)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise UserError(
                    f"{path} is in use by another train run (pid {holder}) that did not end "
                    f"within {wait_s:g} s: wait for it, or stop it, then run this again"
                ) from None
            if not said:
                log.info("waiting for the train run (pid %s) that holds %s to end", holder, path)
                said = True
            time.sleep(0.2)
            continue
        if _same_inode(fd, lock):  # not a file its last holder removed while we waited
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        if made_folder or path.parent == DEFAULT_PATH.parent:
            with contextlib.suppress(OSError):  # not empty: a checkpoint kept, or other files
                path.parent.rmdir()


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _open_lock(lock: Path) -> int | None:
    """The lock file, opened (created if absent); None if it vanished while opening. Refused:
    a link (never followed), anything but a regular file, or one that holds more than a pid."""
    what = (
        f"{lock}, the lock that keeps two train runs off one checkpoint, exists and is not "
        "one of this project's lock files"
    )
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if lock.is_symlink() or (lock.exists() and not lock.is_file()):
            raise UserError(f"{what}: remove it, or choose another --checkpoint") from None
        raise UserError(f"cannot open {lock}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode) or _holder(fd, strict=True) is None:
        os.close(fd)
        raise UserError(f"{what}: remove it, or choose another --checkpoint")
    return fd


def _same_inode(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _holder(fd: int, strict: bool = False) -> str | None:
    """The pid a lock file holds ("?" while empty); with `strict`, None for any other content."""
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    if text.isdigit() or not text:
        return text or "?"
    return None if strict else "?"


def max_checkpoint_bytes(n_weights: int, epochs: int) -> int:
    """The most a checkpoint of a run can take: its weights at most eight times over (the
    weights, an optimizer's two moments, the average, the best epoch's, with room to spare),
    four float64 losses per epoch, and the archive's own records."""
    return 8 * 4 * n_weights + 4 * 8 * epochs + (8 << 20)


# The start of a checkpoint file's payload (a torch.save archive is a zip file).
ZIP_MAGIC = b"PK\x03\x04"


def check_checkpoint_path(path: Path, others: dict[str, Path]) -> None:
    """Refuse, before any work, a checkpoint path that would overwrite or remove something
    else: one of the run's inputs or outputs (`others`, by what they are), a path inside an
    output folder, anything but a regular file, or a regular file that is not a checkpoint."""
    for what, other in others.items():
        folder = other.is_dir() or what.endswith("folder")  # one made later counts already
        inside = folder and path.absolute().is_relative_to(other.absolute())
        if _same_file(path, other) or inside:
            where = "inside " if inside and not _same_file(path, other) else ""
            raise UserError(
                f"--checkpoint {path} is {where}the {what} ({other}): a checkpoint is "
                "overwritten while training and removed at the end; choose another path"
            )
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(
            f"--checkpoint {path} exists and is not a regular file: a checkpoint is a file "
            "this run writes and removes; choose another path"
        )
    if path.is_file():
        with open_input(path) as f:
            start = f.read(32 + len(ZIP_MAGIC))
        if start[32:] != ZIP_MAGIC:
            raise UserError(
                f"--checkpoint {path} exists and is not a checkpoint: it would be overwritten "
                "and removed; choose another path (or remove it)"
            )
    check_writable(path)


def _same_file(a: Path, b: Path) -> bool:
    if a.absolute() == b.absolute() or a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)
