"""Faults from outside: bad files, kills, Ctrl-C, divergence, threads, unwritable folders.
Each runs the real stage scripts (and dvc) in a temporary copy of the repo."""

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support import (
    OUTPUTS,
    Payload,
    one_clean_line,
    run,
    run_stage,
    set_params,
    start_stage,
    subprocess_env,
)

pytestmark = pytest.mark.slow


def digest(repo: Path, names=OUTPUTS) -> dict[str, str]:
    return {n: hashlib.sha256((repo / n).read_bytes()).hexdigest() for n in names}


def size(path: Path) -> int:
    """A file's size, 0 once it is gone (renamed into place between a listing and this)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "models/model.safetensors: not a valid model file"),
        (b"PK\x03\x04 truncated zip", "models/model.safetensors: not a valid model file"),
        (bytes(range(256)) * 64, "models/model.safetensors: not a valid model file"),
    ],
    ids=["empty", "truncated", "random"],
)
def test_bad_model_file(built, content, expected):
    before = digest(built, ["metrics/evaluate.json", "plots/predictions.tsv"])
    (built / "models/model.safetensors").write_bytes(content)
    assert expected in one_clean_line(run_stage(built, "evaluate"), "evaluate")
    assert digest(built, ["metrics/evaluate.json", "plots/predictions.tsv"]) == before


def test_truncated_real_model_file(built):
    data = (built / "models/model.safetensors").read_bytes()
    (built / "models/model.safetensors").write_bytes(data[: len(data) // 2])
    line = one_clean_line(run_stage(built, "evaluate"), "evaluate")
    assert "models/model.safetensors: not a valid model file" in line


def test_model_file_carrying_code_is_not_run(built):
    marker = built / "pwned"
    (built / "models/model.safetensors").write_bytes(
        pickle.dumps({"state_dict": Payload(str(marker))})
    )
    line = one_clean_line(run_stage(built, "evaluate"), "evaluate")
    assert "models/model.safetensors: not a valid model file" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("test.npy", b"", "data/test.npy: not a valid data file"),
        ("test.npy", os.urandom(4096), "data/test.npy: not a valid data file"),
        ("train.npy", None, "data/train.npy: not a valid data file"),  # truncated
    ],
    ids=["empty", "random", "truncated"],
)
def test_bad_data_file(built, name, content, expected):
    path = built / "data" / name
    if content is None:
        content = path.read_bytes()[:1000]
    path.write_bytes(content)
    assert expected in one_clean_line(run_stage(built, "evaluate"), "evaluate")


def test_data_of_the_wrong_shape(built):
    np.save(built / "data/test.npy", np.zeros((10, 4), dtype=np.float32))  # 3 features + y
    line = one_clean_line(run_stage(built, "evaluate"), "evaluate")
    assert "data/test.npy has 3 features but models/model.safetensors expects 4" in line
    np.save(built / "data/train.npy", np.zeros((10, 4), dtype=np.float32))
    (built / "models/model.safetensors").unlink()
    run(["dvc", "repro"], built)  # regenerates what is stale, recovers


def test_missing_files_name_the_stage_to_run(repo):
    line = one_clean_line(run_stage(repo, "train"), "train")
    assert "data/train.npy not found: run the prepare stage first" in line
    assert "run the train stage first" in one_clean_line(run_stage(repo, "evaluate"), "evaluate")
    assert "run the train stage first" in one_clean_line(run_stage(repo, "plot"), "plot")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_while_writing_keeps_the_old_output(repo, sig):
    run_stage(repo, "prepare", check=True)
    old = (repo / "data/train.npy").read_bytes()
    set_params(repo, data__n_train=30_000_000)  # ~600 MB: seconds of writing
    proc = start_stage(repo, "prepare")

    def tmp_files():
        return [p for p in (repo / "data").glob(".train.npy.*.tmp") if size(p) > 0]

    wait_for(lambda: tmp_files() or proc.poll() is not None, what="prepare to start writing")
    assert proc.poll() is None, "prepare finished before it could be interrupted"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert (repo / "data/train.npy").read_bytes() == old  # never a half-written file
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert stderr.strip().splitlines()[-1] == "prepare: interrupted; no output was written"
        assert "Traceback" not in stderr
        assert not list((repo / "data").glob(".*.tmp"))
    set_params(repo, data__n_train=500)
    run(["dvc", "repro"], repo)  # recovers; clears what a SIGKILL left behind
    assert not list((repo / "data").glob(".*.tmp"))
    assert (repo / "data/train.npy").read_bytes() == old


@pytest.mark.parametrize(
    ("sig", "message"),
    [
        (signal.SIGINT, "train: interrupted; no output was written"),  # Ctrl-C
        (signal.SIGTERM, "train: terminated (SIGTERM); no output was written"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_an_interrupt_during_training_exits_within_a_second(repo, sig, message):
    run_stage(repo, "prepare", check=True)
    set_params(repo, train__epochs=1_000_000)
    for _ in range(2):  # a second try only if a busy machine slowed the first
        proc = start_stage(repo, "train")
        for line in proc.stderr:
            if "epoch 1/" in line:
                break
        sent = time.monotonic()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
        assert proc.returncode == 128 + sig
        assert stderr.strip().splitlines() == [message]
        assert not (repo / "models/model.safetensors").exists()
        assert not (repo / "dvclive").exists()
        if took < 1.0:
            break
    assert took < 1.0, f"exited {took:.2f} s after {sig.name}, twice"


def test_divergence_names_the_epoch_and_writes_no_model(repo):
    run_stage(repo, "prepare", check=True)
    set_params(repo, train__lr=1e6)
    line = one_clean_line(run_stage(repo, "train"), "train")
    assert "training diverged at epoch" in line and "try a smaller train.lr" in line
    assert not (repo / "models/model.safetensors").exists()


def test_same_params_same_bytes_across_processes_and_threads(repo):
    runner = (
        "import runpy, sys, torch; torch.set_num_threads(int(sys.argv[1])); "
        "sys.argv = [sys.argv[2]]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    results = []
    for threads in ("1", "2", "2"):
        for name in ("prepare", "train", "evaluate", "plot"):
            subprocess.run(
                [sys.executable, "-c", runner, threads, f"stages/{name}.py"],
                cwd=repo,
                env=subprocess_env(),
                check=True,
                capture_output=True,
            )
        results.append(digest(repo))
        for name in OUTPUTS:
            (repo / name).unlink()
    assert results[0] == results[1] == results[2]


def test_unwritable_output_is_one_clear_error(repo, tmp_path):
    run_stage(repo, "prepare", check=True)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    line = one_clean_line(
        run_stage(repo, "train", "--model", str(blocker / "model.safetensors")), "train"
    )
    assert f"cannot write {blocker / 'model.safetensors'}" in line
    assert blocker.read_text() == "a file where a folder should be"


def bound_by_permission_bits() -> list[str]:
    """A command prefix under which permission bits hold. Root ignores them through two
    capabilities: setpriv drops those (the process stays root, so it still reads the copy of
    the repo it owns). Skipped, not passed, where that cannot be done."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("running as root without setpriv: permission bits cannot be tested")
    if probe.returncode != 0:
        pytest.skip(f"running as root; setpriv cannot drop capabilities: {probe.stderr.strip()}")
    return prefix


def test_a_folder_without_write_permission_is_one_clear_error(repo, tmp_path):
    run_stage(repo, "prepare", check=True)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    model = str(locked / "model.safetensors")
    result = run([*bound_by_permission_bits(), sys.executable, "stages/train.py", "--model", model],
                 repo, check=False)  # fmt: skip
    line = one_clean_line(result, "train")
    assert f"cannot write {model}: Permission denied" in line
    assert not list(locked.iterdir())


def peak_rss_mib(repo: Path, name: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run a stage in a fresh interpreter that reports its own peak RSS on exit."""
    runner = (
        "import atexit, resource, runpy, sys; "
        "atexit.register(lambda: print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " file=sys.stderr)); sys.argv = [sys.argv[1]]; runpy.run_path(sys.argv[0], "
        "run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", runner, f"stages/{name}.py"],
        cwd=repo,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    rss = [ln for ln in result.stderr.splitlines() if ln.startswith("RSS ")]
    return result, int(rss[-1].split()[1]) / 1024 if rss else float("nan")


def test_evaluate_memory_is_linear_in_features(repo):
    """4096 features (the allowed maximum): the sample tables are built a feature at a time."""
    set_params(repo, data__true_w=[1.0] * 4096, train__epochs=1, plot__feature=0)
    for name in ("prepare", "train"):
        run_stage(repo, name, check=True)
    result, rss = peak_rss_mib(repo, "evaluate")
    assert result.returncode == 0, result.stderr
    assert rss < 1500, f"evaluate peaked at {rss:.0f} MiB"


def test_a_network_this_machine_cannot_hold_is_refused_before_training(repo):
    run_stage(repo, "prepare", check=True)
    set_params(repo, model__kind="mlp", model__hidden=[65536, 65536])
    start = time.monotonic()
    line = one_clean_line(run_stage(repo, "train"), "train")
    assert time.monotonic() - start < 30
    assert "model.hidden = [65536, 65536]" in line and "GiB of memory" in line
    assert not (repo / "models/model.safetensors").exists()


def test_more_ranks_than_cores_is_refused_before_launching(repo):
    run_stage(repo, "prepare", check=True)
    set_params(repo, train__nproc=64)
    line = one_clean_line(run_stage(repo, "train"), "train")
    assert "train.nproc = 64 but this machine has" in line


@pytest.mark.parametrize(
    "changes,stage,message",
    [
        ({"data__true_w": [1e300, 2.0, 2.0, 4.0]}, "prepare", "y overflows float32"),
        ({"train__init_std": 1e39}, "train", "train.init_std = 1e+39"),
    ],
)
def test_non_finite_numbers_are_blamed_on_their_cause(repo, changes, stage, message):
    if stage != "prepare":
        run_stage(repo, "prepare", check=True)
    set_params(repo, **changes)
    line = one_clean_line(run_stage(repo, stage), stage)
    assert message in line and "train.lr" not in line
    assert not (repo / "data/train.npy").exists() or stage != "prepare"


def test_nan_in_the_data_names_the_row_not_the_learning_rate(repo):
    run_stage(repo, "prepare", check=True)
    run_stage(repo, "train", check=True)  # a model for evaluate
    data = np.load(repo / "data/train.npy")
    data[7, 2] = np.nan
    np.save(repo / "data/train.npy", data)
    for name in ("train", "evaluate"):
        line = one_clean_line(run_stage(repo, name), name)
        assert "data/train.npy: row 7 has a NaN or infinite value" in line, line


@pytest.mark.parametrize(
    "table,content,message",
    [
        ("plots/predictions.tsv", "x0\tactual\n1.0\t2.0\n", "has no column"),
        ("plots/curves.tsv", "feature\tx\tmodel\ttruth\n0\t1\t1\t1\n", "no curve for feature 3"),
        ("dvclive/plots/metrics/train_loss.tsv", "step\n0\n", "has no column train_loss"),
        ("metrics/evaluate.json", '{"test": {}}', "missing"),
        (
            "metrics/evaluate.json",
            '{"test": {"mae": "x"}, "reference": {"test_mae": 1}, "noise_floor_mae": 1}',
            "must be numbers",
        ),
    ],
)
def test_plot_inputs_with_wrong_columns_are_one_line(built, table, content, message):
    (built / table).write_text(content)
    line = one_clean_line(run_stage(built, "plot"), "plot")
    assert message in line and table in line


def flip_in_the_cache(repo: Path, name: str) -> None:
    """Flip the last bit of `name`'s copy in DVC's local cache (DVC's files are read-only)."""
    md5 = hashlib.md5((repo / name).read_bytes()).hexdigest()
    cached = repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    cached.chmod(0o644)
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0x01
    cached.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name,stage,readers",
    [
        ("models/model.safetensors", "train", ["evaluate", "predict"]),
        ("data/test.npy", "prepare", ["evaluate"]),
    ],
    ids=["model", "data"],
)
def test_a_file_damaged_in_dvcs_cache_is_refused_after_checkout(built, name, stage, readers):
    """`dvc checkout` restores a damaged cache copy without a word; the file's own digest
    refuses it, and `dvc repro` (which finds the copy damaged) rebuilds it."""
    good = (built / name).read_bytes()
    flip_in_the_cache(built, name)
    (built / name).unlink()
    run(["dvc", "checkout", name], built)
    assert (built / name).read_bytes() != good  # the damaged copy is back
    damaged = f"{name}: damaged (its content does not match the sha256 it carries): rebuild it"
    for reader in readers:
        if reader == "predict":
            result = run(
                [sys.executable, "-m", "torchreg.predict", "--input", "-"],
                built, check=False, input="1,0,0,0\n",
            )  # fmt: skip
        else:
            result = run_stage(built, reader)
        assert damaged in one_clean_line(result, reader), result.stderr
    run(["dvc", "repro"], built)
    assert (built / name).read_bytes() == good
