import errno
import hashlib
import io
import json
import os
import pickle

import pytest
import safetensors.torch
import torch

from support import Payload
from torchreg.budget import model_bytes
from torchreg.config import ModelConfig
from torchreg.data import CHUNK_ROWS
from torchreg.errors import ConfigError, DataError
from torchreg.model import (
    TRAIN_HINT,
    LinearRegression,
    build_model,
    load_model,
    read_sealed,
    save_model,
    write_sealed,
)
from torchreg.training import seeded

LINEAR = {"kind": "linear", "hidden": [], "activation": "none"}


def refused(load, path, *args, error=DataError) -> str:
    """The message `load(path, *args)` refuses `path` with, `path` in it shown as PATH."""
    with pytest.raises(error) as caught:
        load(path, *args)
    return str(caught.value).replace(str(path), "PATH")


@pytest.mark.parametrize("kind,hidden", [("linear", ()), ("mlp", (8,)), ("mlp", (16, 4))])
def test_output_shape(params, kind, hidden):
    cfg = params.model.model_copy(update={"kind": kind, "hidden": hidden})
    model = build_model(cfg, 4, 0.01, seeded(0, "init"))
    assert model(torch.zeros(7, 4)).shape == (7,)
    assert model(torch.zeros(4)).shape == ()  # one row without a batch: one prediction


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


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_initialisation_is_seeded(params, kind):
    """Every weight and bias comes from the generator, none from torch's global one."""
    cfg = params.model.model_copy(update={"kind": kind})
    a, b, c = (build_model(cfg, 4, 0.01, seeded(seed, "init")).state_dict() for seed in (0, 0, 1))
    for name in a:
        assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name]), name


def test_mlp_initialisation_is_pytorchs_default(params):
    """Each layer's weights and biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)), nn.Linear's own
    default: 4 inputs give +-1/2, 400 give +-1/20. 400 draws or more come within 10% of both
    ends (each end missed with odds 0.95**400 = 1e-9)."""
    cfg = params.model.model_copy(update={"kind": "mlp", "hidden": (400,)})
    model = build_model(cfg, 4, 0.01, seeded(0, "init"))
    bounds = {"net.0": 1 / 2, "net.2": 1 / 20}  # each Linear layer: its weight and bias
    state = model.state_dict()
    assert state.keys() == {f"{layer}.{p}" for layer in bounds for p in ("weight", "bias")}
    for name, values in state.items():
        bound = bounds[name.rsplit(".", 1)[0]]
        assert values.abs().max() <= bound, name
        if values.numel() >= 400:
            assert values.min() < -0.9 * bound and values.max() > 0.9 * bound, name


def test_an_init_std_beyond_float32_is_refused_in_one_line():
    with pytest.raises(ConfigError) as caught:
        build_model(ModelConfig.model_validate(LINEAR), 4, 1e39, seeded(0, "init"))
    assert str(caught.value) == (
        "train.init_std = 1e+39 gives non-finite initial weights in float32 (beyond +-3.4e38): "
        "use a smaller train.init_std"
    )


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


def test_the_file_format_is_fixed(tmp_path):
    """A model file's bytes follow from its weights and config alone: the metadata's keys
    sorted, the digest made the one way read_sealed checks it. Another layout or digest would
    change every model's hash in dvc.lock and call every file already written damaged."""
    model = LinearRegression(4)
    with torch.no_grad():
        model.w.copy_(torch.tensor([1.0, -2.0, 0.5, 0.25]))
        model.b.fill_(3.0)
    save_model(tmp_path / "m.safetensors", model, ModelConfig.model_validate(LINEAR), 4)
    with safetensors.safe_open(tmp_path / "m.safetensors", "pt") as f:
        assert f.metadata() == {
            "torchreg": '{"config": {"activation": "none", "hidden": [], "kind": "linear"}, '
            '"format": 3, "n_features": 4, '
            '"sha256": "07d9a3dcdc91eac9cf31db09d84213e332034b9aa013e50a61d588c3a2e3064f"}'
        }
    data = (tmp_path / "m.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == (
        "5957dfe27ebce2f1af7f5021284e58013f803894028a3661f7e904d2024494a5"
    )


def test_one_feature_is_enough(tmp_path, params):
    model = build_model(params.model, 1, 0.5, seeded(0, "init"))
    save_model(tmp_path / "m.safetensors", model, params.model, 1)
    loaded, _, n_features = load_model(tmp_path / "m.safetensors")
    assert n_features == 1 and torch.equal(loaded.w, model.w)


def test_loading_draws_nothing_from_torchs_global_generator(model_file):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_model(model_file)
    assert torch.equal(torch.rand(3), expected)


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


NOT_OURS = "not a model file written by this pipeline (no 'torchreg' metadata)"


def bad_n(shown: str) -> str:
    return f"PATH: not a valid model file (n_features = {shown} is not a positive integer)"


def header_of(length: int, text: bytes) -> bytes:
    """A file that starts as safetensors does: the header's length in 8 bytes, then `text`."""
    return length.to_bytes(8, "little") + text


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "a header of 0 bytes in a file of 0"),
        (bytes(7), "a header of 0 bytes in a file of 7"),
        (bytes(8), "Expecting value: line 1 column 1 (char 0)"),
        (b"not a model", "a header of 8,029,109,312,199,880,558 bytes in a file of 11"),
        (bytes(range(256)), "a header of 506,097,522,914,230,528 bytes in a file of 256"),
        (header_of(9, b"{}      "), "a header of 9 bytes in a file of 16"),
        # fills the file: read, and has no metadata
        (header_of(8, b"{}      "), f"PATH: {NOT_OURS}"),
        (header_of(10**5, b"[" * 10**5), "its header is nested too deeply"),
        (header_of(8, b'{"w": 1}'), "'int' object is not subscriptable"),
    ],
    ids=[
        "empty",
        "7-bytes",
        "8-bytes",
        "text",
        "bytes",
        "header-past-the-end",
        "header-to-the-end",
        "nested-header",
        "table-of-numbers",
    ],
)
def test_bad_model_files(tmp_path, content, reason):
    (tmp_path / "m.safetensors").write_bytes(content)
    expected = reason if reason.startswith("PATH: ") else f"PATH: not a valid model file ({reason})"
    assert refused(load_model, tmp_path / "m.safetensors") == expected


@pytest.mark.parametrize(
    "hint,advice",
    [(TRAIN_HINT, ": run the train stage first (dvc repro train)"), (None, "")],
    ids=["train-stage", "none"],
)
def test_missing_model_says_what_to_do(tmp_path, hint, advice):
    assert refused(load_model, tmp_path / "m.safetensors", hint) == f"PATH not found{advice}"


def test_a_read_error_is_one_line(model_file, monkeypatch):
    """A disk that fails once the header is read (EIO) gives one line naming the file."""

    class FailingDisk(io.BufferedReader):
        def read(self, size=-1):
            if size < 0:  # the whole file
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return super().read(size)

    monkeypatch.setattr("torchreg.model.open_input", lambda path: FailingDisk(io.FileIO(path)))
    assert refused(load_model, model_file) == "PATH: cannot be read (Input/output error)"


@pytest.mark.parametrize(
    "error,reason",
    [
        (MemoryError(), "MemoryError"),
        (ValueError(" bad: " + "x" * 300 + "\nmore"), "bad: " + "x" * 195),
    ],
    ids=["no-message", "long-message"],
)
def test_an_unexpected_error_is_one_short_line(model_file, monkeypatch, error, reason):
    """Its message's first line, cut to 200 characters, or its type when it has no message."""

    def load(data):
        raise error

    monkeypatch.setattr(safetensors.torch, "load", load)
    assert refused(load_model, model_file) == f"PATH: not a valid model file ({reason})"


def test_a_file_is_read_only_if_memory_holds_it_twice(model_file, monkeypatch):
    size = model_file.stat().st_size
    monkeypatch.setattr("torchreg.budget.available_bytes", lambda: 2 * size)
    read_sealed(model_file)
    monkeypatch.setattr("torchreg.budget.available_bytes", lambda: 2 * size - 1)
    assert refused(read_sealed, model_file, error=ConfigError) == (
        "the model file PATH needs about 0 MiB of memory but 0 MiB is available: "
        "this machine cannot use it"
    )


def test_a_model_is_built_only_if_memory_holds_it_twice(tmp_path, params, monkeypatch):
    """Twice its weights and one chunk's activations (the budget module's estimate)."""
    cfg = params.model.model_copy(update={"kind": "mlp", "hidden": (8,)})
    save_model(tmp_path / "m.safetensors", build_model(cfg, 4, 0.0, seeded(0, "init")), cfg, 4)
    needed = 2 * model_bytes(cfg, 4, CHUNK_ROWS)
    monkeypatch.setattr("torchreg.budget.available_bytes", lambda: needed)
    load_model(tmp_path / "m.safetensors")
    monkeypatch.setattr("torchreg.budget.available_bytes", lambda: needed - 1)
    assert refused(load_model, tmp_path / "m.safetensors", error=ConfigError) == (
        "the model in PATH (model.hidden = [8]) needs about 13 MiB of memory but 13 MiB is "
        "available: this machine cannot use it"
    )


def _write(path, tensors, header):
    """A model file with `header`, sealed as the train stage seals it (None: no metadata)."""
    if header is None:
        path.write_bytes(safetensors.torch.save(tensors))
    else:
        write_sealed(path, tensors, header)


WB = {"w": torch.zeros(4), "b": torch.zeros(())}  # a linear model's tensors, 4 features
NEEDS = "the config needs b [], w [4] of float32)"


def linear(n_features=4, **changes):
    return {"format": 3, "config": {**LINEAR, **changes}, "n_features": n_features}


@pytest.mark.parametrize(
    "tensors,header,message",
    [
        (WB, None, f"PATH: {NOT_OURS}"),
        (WB, {"format": 1}, "PATH: not a model file written by the train stage"),
        ({}, linear(), f"PATH: model file is inconsistent (tensors none, {NEEDS}"),
        (
            {"w": torch.zeros(3), "b": torch.zeros(())},
            linear(),
            f"PATH: model file is inconsistent (tensors b [], w [3] of float32, {NEEDS}",
        ),
        (
            {"w": torch.zeros(4), "b": torch.zeros((), dtype=torch.int64)},
            linear(),
            f"PATH: model file is inconsistent (tensors b [], w [4] of float32, int64, {NEEDS}",
        ),
        (
            {"x" * 196: torch.zeros(1)},
            linear(),
            f"PATH: model file is inconsistent (tensors {'x' * 196} [1] of float32, {NEEDS}",
        ),
        (
            {"x" * 197: torch.zeros(1)},
            linear(),
            f"PATH: model file is inconsistent (tensors {'x' * 197} [1... of float32, {NEEDS}",
        ),
        (
            WB,
            linear(kind="cnn"),
            "PATH: not a valid model file (1 validation error for ModelConfig)",
        ),
        (
            WB,
            linear("4"),
            bad_n("4"),
        ),
        (
            WB,
            linear(3e9),
            bad_n("3000000000.0"),
        ),
        (WB, linear(0), bad_n("0")),
        (
            WB,
            linear(True),
            bad_n("True"),
        ),
        (
            WB,
            linear("7" * 50),
            bad_n("7" * 40),
        ),
    ],
)
def test_inconsistent_model_file_is_refused_before_building(tmp_path, tensors, header, message):
    _write(tmp_path / "m.safetensors", tensors, header)
    assert refused(load_model, tmp_path / "m.safetensors") == message


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


DAMAGED = "PATH: damaged (its content does not match the sha256 it carries)"


@pytest.mark.parametrize("where", ["first", "last"])
def test_one_flipped_bit_in_the_weights_is_found(model_file, where):
    data = model_file.read_bytes()
    first = 8 + int.from_bytes(data[:8], "little")  # the tensors' bytes follow the JSON header
    edited(model_file, flip=first if where == "first" else len(data) - 1)
    assert refused(load_model, model_file) == f"{DAMAGED}: rebuild it (dvc repro train)"


@pytest.mark.parametrize(
    "hint,advice",
    [(None, ""), ("make it (step one (the slow one))", ": rebuild it (step one (the slow one))")],
    ids=["none", "nested-parentheses"],
)
def test_a_damaged_file_says_how_to_rebuild_it(model_file, hint, advice):
    """The advice is the missing file's hint from its first parenthesis on."""
    assert refused(load_model, edited(model_file, flip=-1), hint) == DAMAGED + advice
    # A hint with no command in parentheses gives no advice for a damaged file.
    assert refused(load_model, model_file, "ask the team") == DAMAGED


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
    # No tensors at all: the header runs to the end of the file.
    write_sealed(tmp_path / "e.safetensors", {}, {"kind": "empty"})
    assert read_sealed(tmp_path / "e.safetensors", "checkpoint") == ({}, {"kind": "empty"})
    edited(tmp_path / "c.safetensors", flip=-1)
    with pytest.raises(DataError, match="c.safetensors: damaged"):
        read_sealed(tmp_path / "c.safetensors", "checkpoint")


def test_metadata_nested_too_deeply_is_refused(tmp_path):
    metadata = {"torchreg": "[" * 10**5}
    tensors = safetensors.torch.save({"w": torch.zeros(4)}, metadata=metadata)
    (tmp_path / "m.safetensors").write_bytes(tensors)
    assert refused(load_model, tmp_path / "m.safetensors") == (
        "PATH: not a valid model file (its header is nested too deeply)"
    )


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
