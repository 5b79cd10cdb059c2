import json
import pickle

import pytest
import safetensors.torch
import torch

from support import Payload
from torchreg.errors import DataError
from torchreg.model import LinearRegression, build_model, load_model, save_model
from torchreg.training import seeded


@pytest.mark.parametrize("kind,hidden", [("linear", ()), ("mlp", (8,)), ("mlp", (16, 4))])
def test_output_shape(params, kind, hidden):
    cfg = params.model.model_copy(update={"kind": kind, "hidden": hidden})
    model = build_model(cfg, 4, 0.01, seeded(0, "init"))
    assert model(torch.zeros(7, 4)).shape == (7,)


def test_linear_model_is_x_at_w_plus_b(params):
    model = build_model(params.model, 4, 0.01, seeded(0, "init"))
    assert isinstance(model, LinearRegression)
    x = torch.randn(5, 4)
    assert torch.allclose(model(x), x @ model.w + model.b)


def test_stacked_linear_layers_collapse_to_one_linear_map(params):
    """The tutorial's lesson: without an activation, depth adds nothing."""
    cfg = params.model.model_copy(update={"kind": "mlp", "hidden": (16, 16), "activation": "none"})
    model = build_model(cfg, 4, 0.01, seeded(0, "init"))
    x = torch.randn(64, 4)
    w = torch.linalg.multi_dot([layer.weight for layer in reversed(model.net[::2])]).squeeze(0)
    with torch.no_grad():
        b = model(torch.zeros(1, 4))
        assert torch.allclose(model(x), x @ w + b, atol=1e-5)


def test_initialisation_is_seeded(params):
    a = build_model(params.model, 4, 0.01, seeded(0, "init"))
    b = build_model(params.model, 4, 0.01, seeded(0, "init"))
    c = build_model(params.model, 4, 0.01, seeded(1, "init"))
    assert torch.equal(a.w, b.w) and not torch.equal(a.w, c.w)


@pytest.mark.parametrize("init_std", [0.01, 0.5])
def test_linear_initialisation_is_normal_with_init_std(params, init_std):
    """10,000 draws: the sample std is within 3% of init_std (its own spread is 0.7%)."""
    model = build_model(params.model, 10_000, init_std, seeded(0, "init"))
    assert model.w.std().item() == pytest.approx(init_std, rel=0.03)
    assert abs(model.w.mean().item()) < 4 * init_std / 100


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_round_trip_is_byte_stable(tmp_path, params, kind):
    cfg = params.model.model_copy(update={"kind": kind})
    model = build_model(cfg, 4, 0.01, seeded(0, "init"))
    save_model(tmp_path / "m.safetensors", model, cfg, 4)
    save_model(tmp_path / "other-name.safetensors", model, cfg, 4)
    assert (tmp_path / "m.safetensors").read_bytes() == (
        tmp_path / "other-name.safetensors"
    ).read_bytes()
    loaded, loaded_cfg, n = load_model(tmp_path / "m.safetensors")
    assert loaded_cfg == cfg and n == 4
    x = torch.randn(10, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_pickle_with_code_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Payload(str(marker))}, f)
    torch.save({"x": Payload(str(marker))}, tmp_path / "evil_zip.pt")
    assert not marker.exists()
    for name in ("evil.pt", "evil_zip.pt"):
        with pytest.raises(DataError, match=f"{name}: not a valid model file"):
            load_model(tmp_path / name)
    assert not marker.exists()
    # The same files do run code under a plain unpickler: the payload is real.
    pickle.loads((tmp_path / "evil.pt").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "content", [b"", b"not a model", bytes(range(256)), b"\x08" + bytes(7) + b"{}      "]
)
def test_bad_model_files(tmp_path, content):
    (tmp_path / "m.safetensors").write_bytes(content)
    with pytest.raises(DataError, match="m.safetensors: not a valid model file"):
        load_model(tmp_path / "m.safetensors")


def test_missing_model_says_which_stage(tmp_path):
    with pytest.raises(DataError, match="run the train stage first"):
        load_model(tmp_path / "m.safetensors")


def _write(path, tensors, header):
    metadata = {"torchreg": json.dumps(header)} if header is not None else None
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))


LINEAR = {"kind": "linear", "hidden": [], "activation": "none"}


@pytest.mark.parametrize(
    "tensors,header,message",
    [
        ({"w": torch.zeros(4), "b": torch.zeros(())}, None, "not a valid model file"),
        ({"w": torch.zeros(4), "b": torch.zeros(())}, {"format": 1}, "not a model file written"),
        ({}, {"format": 2, "config": LINEAR, "n_features": 4}, "inconsistent"),
        (
            {"w": torch.zeros(3), "b": torch.zeros(())},
            {"format": 2, "config": LINEAR, "n_features": 4},
            "inconsistent",
        ),
        (
            {"w": torch.zeros(4), "b": torch.zeros(())},
            {"format": 2, "config": {**LINEAR, "kind": "cnn"}, "n_features": 4},
            "not a valid model file",
        ),
        (
            {"w": torch.zeros(4), "b": torch.zeros(())},
            {"format": 2, "config": LINEAR, "n_features": "4"},
            "not a positive integer",
        ),
        (
            {"w": torch.zeros(4), "b": torch.zeros(())},
            {"format": 2, "config": LINEAR, "n_features": 3e9},
            "not a positive integer",
        ),
    ],
)
def test_inconsistent_model_file_is_refused_before_building(tmp_path, tensors, header, message):
    _write(tmp_path / "m.safetensors", tensors, header)
    with pytest.raises(DataError, match=message):
        load_model(tmp_path / "m.safetensors")


def test_huge_network_in_a_small_file_is_refused_before_building(tmp_path):
    """The config asks for billions of weights; the file holds a few: nothing is allocated."""
    header = {
        "format": 2,
        "config": {"kind": "mlp", "hidden": [65536, 65536], "activation": "relu"},
        "n_features": 4,
    }
    _write(tmp_path / "m.safetensors", {"w": torch.zeros(4)}, header)
    with pytest.raises(DataError, match="inconsistent"):
        load_model(tmp_path / "m.safetensors")
