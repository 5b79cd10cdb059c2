import json
import pickle
import re

import pytest
import safetensors.torch
import torch

from support import Payload
from torchreg.errors import DataError
from torchreg.model import (
    LinearRegression,
    build_model,
    load_model,
    read_sealed,
    save_model,
    write_sealed,
)
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
    """A model file with `header`, sealed as the train stage seals it (None: no metadata)."""
    if header is None:
        path.write_bytes(safetensors.torch.save(tensors))
    else:
        write_sealed(path, tensors, header)


LINEAR = {"kind": "linear", "hidden": [], "activation": "none"}


@pytest.mark.parametrize(
    "tensors,header,message",
    [
        ({"w": torch.zeros(4), "b": torch.zeros(())}, None, "not a valid model file"),
        ({"w": torch.zeros(4), "b": torch.zeros(())}, {"format": 1}, "not a model file written"),
        ({}, {"format": 3, "config": LINEAR, "n_features": 4}, "inconsistent"),
        (
            {"w": torch.zeros(3), "b": torch.zeros(())},
            {"format": 3, "config": LINEAR, "n_features": 4},
            "inconsistent",
        ),
        (
            {"w": torch.zeros(4), "b": torch.zeros(())},
            {"format": 3, "config": {**LINEAR, "kind": "cnn"}, "n_features": 4},
            "not a valid model file",
        ),
        (
            {"w": torch.zeros(4), "b": torch.zeros(())},
            {"format": 3, "config": LINEAR, "n_features": "4"},
            "not a positive integer",
        ),
        (
            {"w": torch.zeros(4), "b": torch.zeros(())},
            {"format": 3, "config": LINEAR, "n_features": 3e9},
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
        "format": 3,
        "config": {"kind": "mlp", "hidden": [65536, 65536], "activation": "relu"},
        "n_features": 4,
    }
    _write(tmp_path / "m.safetensors", {"w": torch.zeros(4)}, header)
    with pytest.raises(DataError, match="inconsistent"):
        load_model(tmp_path / "m.safetensors")


# --- a model file proves it is the one the train stage wrote, or is refused ---------------------


@pytest.fixture
def model_file(tmp_path, params):
    model = build_model(params.model, 4, 0.5, seeded(0, "init"))
    save_model(tmp_path / "m.safetensors", model, params.model, 4)
    return tmp_path / "m.safetensors"


def edited(path, old: bytes = b"", new: bytes = b"", flip: int | None = None):
    data = bytearray(path.read_bytes())
    if flip is None:
        assert len(old) == len(new) and data.count(old) == 1, data[:300]
        data = data.replace(old, new)
    else:
        data[flip] ^= 0x01
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("flip", [-1, -9], ids=["last-weight-byte", "first-weight-byte"])
def test_one_flipped_bit_in_a_weight_is_found(model_file, flip):
    line = "m.safetensors: damaged (its content does not match the sha256 it carries)"
    with pytest.raises(DataError, match=re.escape(line)):
        load_model(edited(model_file, flip=flip))


def test_a_dtype_changed_in_the_header_is_found(model_file):
    """F32 -> I32 keeps every byte of the weights: only the digest of the table sees it."""
    data = model_file.read_bytes()
    assert data.count(b'"F32"') == 2
    model_file.write_bytes(data.replace(b'"F32"', b'"I32"', 1))
    with pytest.raises(DataError, match="damaged"):
        load_model(model_file)


def test_a_config_changed_in_the_metadata_is_found(model_file):
    with pytest.raises(DataError, match="damaged"):
        load_model(edited(model_file, b"linear", b"Linear"))


def test_a_file_without_a_digest_is_refused(tmp_path, params):
    header = {"format": 3, "config": LINEAR, "n_features": 4}
    metadata = {"torchreg": json.dumps(header)}
    tensors = {"w": torch.zeros(4), "b": torch.zeros(())}
    (tmp_path / "m.safetensors").write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    with pytest.raises(DataError, match="not a model file written by this version"):
        load_model(tmp_path / "m.safetensors")


def sealed_anyway(path, tensors, header):
    """A sealed file holding what write_sealed refuses to write (its own check bypassed)."""
    from torchreg import model as model_module

    unsealed = safetensors.torch.save(tensors, metadata=model_module._metadata(header))
    table, payload = model_module._split(unsealed)
    header = {**header, "sha256": model_module._digest(table, header, payload)}
    metadata = model_module._metadata(header)
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_never_written_nor_read(tmp_path, params, bad):
    tensors = {"w": torch.tensor([1.0, bad, 0.0, 0.0]), "b": torch.zeros(())}
    header = {"format": 3, "config": LINEAR, "n_features": 4}
    with pytest.raises(DataError, match="cannot write .*: w holds a NaN or infinite value"):
        write_sealed(tmp_path / "m.safetensors", tensors, header)
    assert not (tmp_path / "m.safetensors").exists()
    sealed_anyway(tmp_path / "m.safetensors", tensors, header)
    with pytest.raises(DataError, match="m.safetensors: w holds a NaN or infinite value"):
        load_model(tmp_path / "m.safetensors")


def test_a_sealed_file_of_any_tensors_round_trips(tmp_path):
    """write_sealed/read_sealed are for any file of tensors (a checkpoint too): ints included."""
    tensors = {"step": torch.tensor(7, dtype=torch.int64), "m": torch.ones(3, 2)}
    write_sealed(tmp_path / "c.safetensors", tensors, {"kind": "checkpoint"})
    state, header = read_sealed(tmp_path / "c.safetensors", "checkpoint")
    assert header == {"kind": "checkpoint"}
    assert state["step"].item() == 7 and torch.equal(state["m"], torch.ones(3, 2))
    edited(tmp_path / "c.safetensors", flip=-1)
    with pytest.raises(DataError, match="c.safetensors: damaged"):
        read_sealed(tmp_path / "c.safetensors", "checkpoint")


def test_a_huge_header_length_is_refused_unread(tmp_path):
    (tmp_path / "m.safetensors").write_bytes((10**15).to_bytes(8, "little") + b"{}")
    with pytest.raises(DataError, match="not a valid model file"):
        load_model(tmp_path / "m.safetensors")


def test_a_file_longer_than_its_header_says_is_refused_unread(model_file):
    """Only the header is read: a model file padded to 300 MB costs no 300 MB."""
    size = model_file.stat().st_size
    with model_file.open("r+b") as f:
        f.truncate(size + 300 * 2**20)  # sparse: no disk used
    message = f"its header describes {size:,} bytes, the file has {size + 300 * 2**20:,}"
    with pytest.raises(DataError, match=message):
        load_model(model_file)
