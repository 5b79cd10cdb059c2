"""Draw the pictures: the tutorial's feature-vs-y fit, the loss curve, predicted vs actual, and
the residuals. Uses matplotlib only (no torch), from the tables the other stages wrote.

Reads:  params.yaml (plot.feature, train.loss), environment.yaml,
        dvclive/plots/metrics/{train,val}_loss.tsv, data/features.json (the names),
        plots/predictions.tsv and plots/curves.tsv (a table's in its own units),
        metrics/evaluate.json
Writes: plots/fit.png, plots/loss.png, plots/predicted_vs_actual.png, plots/residuals.png
"""

from __future__ import annotations

from torchreg.stage import quiet_interrupts, run_main, stage_parser

if __name__ == "__main__":  # first: Ctrl-C during the imports below is one line too
    quiet_interrupts("plot")

import logging
from pathlib import Path

from torchreg import environment
from torchreg.config import Params, load_params
from torchreg.environment import ENVIRONMENT_FILE
from torchreg.errors import DataError
from torchreg.files import check_writable, read_json, read_tsv
from torchreg.plotting import fit_figure, loss_figure, predicted_figure, residual_figure, save

log = logging.getLogger("plot")
FIGURES = ("fit.png", "loss.png", "predicted_vs_actual.png", "residuals.png")


def run(params: Params, inputs: dict[str, Path], out_dir: Path) -> list[Path]:
    feature = params.plot.feature
    check_writable(*(out_dir / name for name in FIGURES))
    loss = read_tsv(inputs["loss"], "train", ["step", "train_loss"])
    val = (
        read_tsv(inputs["val_loss"], "train", ["step", "val_loss"])
        if inputs.get("val_loss")
        else None
    )
    prepared = read_json(inputs["features"], "prepare") if inputs.get("features") else {}
    names = prepared.get("features")
    # plot.feature counts the numeric features (a table's categorical columns are one-hot
    # inputs, not a line to draw): `index` is the model input it is.
    numeric = names
    if names is not None and prepared.get("categories"):
        numeric = [c for c in prepared.get("columns", []) if c not in prepared["categories"]]
        numeric = numeric or names  # categories alone: any input
    if numeric is not None and not 0 <= feature < len(numeric):
        raise DataError(
            f"plot.feature = {feature} is not a numeric feature: allowed 0..{len(numeric) - 1} "
            f"({inputs['features']} lists {len(numeric)}: {', '.join(numeric)})"
        )
    index = feature if numeric is None else names.index(numeric[feature])
    label = f"x{feature}" if numeric is None else numeric[feature]
    pred = read_tsv(
        inputs["predictions"],
        "evaluate",
        [f"x{index}", "actual", "predicted", "residual", f"partial_x{index}"],
    )
    curve = read_tsv(inputs["curves"], "evaluate", ["feature", "x", "model"])
    if index not in {int(f) for f in curve["feature"]}:
        raise DataError(
            f"{inputs['curves']}: has no curve for feature {index}: rerun dvc repro evaluate"
        )
    metrics = read_json(inputs["metrics"], "evaluate")
    try:
        floor = float(metrics.get("noise_floor_mae", 0.0))  # a table has none
        subtitle = (
            f"test MAE {float(metrics['test']['mae']):.4g} (closed-form fit "
            f"{float(metrics['reference']['test_mae']):.4g}"
            + (f", noise floor {floor:.3g})" if "noise_floor_mae" in metrics else ")")
        )
    except KeyError as exc:
        raise DataError(f"{inputs['metrics']}: missing {exc}: rerun dvc repro evaluate") from None
    except (TypeError, ValueError):
        raise DataError(
            f"{inputs['metrics']}: test.mae, reference.test_mae and noise_floor_mae must be "
            "numbers: rerun dvc repro evaluate"
        ) from None
    target = prepared.get("target", "y")
    scaled = bool((prepared.get("standardize") or {}).get("target_std"))
    figures = {  # the names of FIGURES
        "fit.png": fit_figure(pred, curve, index, subtitle, label, target),
        "loss.png": loss_figure(
            loss["step"], loss["train_loss"], params.train.loss, floor, val, scaled
        ),
        "predicted_vs_actual.png": predicted_figure(pred, subtitle, target),
        "residuals.png": residual_figure(pred, floor, target),
    }
    written = []
    for name, fig in figures.items():
        save(fig, out_dir / name)
        written.append(out_dir / name)
    log.info("wrote %s", ", ".join(map(str, written)))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, "plot.feature and train.loss")
    parser.add_argument(
        "--loss",
        type=Path,
        default=Path("dvclive/plots/metrics/train_loss.tsv"),
        help="the loss curve DVCLive wrote while training (TSV)",
    )
    parser.add_argument(
        "--val-loss",
        type=Path,
        default=Path("dvclive/plots/metrics/val_loss.tsv"),
        help="the validation loss curve DVCLive wrote while training (TSV)",
    )
    parser.add_argument(
        "--features",
        type=Path,
        default=Path("data/features.json"),
        help="the prepare stage's column names and standardisation (JSON)",
    )
    parser.add_argument(
        "--predictions",
        type=Path,
        default=Path("plots/predictions.tsv"),
        help="the test rows with predictions from evaluate (TSV)",
    )
    parser.add_argument(
        "--curves",
        type=Path,
        default=Path("plots/curves.tsv"),
        help="the model and true curves from evaluate (TSV)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=Path("metrics/evaluate.json"),
        help="the metrics from evaluate (JSON)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("plots"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    inputs = {
        "loss": args.loss,
        "val_loss": args.val_loss,
        "features": args.features,
        "predictions": args.predictions,
        "curves": args.curves,
        "metrics": args.metrics,
    }

    def body() -> None:
        params = load_params(args.params)
        environment.check("plot", path=args.params.parent / ENVIRONMENT_FILE)
        run(params, inputs, args.out_dir)

    run_main("plot", body)


if __name__ == "__main__":
    main()
