"""The pipeline on the two real tables of examples/tables, against an independent oracle: the
exact least-absolute-deviations fit of the same training split, by linear programming (scipy's
HiGHS). The pipeline's test MAE must be as good as the oracle's, and evaluate's own reference
(reference.minimizer_test_mae, by iterations) must agree with it."""

import json

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from support import ROOT, load_stage
from torchreg.config import parse_params
from torchreg.context import RunContext
from torchreg.model import load_model

prepare, train, evaluate = load_stage("prepare"), load_stage("train"), load_stage("evaluate")

TABLES = {
    # table: (target, data.table changes, the oracle's test MAE with data.seed 0, to 4 digits;
    # cars: its text column Origin is a feature, one-hot)
    "cars.csv": ("Miles_per_Gallon", {"missing": "drop"}, 2.862),
    "diabetes.csv": ("progression", {}, 48.13),
}


def exact_lad(rows: np.ndarray) -> tuple[np.ndarray, float]:
    """argmin over (w, b) of sum |y - x @ w - b|, as a linear program: minimise sum u subject
    to -u <= y - x @ w - b <= u."""
    x, y = rows[:, :-1].astype(np.float64), rows[:, -1].astype(np.float64)
    n, d = x.shape
    cost = np.r_[np.zeros(d + 1), np.ones(n)]
    below = np.c_[-x, -np.ones(n), -np.eye(n)]
    above = np.c_[x, np.ones(n), -np.eye(n)]
    bounds = [(None, None)] * (d + 1) + [(0, None)] * n
    result = linprog(cost, np.r_[below, above], np.r_[-y, y], bounds=bounds, method="highs")
    assert result.status == 0, result.message
    return result.x[:d], result.x[d]


def trained(tmp_path, raw_params, table, target, changes=None, val=True, **train_changes):
    """prepare and train on an example table, in tmp_path; returns (params, the split files,
    features.json, the model file)."""
    raw_params["data"]["source"] = "table"
    raw_params["data"]["table"].update(
        {"path": str(ROOT / "examples/tables" / table), "target": target, **(changes or {})}
    )
    raw_params["train"].update(train_changes)
    params = parse_params(raw_params)
    out = {split: tmp_path / f"{split}.npy" for split in ("train", "val", "test")}
    features = tmp_path / "features.json"
    prepare.run(params.data, out, features)
    model = tmp_path / "model.safetensors"
    ctx = RunContext(torch.device("cpu"))
    val = out["val"] if val else None
    train.run(params, ctx, out["train"], model, tmp_path / "live", None, val, features)
    return params, out, features, model


@pytest.mark.parametrize("table", TABLES)
def test_test_mae_matches_the_exact_lad_fit(tmp_path, raw_params, table):
    target, changes, oracle_mae = TABLES[table]
    params, out, features, model = trained(
        tmp_path, raw_params, table, target, changes, lr=0.01, epochs=3000, patience=100
    )
    written = {k: tmp_path / f"{k}.out" for k in ("metrics", "predictions", "curves")}
    metrics = evaluate.run(
        params.data, model, out["train"], out["test"], written, "mae", frozenset(), features
    )

    w, b = exact_lad(np.load(out["train"]))
    test = np.load(out["test"]).astype(np.float64)
    # The files hold the target standardised: its errors times its std are the table's.
    target_std = json.loads(features.read_text())["standardize"]["target_std"]
    oracle = float(np.abs(test[:, :-1] @ w + b - test[:, -1]).mean()) * target_std
    assert oracle == pytest.approx(oracle_mae, rel=1e-3)  # the split itself did not move
    # Early stopping on the validation split may land a little better or worse on test.
    assert 0.9 < metrics["test"]["mae"] / oracle < 1.05, (metrics["test"], oracle)
    assert metrics["reference"]["minimizer_test_mae"] == pytest.approx(oracle, rel=0.01)
    assert 0 < metrics["test"]["r2"] < 1
    # The model file carries the table's names and standardisation, for predict.
    loaded, _, _ = load_model(model)
    assert loaded.features["target"] == target
    assert target not in loaded.features["names"]
    assert len(loaded.features["standardize"]["mean"]) == len(loaded.features["names"])


def test_predict_standardises_a_raw_row_to_the_bits_prepare_wrote(tmp_path, raw_params):
    """predict reads the table's own columns (by name, in any order) and standardises them with
    the statistics in the model file: every raw row becomes, bit for bit, the row prepare wrote
    into its split."""
    import io

    from torchreg.predict import RowReader

    _, out, _, model_path = trained(
        tmp_path, raw_params, "diabetes.csv", "progression", val=False, epochs=2
    )
    model, _, n_features = load_model(model_path)

    lines = (ROOT / "examples/tables/diabetes.csv").read_text().splitlines()
    header = lines[0].split(",")
    order = list(reversed(range(len(header))))  # columns in another order: found by name
    text = "\n".join(",".join(line.split(",")[i] for i in order) for line in lines) + "\n"
    reader = RowReader(io.StringIO(text), "rows", n_features, model.features)
    from_predict = np.concatenate([x.numpy() for _, x in reader.chunks()])
    from_prepare = np.concatenate([np.load(p)[:, :-1] for p in out.values()])
    key = lambda rows: sorted(r.tobytes() for r in rows)  # noqa: E731
    assert len(from_predict) == len(lines) - 1
    assert key(from_predict) == key(from_prepare)
