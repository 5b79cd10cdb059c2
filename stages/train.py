"""Train the model with mini-batch gradient descent and log the loss curve with DVCLive.

Reads:  params.yaml (model.*, train.*, compute.cpu), environment.yaml, data/train.npy,
        data/val.npy, data/features.json
Writes: models/model.safetensors (weights, with the model config in its metadata, and a
        table's column names and standardisation),
        dvclive/metrics.json (the latest train_loss and val_loss, updated while training),
        dvclive/plots/metrics/{train,val}_loss.tsv (one row per epoch, appended as epochs finish),
        checkpoints/train.ckpt while training (every train.checkpoint_every_s; removed once
        the model is written): a killed run resumes from it, to the same bytes

With train.nproc > 1 the stage relaunches itself as that many processes through torchrun's
launcher (DistributedDataParallel, gloo on CPU, nccl on CUDA); only rank 0 writes. Started by
`torchrun` directly (e.g. on several hosts), it joins the job torchrun describes instead.
"""

from __future__ import annotations

from torchreg.stage import quiet_interrupts, run_main, stage_parser

if __name__ == "__main__":  # first: Ctrl-C during the imports below is one line too
    quiet_interrupts("train")

import contextlib
import functools
import logging
import sys
from pathlib import Path

from torchreg import cpu, environment
from torchreg.checkpoint import DEFAULT_PATH, RunKey, check_checkpoint_path, held, keyed
from torchreg.config import Params, load_params
from torchreg.context import RunContext, joined, launch, under_torchrun
from torchreg.data import GENERATE_HINT, DataFile
from torchreg.environment import ENVIRONMENT_FILE
from torchreg.model import Units, build_model, read_features, save_model
from torchreg.tracking import LiveLog, Progress
from torchreg.training import (
    Validation,
    check_budget,
    check_outputs,
    describe,
    fit,
    open_checkpoint,
    seeded,
)

log = logging.getLogger("train")
DVC_FILE = Path(__file__).resolve().parents[1] / "dvc.yaml"  # this stage's inputs


def run(
    params: Params,
    ctx: RunContext,
    data_path: Path,
    model_path: Path,
    live_dir: Path,
    checkpoint: tuple[Path, RunKey] | None = None,
    val_path: Path | None = None,
    features_path: Path | None = None,
) -> list[float]:
    """Train and write the model and its log; with `checkpoint` (a path and the run's key),
    save the training state there as it goes and resume from it when it has the same key.
    With `val_path`, log the validation loss per epoch (and stop early: train.patience); with
    `features_path` (prepare's features.json), a table's column names and standardisation
    go into the model file, for predict."""
    if ctx.is_writer:
        check_outputs(model_path, live_dir)
    data = DataFile(data_path)
    features = read_features(features_path, data.n_features) if features_path else None
    # train.* `auto`: a table's values where its target is standardised (features.json says),
    # else the tutorial's.
    units = Units.of(features)
    params = params.resolved("synthetic" if units is None else "table", data.rows)
    cfg = params.train
    validation = None
    if val_path is not None:
        validation = Validation(DataFile(val_path), cfg.loss, cfg.patience, ctx.device)
    model = build_model(params.model, data.n_features, cfg.init_std, seeded(cfg.seed, "init"))
    model.to(ctx.device)
    checkpoints, resume = open_checkpoint(checkpoint, model, cfg, ctx.is_writer, validation)
    if resume is not None and validation is not None:
        validation.load_state_dict(resume["validation"])  # the losses logged so far
    train = functools.partial(
        fit, model, data, cfg, seeded(cfg.seed, "shuffle"), ctx, step=None,
        checkpoints=checkpoints, resume=resume, validation=validation,
    )  # fmt: skip
    if not ctx.is_writer:
        return train(on_epoch=())
    log.info(describe(params, data.rows, ctx))
    if units is not None:
        log.info(
            "the losses are on the standardised target (x %.7g in the table's units)", units.y_std
        )
    done = [] if resume is None else resume["history"].tolist()
    if done:
        log.info("resuming after epoch %d of %d from %s", len(done), cfg.epochs, checkpoints.path)
    val = [] if validation is None else validation.history
    progress = Progress(cfg.epochs, len(done), val)
    with LiveLog(live_dir, done, val) as live, contextlib.closing(progress):
        history = train(on_epoch=[progress, live])
        save_model(model_path, model, params.model, data.n_features, features)  # fails: no log
    if checkpoints is not None:
        checkpoints.remove()
    if validation is not None and validation.best is not None:
        log.info(validation.summary(cfg.epochs))
    log.info("final loss %.6f; wrote %s", history[-1], model_path)
    return history


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, "model.* and train.*")
    for option, default, what in (
        ("--data", "data/train.npy", "the training set to read"),
        ("--val", "data/val.npy", "the validation set (its loss per epoch; train.patience)"),
        ("--features", "data/features.json", "prepare's names and standardisation of a table"),
        ("--model", "models/model.safetensors", "where to write the trained weights"),
        ("--live-dir", "dvclive", "DVCLive folder for the loss metrics and curves"),
        ("--checkpoint", DEFAULT_PATH, "where to keep the training state while training"),
    ):
        parser.add_argument(option, type=Path, default=Path(default), help=what)
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        cpu.use(params.compute.cpu)
        environment.check("train", params.compute.cpu, args.params.parent / ENVIRONMENT_FILE)
        if not under_torchrun():  # checked once, by the process that starts the run
            check_outputs(args.model, args.live_dir)
            others = {
                "training data": args.data, "validation data": args.val,
                "features file": args.features, "params file": args.params,
                "model": args.model, "DVCLive folder": args.live_dir,
            }  # fmt: skip
            check_checkpoint_path(args.checkpoint, others)
            hint = GENERATE_HINT if args.data == parser.get_default("data") else None
            check_budget(params, DataFile(args.data, hint))
        # One trainer per checkpoint: the process that starts the run holds it to the end.
        with contextlib.nullcontext() if under_torchrun() else held(args.checkpoint):
            if params.train.nproc > 1 and not under_torchrun():
                launch(params.train.nproc, __file__, sys.argv[1:] if argv is None else argv)
                return
            # Keyed to every input dvc.yaml lists for this stage, the data as this run reads it.
            names = ("data", "val", "features")
            given = {parser.get_default(n).as_posix(): getattr(args, n) for n in names}
            checkpoint = keyed(args.checkpoint, "train", params, DVC_FILE, given)
            with joined(params.train.device) as ctx:
                run(
                    params, ctx, args.data, args.model, args.live_dir, checkpoint,
                    args.val, args.features,
                )  # fmt: skip

    run_main("train", body)


if __name__ == "__main__":
    main()
