"""Memory and processes a run will need, estimated before anything big is allocated.

A legal config can still ask for more than the machine holds (`model.hidden: [65536, 65536]` is
17 GB of weights). Checking first turns an OOM kill without a word into one line that names
the key and the estimate. The estimates are deliberately simple upper-bound sums of the big
tensors; small things are covered by a fixed allowance for the process itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchreg.config import ModelConfig, TrainConfig
from torchreg.errors import ConfigError

FLOAT = 4  # bytes; everything the model touches is float32
PROCESS_BYTES = 400 << 20  # a Python process with torch loaded, before any data (measured ~300)


def available_bytes() -> int:
    """Memory this process can still use: the kernel's MemAvailable, capped by a cgroup limit
    (a container's) when there is one."""
    available = _meminfo("MemAvailable") or _meminfo("MemFree") or 1 << 62
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parameter_count(cfg: ModelConfig, n_features: int) -> int:
    if cfg.kind == "linear":
        return n_features + 1
    widths = (n_features, *cfg.hidden, 1)
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def model_bytes(cfg: ModelConfig, n_features: int, batch_rows: int) -> int:
    """The weights, and the activations of one forward pass over `batch_rows` rows."""
    widths = (n_features, *cfg.hidden, 1) if cfg.kind == "mlp" else (n_features, 1)
    activations = batch_rows * sum(widths) * FLOAT * 2  # each layer's output and activation
    return parameter_count(cfg, n_features) * FLOAT + activations


def train_bytes(model: ModelConfig, train: TrainConfig, n_features: int, window_bytes: int) -> int:
    """One training process: weights, gradients and optimizer state (Adam keeps two more
    copies), a batch's activations forward and backward, the data window and one gathered
    chunk of it."""
    params = parameter_count(model, n_features) * FLOAT
    optimizer_state = 2 * params if train.optimizer == "adam" else 0
    activations = 2 * model_bytes(model, n_features, train.batch_size) - params
    return PROCESS_BYTES + 2 * params + optimizer_state + activations + 2 * window_bytes


def check_memory(needed: int, what: str, advice: str) -> None:
    """Refuse, in one line, what will not fit in the memory available now."""
    available = available_bytes()
    if needed > available:
        raise ConfigError(
            f"{what} needs about {_size(needed)} of memory but {_size(available)} is available: "
            f"{advice}"
        )


def check_processes(nproc: int, device: str) -> None:
    cpus = usable_cpus()
    if device == "cpu" and nproc > cpus:
        raise ConfigError(
            f"train.nproc = {nproc} but this machine has {cpus} CPUs for this run: allowed "
            f"1..{cpus} (more processes than cores only slow data-parallel training down)"
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
