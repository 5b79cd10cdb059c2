"""A table with a text column, a boolean column and a target far from 0, through prepare,
train, evaluate and predict: the one-hot encoding (its categories from the training split,
in the model file, in the split's hash), the target's standardisation (the defaults then
converge; metrics and predictions in the table's units), the exact reference and the warning
when a model is far from it, and train's `auto` values."""

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from support import ROOT, load_stage
from torchreg.config import TABLE_STEPS, parse_params
from torchreg.context import RunContext
from torchreg.errors import DataError
from torchreg.model import load_model
from torchreg.predict import RowReader
from torchreg.predict import run as predict_run

prepare, train, evaluate = load_stage("prepare"), load_stage("train"), load_stage("evaluate")
COLOURS = {"red": 0.0, "green": 800.0, "blue": -500.0}


def table(n: int = 300, seed: int = 0, start: int = 0) -> str:
    """Rows whose target is far from 0 and depends on a text column and a boolean one; `id`
    is an identifier (a distinct text a row), never a feature."""
    rng = np.random.default_rng(seed)
    lines = ["id,colour,flag,x,y"] if start == 0 else []
    for i in range(start, start + n):
        colour = list(COLOURS)[rng.integers(3)]
        flag = bool(rng.integers(2))
        x = round(float(rng.normal()) * 3, 3)
        y = 5000 + 300 * x + COLOURS[colour] + 200 * flag + round(float(rng.normal()) * 50, 2)
        lines.append(f"r{i},{colour},{str(flag).lower()},{x},{y:.2f}")
    return "\n".join(lines) + "\n"


def prepared(tmp_path, raw_params, text: str, **table) -> dict[str, Path]:
    """prepare on `text` (written to tmp_path/t.csv, target y) with data.table `table`
    changes; the split files."""
    (tmp_path / "t.csv").write_text(text)
    raw_params["data"]["source"] = "table"
    raw_params["data"]["table"].update({"path": str(tmp_path / "t.csv"), "target": "y", **table})
    out = {split: tmp_path / f"{split}.npy" for split in ("train", "val", "test")}
    prepare.run(parse_params(raw_params).data, out, tmp_path / "features.json")
    return out


def fitted(tmp_path, raw_params, text: str, **train_changes):
    """prepare, train and evaluate on `text` with the defaults but `train_changes`; returns
    (the split files, features.json's record, the model path, the metrics)."""
    raw_params["train"].update(train_changes)
    out = prepared(tmp_path, raw_params, text)
    params = parse_params(raw_params)
    features = tmp_path / "features.json"
    model = tmp_path / "model.safetensors"
    ctx = RunContext(torch.device("cpu"))
    train.run(params, ctx, out["train"], model, tmp_path / "live", None, out["val"], features)
    written = {k: tmp_path / f"{k}.out" for k in ("metrics", "predictions", "curves")}
    metrics = evaluate.run(
        params.data, model, out["train"], out["test"], written, "mae", frozenset(), features,
        out["val"],
    )  # fmt: skip
    return out, json.loads(features.read_text()), model, metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import read_params_file

    tmp = tmp_path_factory.mktemp("categorical")
    return tmp, *fitted(tmp, read_params_file(ROOT / "params.yaml"), table())


def test_text_columns_are_one_hot_with_the_training_splits_categories(run):
    _, out, record, _, _ = run
    assert record["columns"] == ["colour", "flag", "x"]  # id: a distinct text a row
    assert record["categories"] == {"colour": ["blue", "green", "red"]}
    assert record["features"] == ["colour=blue", "colour=green", "colour=red", "flag", "x"]
    scale = record["standardize"]
    for split in ("train", "val", "test"):
        rows = np.load(out[split]).astype(np.float64)
        raw = rows[:, :5] * scale["std"] + scale["mean"]
        assert np.abs(raw[:, :4] - np.rint(raw[:, :4])).max() < 1e-5  # 0 or 1
        assert (np.rint(raw[:, :3]).sum(axis=1) == 1).all()  # one colour a row
    text = table()
    colours = [line.split(",")[1] for line in text.splitlines()[1:]]
    train = np.load(out["train"]).astype(np.float64)
    y = train[:, -1] * scale["target_std"] + scale["target_mean"]
    assert abs(y.mean() - scale["target_mean"]) < 1e-3 < scale["target_mean"] - 4000
    assert len(train) < len(colours)


def test_the_defaults_converge_on_a_target_far_from_zero(run):
    """Standardising the target is what makes the defaults converge: the bias would
    otherwise walk to 5000 at most train.lr a step."""
    _, _, _, _, metrics = run
    assert metrics["reference"]["minimizer_converged"] is True
    assert metrics["test"]["mae_vs_minimizer"] < 1.02
    assert 30 < metrics["test"]["mae"] < 60  # the noise's: the table's units, not std's
    assert 30 < metrics["val"]["mae"] < 60


def test_predictions_and_plots_are_in_the_tables_units(run):
    tmp, out, record, model_path, _ = run
    predictions = (tmp / "predictions.out").read_text().splitlines()
    header = predictions[0].split("\t")
    rows = np.array([[float(v) for v in line.split("\t")] for line in predictions[1:]])
    actual = rows[:, header.index("actual")]
    assert 3000 < actual.mean() < 7000
    assert np.abs(rows[:, header.index("predicted")] - actual).mean() < 60
    assert set(np.round(rows[:, header.index("x0")], 6)) <= {0.0, 1.0}  # colour=blue, 0/1
    # predict: the table's own rows, by name, into the table's units.
    source = io.StringIO(table())
    model, _, n_features = load_model(model_path)
    reader = RowReader(source, "rows", n_features, model.features)
    x = torch.cat([chunk for _, chunk in reader.chunks()])
    scale = record["standardize"]
    expected = model(x).double() * scale["target_std"] + scale["target_mean"]
    out_csv = tmp / "predicted.csv"
    (tmp / "rows.csv").write_text(table())
    predict_run(model_path, tmp / "rows.csv", out_csv)
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "id,colour,flag,x,y,predicted"
    got = np.array([float(line.rsplit(",", 1)[1]) for line in lines[1:]])
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-6)
    y = np.array([float(line.split(",")[4]) for line in lines[1:]])
    assert np.abs(got - y).mean() < 60


def test_an_unseen_category_is_refused_or_all_zeros(run):
    tmp, _, _, model_path, _ = run
    rows = tmp / "purple.csv"
    rows.write_text("colour,flag,x\nred,true,1.5\npurple,false,0.5\n")
    with pytest.raises(DataError, match=r"row 3, column 'colour': 'purple' is not a category"):
        predict_run(model_path, rows, tmp / "p.csv")
    assert not (tmp / "p.csv").exists()
    predict_run(model_path, rows, tmp / "p.csv", unseen="zeros")
    lines = (tmp / "p.csv").read_text().split()[1:]
    red, purple = (float(line.rsplit(",", 1)[1]) for line in lines)
    model, _, _ = load_model(model_path)
    scale = model.features["standardize"]
    # purple: every colour input at its 0 (standardised as 0 is), flag false, x 0.5.
    raw = np.array([0.0, 0.0, 0.0, 0.0, 0.5])
    z = torch.tensor((raw - scale["mean"]) / scale["std"], dtype=torch.float32)
    expected = model(z[None]).item() * scale["target_std"] + scale["target_mean"]
    assert purple == pytest.approx(expected, rel=1e-6)
    assert red != purple


def test_the_splits_hash_covers_the_category_and_appended_rows_stay(tmp_path):
    """A row's split depends on its category's text too (other colours, other splits), and
    rows appended to a table leave every old row in its split."""
    from conftest import read_params_file

    def splits(text: str, folder: str) -> dict[float, str]:
        (tmp_path / folder).mkdir()
        raw = read_params_file(ROOT / "params.yaml")
        raw["data"]["source"] = "table"
        (tmp_path / folder / "t.csv").write_text(text)
        raw["data"]["table"].update({"path": str(tmp_path / folder / "t.csv"), "target": "y"})
        params = parse_params(raw)
        out = {s: tmp_path / folder / f"{s}.npy" for s in ("train", "val", "test")}
        prepare.run(params.data, out, tmp_path / folder / "features.json")
        record = json.loads((tmp_path / folder / "features.json").read_text())
        scale = record["standardize"]
        found = {}
        for split, path in out.items():  # each row by its x, which is distinct
            x = np.load(path)[:, record["features"].index("x")] * scale["std"][-1]
            for value in np.round(x + scale["mean"][-1], 3).tolist():
                found[value] = split
        return found

    base = table(400)
    recoloured = "\n".join(
        line.replace(",red,", ",TMP,").replace(",green,", ",red,").replace(",TMP,", ",green,")
        for line in base.splitlines()
    )
    first, other = splits(base, "a"), splits(recoloured + "\n", "b")
    moved = sum(first[x] != other[x] for x in first)
    assert moved > 20, moved  # about half of the recoloured rows (a third of all) move
    longer = splits(base + table(200, seed=1, start=400), "c")
    assert all(longer[x] == split for x, split in first.items())


def test_a_model_far_from_the_exact_fit_is_said_to_be(tmp_path, raw_params, caplog):
    with caplog.at_level(logging.WARNING):
        _, _, _, metrics = fitted(tmp_path, raw_params, table(), epochs=1, lr=1e-4)
    assert metrics["test"]["mae_vs_minimizer"] > evaluate.FAR_FROM_REFERENCE
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "the exact linear fit's" in warned[0], warned
    assert "train.epochs" in warned[0]


def test_a_converged_model_is_not_warned_about(run, caplog):
    tmp, out, _, model_path, _ = run
    from conftest import read_params_file

    raw = read_params_file(ROOT / "params.yaml")
    raw["data"]["source"] = "table"
    raw["data"]["table"].update({"path": str(tmp / "t.csv"), "target": "y"})
    written = {k: tmp / f"{k}.again" for k in ("metrics", "predictions", "curves")}
    with caplog.at_level(logging.WARNING):
        evaluate.run(
            parse_params(raw).data, model_path, out["train"], out["test"], written, "mae",
            frozenset(), tmp / "features.json",
        )  # fmt: skip
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_train_auto_values_follow_the_source(params):
    auto = params.train.model_copy(update={"lr": "auto", "epochs": "auto", "lr_schedule": "auto"})
    synthetic = auto.resolved("synthetic", 500)
    assert (synthetic.lr, synthetic.epochs, synthetic.lr_schedule) == (0.001, 1000, "constant")
    small = auto.resolved("table", 210)  # 14 steps an epoch: 1000 epochs at most
    assert (small.lr, small.epochs, small.lr_schedule) == (0.01, 1000, "cosine")
    big = auto.resolved("table", 37_753)  # 2360 steps an epoch
    assert big.epochs == -(-TABLE_STEPS // 2360) == 43
    fixed = auto.model_copy(update={"lr": 0.05, "epochs": 7}).resolved("table", 37_753)
    assert (fixed.lr, fixed.epochs, fixed.lr_schedule) == (0.05, 7, "cosine")


def test_a_header_name_with_spaces_is_found_by_predict(tmp_path, raw_params):
    """prepare keeps a name as the header spells it (`b ` from `a,b ,y`); predict finds it
    the same way, so the training table itself can be predicted."""
    rng = np.random.default_rng(0)
    rows = "".join(f"{a:.3f},{b:.3f},{2 * a - b:.3f}\n" for a, b in rng.normal(size=(60, 2)))
    _, record, model, _ = fitted(tmp_path, raw_params, "a, b ,y\n" + rows, epochs=1)
    assert record["features"] == ["a", " b "]
    predict_run(model, tmp_path / "t.csv", tmp_path / "out.csv")
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "a,b,y,predicted" and len(lines) == 61


@pytest.mark.parametrize("brk", ["\n", "\r\n", "\f", "\u2028", "\x1c"])
def test_a_line_break_in_a_passed_through_cell_keeps_every_row_in_place(run, brk):
    tmp, _, _, model_path, _ = run
    text = f'note,colour,flag,x\n"one{brk}two",red,true,1.0\nplain,blue,false,-2.0\n'
    (tmp / "notes.csv").write_bytes(text.encode())
    predict_run(model_path, tmp / "notes.csv", tmp / "notes.out")
    import csv

    with (tmp / "notes.out").open(newline="", encoding="utf-8") as f:
        out = list(csv.reader(f))
    assert [row[:4] for row in out] == [
        ["note", "colour", "flag", "x"],
        [f"one{brk}two".strip(), "red", "true", "1.0"],
        ["plain", "blue", "false", "-2.0"],
    ]
    # each row's own prediction: red/true/1.0 is 5000 + 300 + 0 + 200, blue/false/-2 4000 - 500
    assert abs(float(out[1][4]) - 5500) < 60 and abs(float(out[2][4]) - 3900) < 60


def test_a_tracked_table_that_is_not_here_says_to_pull_it(tmp_path, monkeypatch, raw_params):
    from torchreg.data.table import Table

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv.dvc").write_text("outs:\n- md5: 0123\n  path: t.csv\n")
    raw_params["data"]["table"].update({"path": "t.csv", "target": "y"})
    with pytest.raises(DataError, match=r"tracked by DVC \(t.csv.dvc\).*`dvc pull t.csv`"):
        Table(parse_params(raw_params).data.table)


def test_the_exact_lad_fit_of_fewer_rows_than_columns_is_the_minimum_norm_one():
    """Every fit through the rows is exact; the one kept has no part the rows cannot see,
    so it predicts new rows as the minimum-norm least-squares fit does."""
    from torchreg.evaluation import exact_lad

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(6, 10)).astype(np.float32)  # 9 features and y: 10 columns with 1s
    wb = exact_lad(rows).numpy()
    design = np.c_[rows[:, :-1].astype(np.float64), np.ones(6)]
    assert np.abs(design @ wb - rows[:, -1]).max() < 1e-5  # through every row
    least = np.linalg.lstsq(design, rows[:, -1].astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(wb, least, atol=1e-6)


def test_plot_feature_counts_the_numeric_features(tmp_path, raw_params):
    """With categories, plot.feature is the n-th numeric feature (x here, the 2nd after flag),
    in validate and in plot alike, never a one-hot input."""
    validate, plot = load_stage("validate"), load_stage("plot")
    tmp = tmp_path
    raw_params["plot"]["feature"] = 1
    out, record, _, _ = fitted(tmp, raw_params, table(), epochs=2)
    (tmp / "params.yaml").write_text(json.dumps(raw_params))
    (tmp / "environment.yaml").write_text((ROOT / "environment.yaml").read_text())
    validate.run(tmp / "params.yaml", tmp / "ok")
    written = plot.run(
        parse_params(raw_params),
        {
            "loss": tmp / "live/plots/metrics/train_loss.tsv",
            "features": tmp / "features.json",
            "predictions": tmp / "predictions.out",
            "curves": tmp / "curves.out",
            "metrics": tmp / "metrics.out",
        },
        tmp / "plots",
    )
    assert len(written) == 4
    raw_params["plot"]["feature"] = 2  # colour is not a numeric feature: only flag and x are
    (tmp / "params.yaml").write_text(json.dumps(raw_params))
    with pytest.raises(Exception, match=r"is not a numeric feature .* flag, x\)"):
        validate.run(tmp / "params.yaml", tmp / "ok")


def test_a_category_as_a_number_is_the_same_from_csv_and_parquet(tmp_path, raw_params):
    """A column of numbers named in data.table.categorical: 1, 1.0 and 01 are one category
    (`1`), from a CSV or a Parquet file alike, and predict reads `1.0` as it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    codes = rng.choice([1.0, 2.0, 3.5], 300)
    x = np.round(rng.normal(size=300), 3)
    y = np.round(10 * x + codes * 3 + rng.normal(size=300) * 0.1, 3)
    cells = {1.0: ["1", "1.0", "01"], 2.0: ["2"], 3.5: ["3.5"]}
    rows = enumerate(zip(codes, x, y, strict=True))
    lines = [f"{cells[c][i % len(cells[c])]},{a},{b}" for i, (c, a, b) in rows]
    records = {}
    for name, write in (
        ("c", lambda p: p.write_text("code,x,y\n" + "\n".join(lines) + "\n")),
        ("p", lambda p: pq.write_table(pa.table({"code": codes, "x": x, "y": y}), p)),
    ):
        folder = tmp_path / name
        folder.mkdir()
        path = folder / ("t.csv" if name == "c" else "t.parquet")
        write(path)
        raw = json.loads(json.dumps(raw_params))
        raw["data"]["source"] = "table"
        raw["data"]["table"].update({"path": str(path), "target": "y", "categorical": ["code"]})
        out = {s: folder / f"{s}.npy" for s in ("train", "val", "test")}
        prepare.run(parse_params(raw).data, out, folder / "features.json")
        records[name] = (folder / "features.json").read_bytes().replace(b"t.csv", b"t.parquet")
        assert json.loads(records[name])["categories"] == {"code": ["1", "2", "3.5"]}
        assert [(folder / f"{s}.npy").read_bytes() for s in out] == [
            (tmp_path / "c" / f"{s}.npy").read_bytes() for s in out
        ]
    assert records["c"] == records["p"]


def test_predict_reads_missing_cells_and_number_categories_as_prepare_does():
    import pyarrow.csv as pcsv

    from torchreg.predict import MISSING, _category

    assert set(pcsv.ConvertOptions().null_values) == MISSING
    known = {"1": 0, "2": 1, "3.5": 2}
    assert [_category(c, known) for c in ("1.0", "01", " 2 ", "3.50", "NA", "")] == [
        "1",
        "1",
        "2",
        "3.5",
        None,
        None,
    ]
    assert _category("true", {"0": 0, "1": 1}) == "1"
    assert _category("Adelie", {"Adelie": 0}) == "Adelie"


def test_one_category_on_the_training_split_is_named_with_its_column(tmp_path, raw_params):
    rows = "".join(f"a,{i},{2 * i + 1}\n" for i in range(60))
    with pytest.raises(DataError, match=r"column 'cat' has one category on the training split"):
        prepared(tmp_path, raw_params, "cat,x,y\n" + rows, categorical=["cat"])


def test_more_model_inputs_than_allowed_are_refused_before_writing(tmp_path, raw_params):
    from torchreg.config import MAX_FEATURES

    rows = "".join(f"c{i},{i % 7},{i % 5}.5\n" for i in range(2 * MAX_FEATURES))
    with pytest.raises(DataError, match=r"model inputs, over the 4096 allowed \(column 'code'"):
        prepared(tmp_path, raw_params, "code,x,y\n" + rows, categorical=["code"])
    assert not any(p.exists() for p in tmp_path.glob("*.npy"))
