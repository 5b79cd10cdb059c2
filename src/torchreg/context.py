"""The run's context: device, rank, world size and "am I the process that writes", built once.

A single process gets `RunContext(device)`. Under torchrun (WORLD_SIZE > 1) `joined()` joins
the process group, takes this rank's GPU when training on CUDA, and tears the group down at
the end; `launch()` starts this machine's ranks through torchrun's own launcher.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import logging
import math
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from torchreg.errors import ConfigError, UserError
from torchreg.stage import LAUNCHER_ENV

PR_SET_PDEATHSIG = 1


def dist_timeout_s() -> float:
    """How long a rank waits for a peer that has gone before the job fails (seconds):
    TORCHREG_DIST_TIMEOUT_S, default 60."""
    text = os.environ.get("TORCHREG_DIST_TIMEOUT_S", "60")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise UserError(
            f"TORCHREG_DIST_TIMEOUT_S = {text[:40]!r} is not a number of seconds above 0"
        )
    return seconds


@dataclass(frozen=True)
class RunContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_writer(self) -> bool:
        """Only one process writes the model and the logs."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """The device for `train.device`. CUDA gives other bits than the CPU (other kernels), so it
    is opt-in; there, torch's deterministic algorithms make a rerun on the same GPU model repeat
    bit for bit (cuBLAS needs a fixed workspace for that, set before its first call)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device = 'cuda' but no CUDA device is available here (allowed: auto, cpu)"
        )
    if name == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return torch.device(name)


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def joined(device_name: str) -> Iterator[RunContext]:
    """This process's context; under torchrun, as one rank of the job for the block's length."""
    device = resolve_device(device_name)
    if not under_torchrun():
        yield RunContext(device)
        return
    die_with_launcher()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=dist_timeout_s()))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        yield RunContext(device, dist.get_rank(), dist.get_world_size())
        # DDP's hooks make a reference cycle: collect it now, while the group is alive, not at
        # interpreter exit (where gloo's threads abort the process).
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def die_with_launcher() -> None:
    """A rank launched by `launch` ends when the stage process that launched it ends, however
    it ends (even SIGKILL): the kernel kills it (Linux's parent-death signal), so it can never
    write outputs for a stage that has already failed."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher:
        return
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(launcher):  # it died before the line above took effect
        os._exit(1)


def launch(nproc: int, script: str, argv: list[str]) -> None:
    """Run `script` as `nproc` ranks on this machine with torchrun's launcher; a rank that fails
    stops the others and becomes one UserError."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    try:
        elastic_launch(config, sys.executable)(script, *argv)
    except SignalException as exc:  # the launcher got SIGINT/SIGTERM and stopped the ranks
        raise KeyboardInterrupt(int(exc.sigval)) from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            raise KeyboardInterrupt(failure.exitcode - 128) from None  # Ctrl-C reached the ranks
        how = (
            f"was killed by signal {-failure.exitcode}"
            if failure.exitcode < 0
            else f"failed with exit code {failure.exitcode}"
        )
        raise UserError(f"rank {rank} of {nproc} {how}; the others were stopped") from None
