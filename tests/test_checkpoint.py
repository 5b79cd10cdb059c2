"""The training state round trip: a run stopped after any epoch and resumed from its checkpoint
ends with the same weights and losses, bit for bit, as one that never stopped; a checkpoint of
another run (any input dvc.yaml lists for the train stage: a param, an environment key, a code
or data file) or a damaged one is ignored, and none is ever unpickled."""

import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from support import ROOT, Payload
from torchreg.checkpoint import Checkpoints, RunKey, read_stage
from torchreg.config import parse_params, read_params_file
from torchreg.data import DataFile, make_block
from torchreg.environment import found
from torchreg.errors import UserError
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


def key(params, data_path, script=None, stage_file="data/train.npy"):
    """The train stage's key as dvc.yaml lists it, its data read from `data_path`."""
    given = {"data/train.npy": data_path}
    if script is not None:
        given["stages/train.py"] = script
    return RunKey.of_stage("train", params, ROOT / "dvc.yaml", given)


def checkpoints(path, params, data_path, script=None):
    return Checkpoints(path, key(params, data_path, script))


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
    saving = checkpoints(tmp_path / "ckpt", params, path)
    with pytest.raises(Stop):
        train(params, rows, saving, stop_after=stop_after + 1)
    record = checkpoints(tmp_path / "ckpt", params, path).load()
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
        train(params, rows, checkpoints(tmp_path / "ckpt", params, path), stop_after=3)
    return params, path, tmp_path / "ckpt"


def ignored(caplog, loader) -> str:
    with caplog.at_level(logging.INFO, logger="torchreg.checkpoint"):
        assert loader.load() is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"ignoring the checkpoint {loader.path}: ")
    assert line.endswith("; training from scratch")
    return line


def test_same_run_loads(saved):
    params, path, ckpt = saved
    assert checkpoints(ckpt, params, path).load()["epoch"] == 2
    # The interval says when to save, not what is trained: a checkpoint survives its change.
    other = params.model_copy(
        update={"train": params.train.model_copy(update={"checkpoint_every_s": 30})}
    )
    assert checkpoints(ckpt, other, path).load()["epoch"] == 2


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
        caplog, checkpoints(ckpt, with_changes(params, model, **train), path)
    )


def test_other_data_is_ignored(caplog, saved):
    params, path, ckpt = saved
    rows = np.load(path)
    rows[3, 0] += 1
    np.save(path, rows)
    line = ignored(caplog, checkpoints(ckpt, params, path))
    assert f"data/train.npy changed (read from {path})" in line


def test_other_code_is_ignored(caplog, saved, tmp_path):
    params, path, ckpt = saved
    script = tmp_path / "train.py"
    script.write_text("# the stage\n")
    checkpoints(ckpt, params, path, script).save({"x": torch.zeros(1)}, 2)
    assert checkpoints(ckpt, params, path, script).load() is not None
    script.write_text("# the stage, edited\n")
    line = ignored(caplog, checkpoints(ckpt, params, path, script))
    assert f"stages/train.py changed (read from {script})" in line


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
    line = ignored(caplog, checkpoints(ckpt, params, path))
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
    assert "not a checkpoint file" in ignored(caplog, checkpoints(ckpt, params, path))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(str(marker))))  # the payload does run when unpickled
    assert marker.exists()


def test_remove_takes_leftovers_too(saved):
    params, path, ckpt = saved
    leftover = ckpt.parent / f".{ckpt.name}.abc.tmp"  # a write killed half-way
    leftover.write_bytes(b"half")
    checkpoints(ckpt, params, path).remove()
    assert not ckpt.exists() and not leftover.exists()


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"key": [1]},
        {"key": {"params": {}, "files": []}},
        {"key": "real"},  # no epoch, no state
    ],
    ids=["format-only", "key-a-list", "files-a-list", "no-state"],
)
def test_a_record_with_a_valid_digest_but_missing_parts_is_ignored(caplog, saved, record):
    params, path, ckpt = saved
    real = torch.load(io.BytesIO(ckpt.read_bytes()[32:]), weights_only=True)
    record = {k: real[k] if v == "real" else v for k, v in record.items()}
    buffer = io.BytesIO()
    torch.save({"format": real["format"], **record}, buffer)
    payload = buffer.getvalue()
    ckpt.write_bytes(hashlib.sha256(payload).digest() + payload)
    assert "its record is incomplete" in ignored(caplog, checkpoints(ckpt, params, path))


# What dvc.yaml lists for the train stage, read here without RunKey: each input, changed
# alone, must make a saved checkpoint be ignored with a line that names it.
TRAIN = read_stage(ROOT / "dvc.yaml", "train")
PARAM_ENTRIES = [e for e in TRAIN["params"] if isinstance(e, str)]
ENVIRONMENT_KEYS = [
    f"{file}:{k}"
    for e in TRAIN["params"]
    if isinstance(e, dict)
    for file, ks in e.items()
    for k in ks
]
DEPS = [d for d in TRAIN["deps"] if isinstance(d, str)]


def param_leaves(params):
    dumped = params.model_dump()
    leaves = []
    for entry in PARAM_ENTRIES:
        section, *field = entry.split(".")
        names = field or list(dumped[section])
        leaves += [f"{section}.{name}" for name in names]
    return leaves


def with_leaf_changed(params, leaf):
    section, name = leaf.split(".")
    old = getattr(getattr(params, section), name)
    info = type(getattr(params, section)).model_fields[name]
    allowed = getattr(info.annotation, "__args__", ())
    if isinstance(old, str):
        new = next(v for v in allowed if v != old)  # another value of its Literal
    elif isinstance(old, tuple):
        new = (*old, 7)
    else:
        new = old + 1
    part = getattr(params, section).model_copy(update={name: new})
    return params.model_copy(update={section: part})


def test_the_key_holds_every_input_dvc_yaml_lists(params, data):
    _, path = data
    run_key = key(params, path)
    assert set(run_key.files) == set(DEPS)
    assert {k for k in run_key.values if ":" in k} == set(ENVIRONMENT_KEYS)
    assert {k for k in run_key.values if ":" not in k} == set(param_leaves(params)) - {
        "train.checkpoint_every_s"
    }
    assert "compute.cpu" in run_key.values and "environment.yaml:cpu" in run_key.values


@pytest.fixture
def saved_state(params, data, tmp_path):
    _, path = data
    ckpt = tmp_path / "ckpt"
    Checkpoints(ckpt, key(params, path)).save({"x": torch.zeros(1)}, 2)
    assert Checkpoints(ckpt, key(params, path)).load()["epoch"] == 2
    return ckpt, path


@pytest.mark.parametrize("leaf", param_leaves(parse_params(read_params_file(ROOT / "params.yaml"))))
def test_each_param_changed_alone_is_named(caplog, params, saved_state, leaf):
    ckpt, path = saved_state
    other = Checkpoints(ckpt, key(with_leaf_changed(params, leaf), path))
    if leaf == "train.checkpoint_every_s":  # when to save, not what is trained
        assert other.load()["epoch"] == 2
        return
    assert f": {leaf} changed (" in ignored(caplog, other)


@pytest.mark.parametrize("name", ENVIRONMENT_KEYS)
def test_each_environment_key_changed_alone_is_named(
    caplog, monkeypatch, params, saved_state, name
):
    ckpt, path = saved_state
    here = found()
    k = name.split(":")[1]
    monkeypatch.setattr("torchreg.checkpoint.found", lambda: {**here, k: f"{here[k]}-other"})
    assert f": {name} changed (" in ignored(caplog, Checkpoints(ckpt, key(params, path)))


@pytest.mark.parametrize("dep", DEPS)
def test_each_dep_changed_alone_is_named(caplog, params, tmp_path, dep):
    root = tmp_path / "repo"
    for name in ["dvc.yaml", *DEPS]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        source = ROOT / name
        if source.exists():
            shutil.copyfile(source, root / name)
        else:  # an output of another stage: stands in with any bytes
            (root / name).write_bytes(b"stand-in")
    ckpt = tmp_path / "ckpt"
    Checkpoints(ckpt, RunKey.of_stage("train", params, root / "dvc.yaml")).save({"x": 1}, 2)
    with (root / dep).open("ab") as f:
        f.write(b"\n")
    again = Checkpoints(ckpt, RunKey.of_stage("train", params, root / "dvc.yaml"))
    assert ignored(caplog, again).endswith(f": {dep} changed; training from scratch")


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("stop_after", [2, 5])
def test_early_stopping_resumes_to_the_same_bytes(params, data, tmp_path, kind, stop_after):
    """With a validation split and train.patience, a run stopped after any epoch and resumed
    stops at the same epoch with the same best weights and the same validation losses."""
    from torchreg.data import write_dataset
    from torchreg.training import Validation

    lr = {"linear": 1.0, "mlp": 0.05}[kind]  # each reaches its best well within 40 epochs
    params = with_changes(params, {"kind": kind}, epochs=40, patience=3, lr=lr)
    rows, path = data
    write_dataset(tmp_path / "val.npy", params.data, "val", 30)

    def run(checkpoints=None, resume=None, stop=None):
        cfg = params.train
        model = build_model(params.model, 4, cfg.init_std, seeded(cfg.seed, "init"))
        validation = Validation(DataFile(tmp_path / "val.npy"), cfg.loss, cfg.patience, None)

        def halt(epoch, loss):
            if epoch + 1 == stop:
                raise Stop

        history = fit(
            model, rows, cfg, seeded(cfg.seed, "shuffle"), None, [halt], None, checkpoints,
            resume, validation,
        )  # fmt: skip
        weights = [p.detach().clone() for p in model.parameters()]
        return weights, history, list(validation.history), validation.best

    weights, history, val, best = run()
    assert best is not None and len(history) < 40, "early stopping did not stop: pick other params"
    assert len(history) == best["epoch"] + 1 + 3
    saving = checkpoints(tmp_path / "ckpt", params, path)
    with pytest.raises(Stop):
        run(saving, stop=stop_after + 1)
    record = checkpoints(tmp_path / "ckpt", params, path).load()
    assert record["epoch"] == stop_after
    again, again_history, again_val, again_best = run(resume=record["state"])
    assert again_history == history and again_val == val
    assert again_best["epoch"] == best["epoch"]
    for mine, theirs in zip(again, weights, strict=True):
        assert torch.equal(mine, theirs)


# --- what a checkpoint may be, and what of it is trusted ----------------------------------


def crafted(ckpt, change):
    """Rewrite the checkpoint with `change(record)` applied, sealed again (a valid digest)."""
    record = torch.load(io.BytesIO(ckpt.read_bytes()[32:]), weights_only=True)
    change(record)
    buffer = io.BytesIO()
    torch.save(record, buffer)
    payload = buffer.getvalue()
    ckpt.write_bytes(hashlib.sha256(payload).digest() + payload)


def set_in(*path, value):
    def change(record):
        node = record["state"]
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value

    return change


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (set_in("history", value=lambda h: torch.zeros(25, dtype=torch.float64)),
         "it is after epoch 25, outside 1..5 of this run"),
        (set_in("history", value=lambda h: h.float()), "not a float64 tensor"),
        (set_in("step", "wb", value=lambda w: w[:2]), "step.wb is torch.float32 [2], this run"),
        (set_in("step", "wb", value=lambda w: w.double()), "step.wb is torch.float64"),
        (set_in("step", "wb", value=lambda w: w * float("nan")), "a NaN or infinite value"),
        (lambda r: r["state"].pop("step"), "its state does not fit this run (KeyError"),
        (set_in("step", "schedule", value={"x": 1}), None),  # a constant lr reads no schedule
    ],
    ids=["epochs-past-the-run", "history-float32", "weights-shape", "weights-dtype", "nan",
         "no-step", "unread-part"],
)  # fmt: skip
def test_a_record_that_does_not_fit_the_run_is_ignored(caplog, saved, change, says):
    """The key matches (same params, data, code) but the contents are crafted: each is checked
    against the run before anything of it is used."""
    from torchreg.training import open_checkpoint

    params, path, ckpt = saved
    crafted(ckpt, change)
    model = build_model(params.model, 4, params.train.init_std, seeded(0, "init"))
    with caplog.at_level(logging.INFO, logger="torchreg.checkpoint"):
        _, resume = open_checkpoint((ckpt, key(params, path)), model, params.train, True, None)
    lines = [r.getMessage() for r in caplog.records]
    if says is None:
        assert resume is not None and not lines
        return
    assert resume is None
    (line,) = lines
    assert says in line and line.endswith("; training from scratch"), line


def test_an_adam_state_of_other_shapes_is_ignored(caplog, params, data, tmp_path):
    from torchreg.training import open_checkpoint

    params = with_changes(params, {"kind": "mlp"}, optimizer="adam", lr=0.01)
    rows, path = data
    with pytest.raises(Stop):
        train(params, rows, checkpoints(tmp_path / "ckpt", params, path), stop_after=3)
    moments = set_in("step", "optimizer", "state", 0, "exp_avg", value=lambda m: m[:1])
    crafted(tmp_path / "ckpt", moments)
    model = build_model(params.model, 4, params.train.init_std, seeded(0, "init"))
    with caplog.at_level(logging.INFO, logger="torchreg.checkpoint"):
        run_key = key(params, path)
        _, resume = open_checkpoint((tmp_path / "ckpt", run_key), model, params.train, True, None)
    assert resume is None
    assert "its optimizer's exp_avg is [1, 4], not [16, 4]" in caplog.records[0].getMessage()


def test_a_checkpoint_larger_than_the_run_could_write_is_not_read(caplog, saved, monkeypatch):
    params, path, ckpt = saved
    size = ckpt.stat().st_size
    read = []
    monkeypatch.setattr("torchreg.checkpoint.torch.load", lambda *a, **k: read.append(1))
    loader = Checkpoints(ckpt, key(params, path), max_bytes=size - 1)
    line = ignored(caplog, loader)
    assert f"it is larger than this run could have written ({size:,} bytes" in line
    assert not read


@pytest.mark.parametrize(
    "target",
    ["model", "data", "params", "live-file", "other-file", "folder", "fifo", "device", "link"],
)
def test_a_checkpoint_path_that_is_something_else_is_refused_first(tmp_path, target):
    """The checkpoint is overwritten while training and removed at the end: a path that is an
    input, an output, inside the DVCLive folder, or any file that is not a checkpoint is
    refused before anything is read or written, and left as it was."""
    import os

    from torchreg.checkpoint import check_checkpoint_path
    from torchreg.errors import UserError

    files = {name: tmp_path / name for name in ("model.safetensors", "train.npy", "params.yaml")}
    for path in files.values():
        path.write_bytes(b"precious")
    live = tmp_path / "dvclive"
    (live / "plots").mkdir(parents=True)
    others = {
        "model": files["model.safetensors"],
        "training data": files["train.npy"],
        "params file": files["params.yaml"],
        "DVCLive folder": live,
    }
    path = {
        "model": files["model.safetensors"],
        "data": tmp_path / "." / "train.npy",
        "params": files["params.yaml"],
        "live-file": live / "plots" / "ckpt",
        "other-file": tmp_path / "README.md",
        "folder": tmp_path / "folder",
        "fifo": tmp_path / "fifo",
        "device": Path("/dev/null"),
        "link": tmp_path / "link",
    }[target]
    if target == "other-file":
        path.write_text("# notes\n")
    elif target == "folder":
        path.mkdir()
    elif target == "fifo":
        os.mkfifo(path)
    elif target == "link":
        path.symlink_to(files["train.npy"].name)
    before = {p: p.read_bytes() for p in files.values()}
    with pytest.raises(UserError) as err:
        check_checkpoint_path(path, others)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"--checkpoint {path} ")
    assert {p: p.read_bytes() for p in files.values()} == before
    if target == "other-file":
        assert path.read_text() == "# notes\n"


def test_a_checkpoint_path_of_a_checkpoint_or_nothing_is_accepted(saved, tmp_path):
    from torchreg.checkpoint import check_checkpoint_path

    params, path, ckpt = saved
    check_checkpoint_path(ckpt, {"training data": path})  # a checkpoint: resumed from
    check_checkpoint_path(tmp_path / "new" / "train.ckpt", {"training data": path})
    assert not (tmp_path / "new").exists()  # the check leaves no folder behind


def test_the_lock_goes_at_the_end_and_an_empty_folder_with_it(params, data, tmp_path):
    from torchreg.checkpoint import held

    rows, path = data
    folder = tmp_path / "checkpoints"  # made by the run: not left behind
    with held(folder / "train.ckpt"):
        saving = checkpoints(folder / "train.ckpt", params, path)
        saving.save({"x": torch.zeros(1)}, 1)
        assert (folder / ".train.ckpt.lock").read_text() == f"{os.getpid()}\n"
        saving.remove()
    assert not folder.exists()
    (folder / "mine").mkdir(parents=True)
    with held(folder / "train.ckpt"):
        pass
    assert [p.name for p in folder.iterdir()] == ["mine"]  # someone's files: kept
    empty = tmp_path / "my-empty-folder"
    empty.mkdir()
    with held(empty / "x.ckpt"):
        pass
    assert empty.is_dir()  # a user's folder the run did not make: kept, even empty


def test_the_project_folder_goes_when_empty(tmp_path, monkeypatch):
    from torchreg.checkpoint import DEFAULT_PATH, held

    monkeypatch.chdir(tmp_path)
    DEFAULT_PATH.parent.mkdir()  # left by an earlier run
    with held(DEFAULT_PATH):
        pass
    assert not DEFAULT_PATH.parent.exists()


@pytest.mark.parametrize("kind", ["folder", "link", "dangling-link", "fifo", "someones-file"])
def test_a_lock_path_that_is_something_else_is_refused_untouched(tmp_path, kind):
    from torchreg.checkpoint import held, lock_path

    path = tmp_path / "checkpoints" / "train.ckpt"
    lock = lock_path(path)
    lock.parent.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if kind == "folder":
        lock.mkdir()
    elif kind == "link":
        lock.symlink_to(victim)
    elif kind == "dangling-link":
        lock.symlink_to(tmp_path / "nowhere" / "x")
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.write_text("my notes\n")
    started = time.monotonic()
    with pytest.raises(UserError) as e, held(path, wait_s=5):
        pass
    assert time.monotonic() - started < 2  # refused, not waited on (nor spun on)
    assert str(e.value) == (
        f"{lock}, the lock that keeps two train runs off one checkpoint, exists and is not one "
        "of this project's lock files: remove it, or choose another --checkpoint"
    )
    assert victim.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    assert lock.is_symlink() or lock.exists()  # left as it was


def test_two_runs_never_share_a_checkpoint(tmp_path, caplog):
    from torchreg.checkpoint import held

    path = tmp_path / "checkpoints" / "train.ckpt"
    caplog.set_level(logging.INFO, logger="torchreg.checkpoint")
    with held(path):
        started = time.monotonic()
        with pytest.raises(UserError) as e, held(path, wait_s=0.5):
            pass
        assert time.monotonic() - started >= 0.5
    assert str(e.value) == (
        f"{path} is in use by another train run (pid {os.getpid()}) that did not end within "
        "0.5 s: wait for it, or stop it, then run this again"
    )
    assert f"waiting for the train run (pid {os.getpid()}) that holds {path}" in caplog.text


def test_a_run_waits_for_the_one_before_it_to_end(tmp_path):
    from torchreg.checkpoint import held

    path = tmp_path / "checkpoints" / "train.ckpt"
    order = []
    first = held(path)
    first.__enter__()
    threading.Timer(
        0.5, lambda: (order.append("first ends"), first.__exit__(None, None, None))
    ).start()
    with held(path, wait_s=30):
        order.append("second starts")
    assert order == ["first ends", "second starts"]


def test_the_lock_of_a_killed_run_is_free_at_once(tmp_path):
    from torchreg.checkpoint import held

    path = tmp_path / "checkpoints" / "train.ckpt"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from torchreg.checkpoint import held; import time\n"
         f"with held(__import__('pathlib').Path({str(path)!r})):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    started = time.monotonic()
    with held(path, wait_s=5):
        assert time.monotonic() - started < 1


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stop_after", [1, 4])
def test_a_real_checkpoint_of_every_kind_of_run_fits_it(params, data, tmp_path, case, stop_after):
    """The checks that refuse crafted records accept every real one: each model, optimizer,
    lr schedule and averaging, stopped early or late (a check too strict would make every
    resume start over, silently)."""
    from torchreg.training import resume_problem

    model_changes, changes = CASES[case]
    params = with_changes(params, model_changes, **changes)
    rows, path = data
    with pytest.raises(Stop):
        train(params, rows, checkpoints(tmp_path / "ckpt", params, path), stop_after=stop_after + 1)
    record = checkpoints(tmp_path / "ckpt", params, path).load()
    model = build_model(params.model, 4, params.train.init_std, seeded(0, "init"))
    assert resume_problem(record["state"], model, params.train, None) is None


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (set_in("step", "lr", value=10.0), "its lr 10.0 is not this run's after epoch 2"),
        (set_in("step", "averaging", value=True), "its weight averaging is on after epoch 2"),
        (set_in("generator", value=lambda g: g[:10]), "shuffle generator's state is not one"),
        (set_in("limit", value="abc"), "its divergence yardstick abc is not a positive number"),
        (set_in("limit", value=0.0), "its divergence yardstick 0.0 is not a positive number"),
        (set_in("history", value=lambda h: -h), "its losses are not float64 numbers >= 0"),
        (set_in("history", value=lambda h: h.reshape(-1, 1)), "its losses are not one per epoch"),
    ],
)
def test_a_crafted_schedule_or_stream_is_ignored(caplog, saved, change, says):
    from torchreg.training import open_checkpoint

    params, path, ckpt = saved
    crafted(ckpt, change)
    model = build_model(params.model, 4, params.train.init_std, seeded(0, "init"))
    with caplog.at_level(logging.INFO, logger="torchreg.checkpoint"):
        _, resume = open_checkpoint((ckpt, key(params, path)), model, params.train, True, None)
    assert resume is None
    assert says in caplog.records[0].getMessage()


def test_a_checkpoint_in_a_dvclive_folder_not_made_yet_is_refused(tmp_path):
    """After a failed run, or in a fresh clone, dvclive/ is not there yet: a checkpoint inside
    it would still be removed with the folder's files, so it is refused all the same."""
    from torchreg.checkpoint import check_checkpoint_path
    from torchreg.errors import UserError

    live = tmp_path / "dvclive"
    with pytest.raises(UserError, match="is inside the DVCLive folder"):
        check_checkpoint_path(live / "metrics.json", {"DVCLive folder": live})
    assert not live.exists()
