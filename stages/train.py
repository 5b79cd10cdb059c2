"""Train the model with mini-batch gradient descent and log the loss curve with DVCLive.

Reads:  params.yaml (model.*, train.*), data/train.npy
Writes: models/model.pt (config + weights, loadable with weights_only=True),
        dvclive/metrics.json (the final train_loss),
        dvclive/plots/metrics/train_loss.tsv (one row per epoch)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from dvclive import Live

from torchreg.cli import run_main
from torchreg.config import Params, load_params
from torchreg.data import load_dataset
from torchreg.errors import UserError
from torchreg.model import build_model, save_model
from torchreg.training import fit, resolve_device, seeded

log = logging.getLogger("train")


def run(params: Params, data_path: Path, model_path: Path, live_dir: Path) -> list[float]:
    cfg = params.train
    device = resolve_device(cfg.device)
    rows = torch.from_numpy(load_dataset(data_path))
    n_features = rows.shape[1] - 1
    model = build_model(params.model, n_features, cfg.init_std, seeded(cfg.seed, "init"))
    model.to(device)
    if device.type == "cuda":
        rows = rows.to(device)
    log.info(
        "%s model, %s loss, %s (lr %g), %d epochs of %d rows in batches of %d on %s",
        params.model.kind,
        cfg.loss,
        cfg.optimizer,
        cfg.lr,
        cfg.epochs,
        len(rows),
        cfg.batch_size,
        device,
    )
    history = fit(model, rows, cfg, seeded(cfg.seed, "shuffle"))
    log_history(history, live_dir)
    save_model(model_path, model, params.model, n_features)
    log.info("final loss %.6f; wrote %s", history[-1], model_path)
    return history


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
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--live-dir", type=Path, default=Path("dvclive"))
    args = parser.parse_args(argv)
    run_main("train", lambda: run(load_params(args.params), args.data, args.model, args.live_dir))


if __name__ == "__main__":
    main()
