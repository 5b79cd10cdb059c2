"""kill -9 a training run, run it again, and it ends with the same bytes as a run that never
stopped: the model file, the dvclive/ files and (through dvc) everything downstream.

Each run is SIGKILLed at a random point: after an epoch, or half-way through writing a
checkpoint (the run kills itself where TORCHREG_KILL_AT says: a real SIGKILL, nothing cleaned
up). The random points come from a seed shown in every failure; set
TORCHREG_RESUME_SEED to repeat one.
"""

import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import OUTPUTS, ROOT, run, set_params, subprocess_env

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("TORCHREG_RESUME_SEED", random.randrange(2**32)))
EPOCHS = 12
LOGGED = ["model.safetensors", "dvclive/metrics.json", "dvclive/plots/metrics/train_loss.tsv"]


def combos() -> dict[str, dict]:
    """Every model x optimizer x loss; the lr schedules and swa take turns, so each of the 6
    (schedule, average) pairs meets the fast path, autograd, linear and mlp."""
    out = {}
    products = itertools.product(["linear", "mlp"], ["sgd", "adam"], ["mae", "mse", "huber"])
    for i, (kind, optimizer, loss) in enumerate(products):
        schedule, average = ["constant", "cosine", "step"][i % 3], ["none", "swa"][i % 2]
        out[f"{kind}-{optimizer}-{loss}-{schedule}-{average}"] = {
            "model__kind": kind,
            "model__hidden": [8, 8],
            "train__optimizer": optimizer,
            "train__loss": loss,
            "train__lr": 0.01 if optimizer == "adam" else 0.001,
            "train__lr_schedule": schedule,
            "train__average": average,
        }
    return out


COMBOS = combos()
TWO_PROCESSES = "mlp-adam-huber-step-swa-nproc2"


def digests(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in LOGGED}


def train(folder: Path, out: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """stages/train.py on the folder's params, writing under folder/out, its checkpoint in
    folder/checkpoints; run from the folder (nothing here touches the repo)."""
    env = subprocess_env(ROOT / "src", TORCHREG_DIST_TIMEOUT_S="20")
    if kill_at:
        env["TORCHREG_KILL_AT"] = kill_at
    args = ["--params", "params.yaml", "--data", "../data/train.npy", "--val", "../data/val.npy"]
    args += ["--features", "../data/features.json"]
    args += ["--model", f"{out}/model.safetensors", "--live-dir", f"{out}/dvclive"]
    args += ["--checkpoint", "checkpoints/train.ckpt"]
    return subprocess.run(
        [sys.executable, str(ROOT / "stages/train.py"), *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# The uninterrupted runs, one process for all single-process combos (as tests/cpu_digests.py).
PLAIN = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch, train
from torchreg.config import load_params
from torchreg.context import RunContext
for folder in map(Path, sys.argv[2:]):
    train.run(load_params(folder / "params.yaml"), RunContext(torch.device("cpu")),
              folder.parent / "data/train.npy", folder / "plain/model.safetensors",
              folder / "plain/dvclive", None, folder.parent / "data/val.npy",
              folder.parent / "data/features.json")
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder per combo with its params (checkpoint after every epoch), one shared data
    set, and every combo's uninterrupted run in <combo>/plain."""
    work = tmp_path_factory.mktemp("resume")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    set_params(work, data__n_train=96, train__epochs=EPOCHS, train__checkpoint_every_s=0)
    env = subprocess_env(ROOT / "src")
    run([sys.executable, str(ROOT / "stages/prepare.py")], work, env=env)
    for name, changes in {**COMBOS, TWO_PROCESSES: {}}.items():
        (work / name).mkdir()
        shutil.copy(work / "params.yaml", work / name / "params.yaml")
        set_params(work / name, **(changes or {**COMBOS["mlp-adam-huber-step-swa"]}))
    set_params(work / TWO_PROCESSES, train__nproc=2)
    run([sys.executable, "-c", PLAIN, str(ROOT / "stages"), *COMBOS], work, env=env)
    assert train(work / TWO_PROCESSES, "plain").returncode == 0
    return work


def killed_then_resumed(folder: Path, rng: random.Random, kills: tuple[str, ...]) -> str:
    """Kill the run at each of `kills` in turn ("epoch": after epoch a; "write": half-way
    through writing the checkpoint of epoch b >= a, which the run before resumed short of),
    then run it to the end; return the problem, or '' if the bytes are the same."""
    a = rng.randint(2, EPOCHS - 2)
    b = rng.randint(a, EPOCHS - 1)
    points = {"epoch": f"epoch:{a}", "write": f"write:{b}"}
    where = f"{folder.name}, killed at {[points[k] for k in kills]} (seed {SEED})"
    for kill in kills:
        result = train(folder, "resumed", points[kill])
        if result.returncode != -signal.SIGKILL:
            return f"{where}: {kill} exited {result.returncode}: {result.stderr[-2000:]}"
    leftovers = list((folder / "checkpoints").glob(".train.ckpt.*.tmp"))
    result = train(folder, "resumed")
    last = b - 1 if "write" in kills else a - 1  # the kill came before epoch a's checkpoint
    resumed = f"train: resuming after epoch {last} of {EPOCHS} from checkpoints/train.ckpt"
    if result.returncode != 0 or resumed not in result.stderr.splitlines():
        return f"{where}: the last run did not resume after epoch {last}: {result.stderr}"
    if ("write" in kills) != bool(leftovers):
        return f"{where}: a killed write leaves its temporary file: {leftovers}"
    if any(p.exists() for p in [*leftovers, folder / "checkpoints/train.ckpt"]):
        return f"{where}: the checkpoint or the killed write's leftover is still there"
    plain, got = digests(folder / "plain"), digests(folder / "resumed")
    differ = [name for name in LOGGED if plain[name] != got[name]]
    return f"{where}: {differ} differ from the uninterrupted run's" if differ else ""


def test_killed_runs_end_with_the_same_bytes(workdir):
    """Each combo killed once, after an epoch or during a checkpoint write by turns; the
    two-process run killed at both, one after the other."""
    rng = random.Random(SEED)
    runs = [
        (workdir / name, random.Random(rng.random()), (["epoch"], ["write"])[i % 2])
        for i, name in enumerate(COMBOS)
    ]
    runs.append((workdir / TWO_PROCESSES, random.Random(rng.random()), ("epoch", "write")))
    with ThreadPoolExecutor(2) as pool:  # two processes at a time: this machine's cores
        problems = list(pool.map(lambda r: killed_then_resumed(*r), runs))
    assert not any(problems), "\n".join(filter(None, problems))
    # What the runs logged (the closing note quotes these).
    print(json.dumps({f.name: digests(f / "plain")["model.safetensors"] for f, *_ in runs}))


def test_dvc_repro_and_exp_run_resume_to_the_same_outputs(built, tmp_path):
    """The pipeline killed in train under `dvc repro`, again under `dvc exp run`, then
    `dvc repro`: every output is the uninterrupted `dvc repro`'s (with the default interval:
    when checkpoints are written changes nothing)."""
    rng = random.Random(SEED)
    repo = tmp_path / "killed"
    run(["git", "clone", "-q", str(built), str(repo)], tmp_path)
    set_params(repo, train__checkpoint_every_s=0)
    a = rng.randint(2, 27)
    b = rng.randint(a, 29)
    for command, kill_at in ((["repro"], f"epoch:{a}"), (["exp", "run"], f"write:{b}")):
        result = run(
            ["dvc", *command], repo, check=False, env=subprocess_env(TORCHREG_KILL_AT=kill_at)
        )
        assert result.returncode != 0 and (repo / "checkpoints/train.ckpt").exists(), result.stderr
    result = run(["dvc", "repro"], repo)
    assert f"train: resuming after epoch {b - 1} of 30" in result.stdout + result.stderr, (a, b)
    assert not (repo / "checkpoints/train.ckpt").exists()
    differ = [n for n in OUTPUTS if (repo / n).read_bytes() != (built / n).read_bytes()]
    assert not differ, f"killed after epoch {a}, then writing epoch {b} (seed {SEED}): {differ}"
    assert "checkpoints" not in run(["git", "status", "--porcelain"], repo).stdout


def test_a_checkpoint_of_another_cpu_mode_is_not_resumed(workdir, tmp_path):
    """Killed under compute.cpu: native, run again under portable: the checkpoint is ignored
    with a line naming compute.cpu, and the model is portable's uninterrupted one."""
    folder = tmp_path / "linear-sgd"
    shutil.copytree(workdir / "linear-sgd-mae-constant-none", folder, ignore=lambda *_: ["plain"])
    (folder.parent / "data").symlink_to(workdir / "data")
    set_params(folder, compute__cpu="native")
    assert train(folder, "resumed", "epoch:4").returncode == -signal.SIGKILL
    assert (folder / "checkpoints/train.ckpt").exists()
    set_params(folder, compute__cpu="portable")
    result = train(folder, "resumed")
    assert result.returncode == 0, result.stderr
    assert "compute.cpu changed (native -> portable); training from scratch" in result.stderr
    assert "resuming" not in result.stderr
    plain = digests(workdir / "linear-sgd-mae-constant-none" / "plain")
    assert digests(folder / "resumed") == plain


def test_a_dvc_killed_alone_leaves_no_trainer_behind(built, tmp_path):
    """kill -9 of the dvc process alone (not its group): its train stage stops within a
    second or two, releasing the checkpoint, and the next `dvc repro` runs to the end."""
    import psutil

    repo = tmp_path / "killed"
    run(["git", "clone", "-q", str(built), str(repo)], tmp_path)
    set_params(repo, train__epochs=100_000, train__checkpoint_every_s=0)
    dvc = subprocess.Popen(
        # Without SHELL, DVC runs the command in /bin/sh, which (dash) waits for it: the stage
        # is dvc's grandchild, not its child.
        ["dvc", "repro", "train"], cwd=repo, env=subprocess_env(drop=("SHELL",)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (repo / "checkpoints/train.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    trainer = psutil.Process(dvc.pid).children(recursive=True)
    assert trainer and (repo / "checkpoints/train.ckpt").exists()
    dvc.kill()
    dvc.wait()
    gone, alive = psutil.wait_procs(trainer, timeout=10)
    assert not alive, f"still running after dvc was killed: {alive}"
    set_params(repo, train__epochs=30, train__checkpoint_every_s=60)
    result = run(["dvc", "repro"], repo)
    assert "train: waiting" not in result.stderr
    differ = [n for n in OUTPUTS if (repo / n).read_bytes() != (built / n).read_bytes()]
    assert not differ
    assert not (repo / "checkpoints").exists()
