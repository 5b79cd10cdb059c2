import math

import pytest
import yaml

from torchreg.config import MAX_ROWS, load_params, noise_floor_mae, parse_params
from torchreg.errors import ConfigError


def with_change(raw: dict, section: str, key: str, value: object) -> dict:
    raw[section][key] = value
    return raw


def test_repo_params_parse(params):
    assert params.data.true_w == (8.1, 2.0, 2.0, 4.0)
    assert params.train.lr == 0.001 and params.train.batch_size == 16
    assert params.plot.feature == 3


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        ("train", "lr", 0, "train.lr = 0 is not allowed: Input should be greater than 0"),
        ("train", "lr", -1.0, "train.lr = -1.0"),
        ("train", "lr", "fast", "train.lr = 'fast'"),
        ("train", "lr", float("nan"), "train.lr = nan"),
        ("train", "lr", float("inf"), "train.lr = inf"),
        ("train", "batch_size", 0, "train.batch_size = 0"),
        ("train", "batch_size", 2.5, "train.batch_size = 2.5"),
        ("train", "epochs", True, "train.epochs = True"),
        ("train", "loss", "l2", "'mae', 'mse' or 'huber'"),
        ("train", "optimizer", "rmsprop", "'sgd' or 'adam'"),
        ("train", "device", "tpu", "'auto', 'cpu' or 'cuda'"),
        ("data", "n_train", 0, "data.n_train = 0"),
        ("data", "n_train", 10**12, f"less than or equal to {MAX_ROWS}"),
        ("data", "n_test", -5, "data.n_test = -5"),
        ("data", "true_w", [], "data.true_w = []"),
        ("data", "true_w", [1.0, "x"], "data.true_w[1] = 'x'"),
        ("data", "noise_std", -0.1, "data.noise_std = -0.1"),
        ("data", "target", "cubic", "'linear', 'quadratic' or 'sine'"),
        ("model", "activation", "gelu", "'relu', 'sigmoid', 'tanh' or 'none'"),
        ("model", "kind", "cnn", "'linear' or 'mlp'"),
        ("model", "hidden", [16, 0], "model.hidden[1] = 0"),
        ("plot", "feature", 4, "plot.feature = 4 is not a feature: allowed 0..3"),
        ("plot", "feature", -1, "plot.feature = -1"),
    ],
)
def test_bad_values_name_key_value_and_rule(raw_params, section, key, value, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(with_change(raw_params, section, key, value))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_mlp_without_hidden_layers_is_refused(raw_params):
    raw_params["model"].update(kind="mlp", hidden=[])
    with pytest.raises(ConfigError, match="model.hidden is empty"):
        parse_params(raw_params)


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda r: r.update(trian=r.pop("train")), "unknown key 'trian' (allowed: data, model"),
        (lambda r: r["train"].update(learning_rate=0.1), "unknown key 'learning_rate' in train"),
        (lambda r: r.pop("plot"), "plot is missing"),
        (lambda r: r["data"].pop("seed"), "data.seed is missing"),
        (lambda r: r.update(data=[1, 2]), "data = [1, 2]"),
    ],
)
def test_structure_errors(raw_params, mutate, expected):
    mutate(raw_params)
    with pytest.raises(ConfigError) as err:
        parse_params(raw_params)
    assert expected in str(err.value)


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path, raw_params):
    text = yaml.safe_dump(raw_params).replace("lr: 0.001", "lr: 1e-3")
    text = text.replace("n_train: 500", "n_train: 5e2")
    (tmp_path / "params.yaml").write_text(text)
    assert yaml.safe_load(text)["train"]["lr"] == "1e-3"  # the trap this guards against
    params = load_params(tmp_path / "params.yaml")
    assert params.train.lr == 0.001 and params.data.n_train == 500


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(tmp_path / "params.yaml")


def test_config_is_frozen(params):
    with pytest.raises(Exception, match="frozen"):
        params.train.lr = 1.0


def test_noise_floor():
    assert noise_floor_mae(1.0) == pytest.approx(math.sqrt(2 / math.pi))
    assert noise_floor_mae(0.0) == 0.0
