"""Train the model with mini-batch gradient descent and log the loss curve with DVCLive.

Reads:  params.yaml (model.*, train.*), data/train.npy
Writes: models/model.safetensors (weights, with the model config in its metadata),
        dvclive/metrics.json (the final train_loss),
        dvclive/plots/metrics/train_loss.tsv (one row per epoch)

With train.nproc > 1 the stage relaunches itself as that many processes through torchrun's
launcher (DistributedDataParallel, gloo on CPU, nccl on CUDA); only rank 0 writes. Started by
`torchrun` directly (e.g. on several hosts), it joins the job torchrun describes instead.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
from dvclive import Live

from torchreg.cli import run_main
from torchreg.config import Params, load_params
from torchreg.data import DataFile
from torchreg.errors import UserError
from torchreg.model import build_model, save_model
from torchreg.training import fit, resolve_device, seeded

log = logging.getLogger("train")
# How long a rank waits for a peer that has gone before the job fails (seconds).
DIST_TIMEOUT_S = float(os.environ.get("TORCHREG_DIST_TIMEOUT_S", "60"))


def run(params: Params, data_path: Path, model_path: Path, live_dir: Path) -> list[float]:
    cfg = params.train
    device = resolve_device(cfg.device)
    data = DataFile(data_path)
    rank = _join_process_group(device)
    if device.type == "cuda" and dist.is_initialized():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model = build_model(params.model, data.n_features, cfg.init_std, seeded(cfg.seed, "init"))
    model.to(device)
    if rank == 0:
        world = dist.get_world_size() if dist.is_initialized() else 1
        log.info(
            "%s model, %s loss, %s (lr %g), %d epochs of %d rows in batches of %d on %s x %d",
            params.model.kind,
            cfg.loss,
            cfg.optimizer,
            cfg.lr,
            cfg.epochs,
            data.rows,
            cfg.batch_size,
            device.type,
            world,
        )
    try:
        history = fit(model, data, cfg, seeded(cfg.seed, "shuffle"))
        if dist.is_initialized():
            # DDP's hooks make a reference cycle: collect it now, while the group is alive,
            # not at interpreter exit (where gloo's threads abort the process).
            gc.collect()
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        log_history(history, live_dir)
        save_model(model_path, model, params.model, data.n_features)
        log.info("final loss %.6f; wrote %s", history[-1], model_path)
    return history


def _join_process_group(device: torch.device) -> int:
    """Under torchrun (WORLD_SIZE > 1): join the group and return this rank; else 0."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=DIST_TIMEOUT_S)
    dist.init_process_group(backend=backend, timeout=timeout)
    return dist.get_rank()


def launch(nproc: int, argv: list[str]) -> None:
    """Run this script as `nproc` ranks on this machine with torchrun's launcher."""
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
    try:
        elastic_launch(config, sys.executable)(__file__, *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = (
            f"was killed by signal {-failure.exitcode}"
            if failure.exitcode < 0
            else f"failed with exit code {failure.exitcode}"
        )
        raise UserError(f"rank {rank} of {nproc} {how}; the others were stopped") from None


def log_history(history: list[float], live_dir: Path) -> None:
    """Log the per-epoch loss with DVCLive into a temporary folder, then swap it into place,
    so `live_dir` is either the old complete log or the new complete one."""
    try:
        live_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in live_dir.parent.glob(f".{live_dir.name}.*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=live_dir.parent, prefix=f".{live_dir.name}."))
        tmp.chmod(live_dir.parent.stat().st_mode & 0o777)  # mkdtemp makes 0700
    except OSError as exc:
        raise UserError(f"cannot write {live_dir}: {exc.strerror or exc}") from None
    try:
        with Live(str(tmp), save_dvc_exp=False, dvcyaml=None, report=None) as live:
            # Setting the step directly: next_step() rereads the whole history every call.
            for epoch, loss in enumerate(history):
                live.step = epoch
                live.log_metric("train_loss", loss)
        shutil.rmtree(live_dir, ignore_errors=True)
        os.replace(tmp, live_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/train.npy"))
    parser.add_argument("--model", type=Path, default=Path("models/model.safetensors"))
    parser.add_argument("--live-dir", type=Path, default=Path("dvclive"))
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        if params.train.nproc > 1 and "WORLD_SIZE" not in os.environ:
            launch(params.train.nproc, sys.argv[1:] if argv is None else argv)
        else:
            run(params, args.data, args.model, args.live_dir)

    run_main("train", body)


if __name__ == "__main__":
    main()
