"""Training checkpoints: the state the next epoch depends on, saved as training goes, so that a
killed run resumes where it stopped and ends with the same bytes as a run that never stopped.

A checkpoint holds the step's state (weights, optimizer, lr scheduler, the weight average), the
shuffle generator, the next epoch, the loss of every epoch so far (what DVCLive has logged, to
write again) and the divergence yardstick. It is used only by exactly the same run: it carries
the params train reads, the training data's hash and the training code's hash, and a checkpoint
that differs in any of them is ignored with a line saying why.

The file is a sha256 of the rest, then a `torch.save` archive of tensors and plain containers,
read back with `torch.load(weights_only=True)`: never an arbitrary pickle. A truncated or
damaged file fails the digest and is ignored.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

import torchreg
from torchreg.config import Params
from torchreg.files import atomic_path, open_input, remove_stale_temps
from torchreg.stage import LAUNCHER_ENV

log = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_PATH = Path("checkpoints/train.ckpt")
# Params that change when checkpoints are written, never what is trained: not in the key.
NOT_KEYED = ("checkpoint_every_s",)
# Fault injection for the resume tests: "epoch:N" (after epoch N's log, before its checkpoint)
# or "write:N" (half-way through writing the checkpoint after epoch N). The process then
# SIGKILLs itself (and the stage process that launched it, under train.nproc > 1): a real
# kill -9, nothing cleaned up.
KILL_ENV = "TORCHREG_KILL_AT"


def file_digest(path: Path) -> str:
    with open_input(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def code_digest(script: Path | None) -> str:
    """The training code: every module of the package, the stage script and torch's version."""
    digest = hashlib.sha256(torch.__version__.encode())
    package = Path(torchreg.__file__).parent
    for path in sorted(package.glob("*.py")) + ([script] if script else []):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def keyed_params(params: Params) -> dict[str, Any]:
    train = params.train.model_dump(mode="json", exclude=set(NOT_KEYED))
    model = params.model.model_dump(mode="json")
    return {
        **{f"model.{k}": v for k, v in model.items()},
        **{f"train.{k}": v for k, v in train.items()},
    }


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
        params: Params,
        data_path: Path,
        script: Path | None = None,
        writer: bool = True,
    ) -> None:
        self.path, self.data_path, self.writer = path, data_path, writer
        self.every_s = params.train.checkpoint_every_s
        self.params = keyed_params(params)
        self.code = code_digest(script)
        self._data: str | None = None  # hashed when first needed: at a resume or a first save
        self.last = time.monotonic()

    @property
    def data(self) -> str:
        if self._data is None:
            self._data = file_digest(self.data_path)
        return self._data

    def due(self) -> bool:
        return self.writer and time.monotonic() - self.last >= self.every_s

    def save(self, state: dict[str, Any], epoch: int) -> None:
        """Write the state after `epoch` epochs (atomically: a killed write leaves the previous
        checkpoint as it was)."""
        record = {
            "format": FORMAT,
            "params": self.params,
            "data": self.data,
            "code": self.code,
            "epoch": epoch,
            "state": state,
        }
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
                raw = f.read()
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
        if not (
            isinstance(record.get("params"), dict)
            and all(isinstance(k, str) for k in record["params"])
            and {"data", "code", "epoch", "state"} <= record.keys()
        ):
            return self._ignore("it is not a checkpoint file (its record is incomplete)")
        changed = [
            k
            for k in sorted({*self.params, *record["params"]})
            if self.params.get(k) != record["params"].get(k)
        ]
        if changed:
            key = changed[0]
            was, now = record["params"].get(key), self.params.get(key)
            return self._ignore(f"{key} changed ({was} -> {now})")
        if record["data"] != self.data:
            return self._ignore(f"the training data changed ({self.data_path})")
        if record["code"] != self.code:
            return self._ignore("the training code changed (src/torchreg, the stage, torch)")
        return record

    def _ignore(self, why: str) -> None:
        if self.writer:
            log.info("ignoring the checkpoint %s: %s; training from scratch", self.path, why)
        return None

    def remove(self) -> None:
        """The checkpoint, and what a write killed half-way left next to it."""
        if self.writer:
            self.path.unlink(missing_ok=True)
            remove_stale_temps(self.path)
