"""The training state round trip: a run stopped after any epoch and resumed from its checkpoint
ends with the same weights and losses, bit for bit, as one that never stopped; a checkpoint of
another run (params, data, code) or a damaged one is ignored, and none is ever unpickled."""

import hashlib
import io
import logging
import pickle

import numpy as np
import pytest
import torch

from support import Payload
from torchreg.checkpoint import Checkpoints
from torchreg.data import make_block
from torchreg.model import build_model
from torchreg.training import fit, seeded

EPOCHS = 6


class Stop(Exception):
    """Stands for the process dying after an epoch (the slow tests kill it for real)."""


def with_changes(params, model=None, **train):
    return params.model_copy(
        update={
            "model": params.model.model_copy(update=model or {}),
            "train": params.train.model_copy(
                update={"epochs": EPOCHS, "checkpoint_every_s": 0, **train}
            ),
        }
    )


@pytest.fixture
def data(params, tmp_path):
    rows = make_block(params.data, "train", 0, 70)  # 70 rows: the last batch is partial
    np.save(tmp_path / "train.npy", rows)
    return torch.from_numpy(rows), tmp_path / "train.npy"


def train(params, rows, checkpoints=None, resume=None, stop_after=None):
    cfg = params.train
    model = build_model(params.model, rows.shape[1] - 1, cfg.init_std, seeded(cfg.seed, "init"))

    def stop(epoch, loss):
        if epoch + 1 == stop_after:
            raise Stop

    history = fit(
        model, rows, cfg, seeded(cfg.seed, "shuffle"), None, [stop], None, checkpoints, resume
    )
    return [p.detach().clone() for p in model.parameters()], history


CASES = {
    "linear-sgd": ({}, {}),  # the hand-written fast path
    "linear-sgd-cosine-swa": ({}, {"lr_schedule": "cosine", "average": "swa"}),
    "linear-sgd-step": ({}, {"lr_schedule": "step", "loss": "huber"}),
    "linear-adam-mse": ({}, {"optimizer": "adam", "loss": "mse", "lr": 0.01}),
    "mlp-sgd-step-swa": ({"kind": "mlp"}, {"lr_schedule": "step", "average": "swa"}),
    "mlp-adam-cosine-swa": (
        {"kind": "mlp"},
        {"optimizer": "adam", "lr": 0.01, "lr_schedule": "cosine", "average": "swa"},
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stop_after", [1, 4])
def test_resumed_run_is_bit_identical(params, data, tmp_path, case, stop_after):
    model, changes = CASES[case]
    params = with_changes(params, model, **changes)
    rows, path = data
    weights, history = train(params, rows)
    checkpoints = Checkpoints(tmp_path / "ckpt", params, path)
    with pytest.raises(Stop):
        train(params, rows, checkpoints, stop_after=stop_after + 1)
    record = Checkpoints(tmp_path / "ckpt", params, path).load()
    assert record["epoch"] == stop_after
    resumed_weights, resumed_history = train(params, rows, resume=record["state"])
    assert resumed_history == history
    for mine, theirs in zip(resumed_weights, weights, strict=True):
        assert torch.equal(mine, theirs)


@pytest.fixture
def saved(params, data, tmp_path):
    """A checkpoint of a run stopped after 2 epochs; returns (params, data path, its path)."""
    params = with_changes(params)
    rows, path = data
    with pytest.raises(Stop):
        train(params, rows, Checkpoints(tmp_path / "ckpt", params, path), stop_after=3)
    return params, path, tmp_path / "ckpt"


def ignored(caplog, checkpoints) -> str:
    with caplog.at_level(logging.INFO, logger="torchreg.checkpoint"):
        assert checkpoints.load() is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"ignoring the checkpoint {checkpoints.path}: ")
    assert line.endswith("; training from scratch")
    return line


def test_same_run_loads(saved):
    params, path, ckpt = saved
    assert Checkpoints(ckpt, params, path).load()["epoch"] == 2
    # The interval says when to save, not what is trained: a checkpoint survives its change.
    other = params.model_copy(
        update={"train": params.train.model_copy(update={"checkpoint_every_s": 30})}
    )
    assert Checkpoints(ckpt, other, path).load()["epoch"] == 2


@pytest.mark.parametrize(
    "model,train,expected",
    [
        ({}, {"lr": 0.002}, "train.lr changed (0.001 -> 0.002)"),
        ({}, {"epochs": 7}, "train.epochs changed (6 -> 7)"),
        ({"kind": "mlp"}, {}, "model.kind changed (linear -> mlp)"),
    ],
)
def test_another_params_checkpoint_is_ignored(caplog, saved, model, train, expected):
    params, path, ckpt = saved
    assert expected in ignored(
        caplog, Checkpoints(ckpt, with_changes(params, model, **train), path)
    )


def test_other_data_is_ignored(caplog, saved):
    params, path, ckpt = saved
    rows = np.load(path)
    rows[3, 0] += 1
    np.save(path, rows)
    assert "the training data changed" in ignored(caplog, Checkpoints(ckpt, params, path))


def test_other_code_is_ignored(caplog, saved, tmp_path):
    params, path, ckpt = saved
    script = tmp_path / "train.py"
    script.write_text("# the stage\n")
    Checkpoints(ckpt, params, path, script).save({"x": torch.zeros(1)}, 2)
    assert Checkpoints(ckpt, params, path, script).load() is not None
    script.write_text("# the stage, edited\n")
    assert "the training code changed" in ignored(caplog, Checkpoints(ckpt, params, path, script))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "directory"])
def test_damaged_checkpoint_is_ignored(caplog, saved, damage):
    params, path, ckpt = saved
    raw = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":
        ckpt.write_bytes(raw[:-100] + bytes([raw[-100] ^ 1]) + raw[-99:])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:
        ckpt.unlink()
        ckpt.mkdir()
    line = ignored(caplog, Checkpoints(ckpt, params, path))
    assert "truncated or corrupt" in line or "cannot be read" in line


def test_a_checkpoint_carrying_code_is_never_run(caplog, saved, tmp_path):
    """A pickle with a valid digest: the digest only guards against damage, weights_only
    against code."""
    params, path, ckpt = saved
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"format": 1, "state": Payload(str(marker))}, buffer, pickle_protocol=2)
    payload = buffer.getvalue()
    ckpt.write_bytes(hashlib.sha256(payload).digest() + payload)
    assert "not a checkpoint file" in ignored(caplog, Checkpoints(ckpt, params, path))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(str(marker))))  # the payload does run when unpickled
    assert marker.exists()


def test_remove_takes_leftovers_too(saved):
    params, path, ckpt = saved
    leftover = ckpt.parent / f".{ckpt.name}.abc.tmp"  # a write killed half-way
    leftover.write_bytes(b"half")
    Checkpoints(ckpt, params, path).remove()
    assert not ckpt.exists() and not leftover.exists()


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"params": [1]},
        {"params": {1: 2}},
        {"params": "real", "data": "real", "code": "real"},  # no epoch, no state
    ],
    ids=["format-only", "params-a-list", "params-keyed-by-int", "no-state"],
)
def test_a_record_with_a_valid_digest_but_missing_parts_is_ignored(caplog, saved, record):
    params, path, ckpt = saved
    real = torch.load(io.BytesIO(ckpt.read_bytes()[32:]), weights_only=True)
    record = {k: real[k] if v == "real" else v for k, v in record.items()}
    buffer = io.BytesIO()
    torch.save({"format": real["format"], **record}, buffer)
    payload = buffer.getvalue()
    ckpt.write_bytes(hashlib.sha256(payload).digest() + payload)
    assert "its record is incomplete" in ignored(caplog, Checkpoints(ckpt, params, path))
