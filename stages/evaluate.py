"""Evaluate the trained model against the test set, the closed-form least-squares fit and (for
the linear model) the minimizer of the training loss (by iterations bounded by the rows:
reference.minimizer_converged says whether they converged).

Reads:  params.yaml (data.true_w, data.true_b, data.noise_std, data.target, train.loss,
        compute.cpu), environment.yaml,
        models/model.safetensors, data/train.npy, data/val.npy, data/test.npy,
        data/features.json
Writes: metrics/evaluate.json (val.mae, val.rmse: to choose by; test.mae, test.rmse, test.r2,
        train.mae, reference.test_mae,
        ...; a table's rows per split and rows dropped),
        plots/predictions.tsv (a sample of test rows with predictions),
        plots/curves.tsv (model and true function along each feature)
"""

from __future__ import annotations

from torchreg.stage import quiet_interrupts, run_main, stage_parser

if __name__ == "__main__":  # first: Ctrl-C during the imports below is one line too
    quiet_interrupts("evaluate")

import logging
from pathlib import Path

import torch

from torchreg import cpu, environment
from torchreg.config import DataConfig, load_params
from torchreg.data import GENERATE_HINT, DataFile
from torchreg.environment import ENVIRONMENT_FILE
from torchreg.errors import DataError
from torchreg.evaluation import (
    SAMPLE_ROWS,
    curve_rows,
    evaluate,
    in_table_units,
    prediction_errors,
    prediction_rows,
    rounded,
)
from torchreg.files import check_writable, read_json, write_json, write_tsv
from torchreg.model import TRAIN_HINT, Units, load_model

log = logging.getLogger("evaluate")


def run(
    cfg: DataConfig,
    model_path: Path,
    train_path: Path,
    test_path: Path,
    out: dict[str, Path],
    loss: str = "mae",
    own_paths: frozenset[str] = frozenset(),
    features_path: Path | None = None,
    val_path: Path | None = None,
) -> dict:
    """`loss` is train.loss, the loss whose exact minimizer the linear model is compared with.
    `own_paths`: the inputs ("model", "train", "test") the user named; a missing one is only
    said to be missing, while a missing pipeline path names the stage that makes it.
    `features_path`: prepare's features.json; a table has no true function, so its metrics
    compare the model with the fits on the training split alone. `val_path`: the validation
    split, whose metrics (val.mae, val.rmse) are the ones to choose a model by: the test split
    is only reported."""
    check_writable(*out.values())
    model, _, n_features = load_model(model_path, None if "model" in own_paths else TRAIN_HINT)
    train = DataFile(train_path, None if "train" in own_paths else GENERATE_HINT)
    test = DataFile(test_path, None if "test" in own_paths else GENERATE_HINT)  # read in chunks
    for path, rows in ((train_path, train), (test_path, test)):
        if rows.n_features != n_features:
            raise DataError(
                f"{path} has {rows.n_features} features but {model_path} expects {n_features}: "
                "rerun the pipeline (dvc repro)"
            )
    prepared = read_json(features_path, "prepare") if features_path else {"source": "synthetic"}
    truth = cfg if prepared.get("source") != "table" else None
    if truth is not None and n_features != cfg.n_features:
        raise DataError(
            f"{model_path} has {n_features} features but data.true_w has {cfg.n_features}: "
            "rerun the pipeline (dvc repro)"
        )
    units = Units.of(prepared) if truth is None else None
    metrics = evaluate(model, truth, train, test, loss, units)
    if val_path is not None:
        val = DataFile(val_path, None if "val" in own_paths else GENERATE_HINT)
        if val.n_features != n_features:
            raise DataError(
                f"{val_path} has {val.n_features} features but {model_path} expects "
                f"{n_features}: rerun the pipeline (dvc repro)"
            )
        val_errors = {"val": prediction_errors(model, val)}
        if units is not None:
            in_table_units(val_errors, units)
        metrics = {**rounded(val_errors), **metrics}
    if truth is None:
        metrics["data"] = {k: prepared.get(k) for k in ("rows", "dropped_rows")}
    # Write the tables first and the metrics last: a complete metrics file marks a complete run.
    sample = torch.from_numpy(test.read(0, SAMPLE_ROWS))
    table = units is not None  # in a table's units, of any size: significant digits
    write_tsv(out["predictions"], *prediction_rows(model, sample, units), significant=table)
    write_tsv(out["curves"], *curve_rows(model, truth, sample, units), significant=table)
    write_json(out["metrics"], metrics)
    if truth is not None:
        log.info(
            "test MAE %.6f (closed-form reference %.6f, noise floor %.6f); train MAE %.6f",
            metrics["test"]["mae"],
            metrics["reference"]["test_mae"],
            metrics["noise_floor_mae"],
            metrics["train"]["mae"],
        )
    else:  # a table: in its units, beside the exact linear fit the model is measured against
        log.info(
            "test MAE %.7g (exact linear fit %.7g, least squares %.7g); train MAE %.7g",
            metrics["test"]["mae"],
            metrics["reference"].get("minimizer_test_mae", float("nan")),
            metrics["reference"]["test_mae"],
            metrics["train"]["mae"],
        )
    warn_if_far(metrics, truth is None)
    return metrics


# A model whose test MAE is more than this many times the exact linear fit's gets a warning
# (the defaults end within 1.002x of it on every table of bench/tables).
FAR_FROM_REFERENCE = 1.05


def warn_if_far(metrics: dict, table: bool) -> None:
    """One line when a table's model is far worse than the exact linear fit on its test
    split: the likely cause and the knobs. The run still succeeds (the ratio is in the
    metrics: test.mae_vs_minimizer)."""
    ratio = metrics["test"].get("mae_vs_minimizer")
    if not table or ratio is None or ratio <= FAR_FROM_REFERENCE:
        return
    # Closer to the training rows than the best linear fit, yet farther on the test rows: it
    # learnt the training rows; else it has not got as far as the linear fit.
    if metrics["train"]["mae"] < metrics["reference"]["train_mae"]:
        cause = (
            "it fits the training rows better than that fit does: it overfits; try "
            "train.patience (e.g. 50), a smaller model.hidden, or the linear model"
        )
    else:
        cause = (
            "it has likely not converged; try more train.epochs, another train.lr, or "
            "train.lr_schedule: auto"
        )
    log.warning(
        "test MAE %.6g is %.3gx the exact linear fit's (%.6g, reference.minimizer_test_mae): "
        "%s (see docs/own-data.md)",
        metrics["test"]["mae"],
        ratio,
        metrics["reference"]["minimizer_test_mae"],
        cause,
    )


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, "data.*, train.loss")
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/model.safetensors"),
        help="the trained weights to evaluate",
    )
    parser.add_argument(
        "--train", type=Path, default=Path("data/train.npy"), help="the training set to read"
    )
    parser.add_argument(
        "--val", type=Path, default=Path("data/val.npy"), help="the validation set to read"
    )
    parser.add_argument(
        "--test", type=Path, default=Path("data/test.npy"), help="the test set to read"
    )
    parser.add_argument(
        "--features",
        type=Path,
        default=Path("data/features.json"),
        help="the prepare stage's record of the source (a table has no true function)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=Path("metrics/evaluate.json"),
        help="where to write the metrics (JSON)",
    )
    parser.add_argument(
        "--predictions",
        type=Path,
        default=Path("plots/predictions.tsv"),
        help="where to write the sample of test rows with predictions (TSV)",
    )
    parser.add_argument(
        "--curves",
        type=Path,
        default=Path("plots/curves.tsv"),
        help="where to write the model and true function along each feature (TSV)",
    )
    args = parser.parse_args(argv)
    out = {"metrics": args.metrics, "predictions": args.predictions, "curves": args.curves}
    names = ("model", "train", "val", "test")
    own = frozenset(k for k in names if getattr(args, k) != parser.get_default(k))

    def body() -> dict:
        params = load_params(args.params)
        cpu.use(params.compute.cpu)
        environment.check("evaluate", params.compute.cpu, args.params.parent / ENVIRONMENT_FILE)
        inputs = (args.model, args.train, args.test)
        return run(params.data, *inputs, out, params.train.loss, own, args.features, args.val)

    run_main("evaluate", body)


if __name__ == "__main__":
    main()
