import pytest
import torch

from torchreg.errors import DataError
from torchreg.model import build_model, save_model
from torchreg.predict import run
from torchreg.training import seeded


@pytest.fixture
def model_file(tmp_path, params):
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    with torch.no_grad():
        model.w.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        model.b.fill_(0.5)
    save_model(tmp_path / "m.pt", model, params.model, 4)
    return tmp_path / "m.pt"


@pytest.mark.parametrize("text", ["x0,x1,x2,x3\n1,0,0,0\n0,0,0,1\n", "1,0,0,0\n0,0,0,1\n"])
def test_predicts_with_or_without_header(tmp_path, model_file, text):
    (tmp_path / "rows.csv").write_text(text)
    out = tmp_path / "out.csv"
    assert run(model_file, tmp_path / "rows.csv", out) == 2
    lines = out.read_text().splitlines()
    predicted = [float(line.rsplit(",", 1)[1]) for line in lines[1:]]
    assert predicted == [1.5, 4.5]
    assert lines[0].endswith(",predicted") and lines[1].endswith(",1.5")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", "no rows to predict"),
        ("x0,x1,x2,x3\n", "no rows to predict"),
        ("1,2,3\n", "row 1 has 3 columns, the model expects 4"),
        ("a,b\n1,2\n", "header has 2 columns but the model expects 4"),
        ("1,2,3,4\n1,2,x,4\n", "row 2 is not all numbers"),
        ("1,2,3,nan\n", "row 1 has a NaN or infinite value"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, model_file, text, expected):
    (tmp_path / "rows.csv").write_text(text)
    with pytest.raises(DataError, match=expected):
        run(model_file, tmp_path / "rows.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_missing_input(tmp_path, model_file):
    with pytest.raises(DataError, match="not found"):
        run(model_file, tmp_path / "none.csv", None)
