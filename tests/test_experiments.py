"""Queued sweeps, failures, comparison, with the real dvc CLI in a copy of the repo."""

import json
import re
import subprocess
import sys

import pytest

from support import ROOT, commit, run, set_params

pytestmark = pytest.mark.slow

GRID = {"train.lr": ["0.01", "0.1"], "train.batch_size": ["16", "64"]}


def show(repo) -> dict:
    """name -> (state, rev) for every experiment of the baseline."""
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    out = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            out[exp["name"]] = ((exp.get("executor") or {}).get("state"), exp["revs"][0]["rev"])
    return out


def git_show(repo, rev, path) -> str:
    return run(["git", "show", f"{rev}:{path}"], repo).stdout


def wait_for_queue(repo):
    for _ in range(600):
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status and "0 active" in status:
            return status
        subprocess.run(["sleep", "0.5"])
    raise AssertionError(f"queue did not finish:\n{status}")


def test_grid_sweep_in_parallel_with_one_failure(repo):
    set_params(repo, train__epochs=5)
    run(["dvc", "repro"], repo)
    commit(repo, "baseline")
    sets = [a for k, v in GRID.items() for a in ("-S", f"{k}={','.join(v)}")]
    run(["dvc", "exp", "run", "--queue", *sets], repo)
    run(
        [
            "dvc",
            "exp",
            "run",
            "--queue",
            "-n",
            "diverges",
            "-S",
            "train.lr=1e6",
            "-S",
            "train.loss=mse",
        ],
        repo,
    )
    run(["dvc", "queue", "start", "-j", "2"], repo)
    wait_for_queue(repo)

    exps = show(repo)
    assert exps.pop("diverges")[0] == "failed"
    assert len(exps) == 4 and all(state == "success" for state, _ in exps.values()), exps
    log = run(["dvc", "queue", "logs", "diverges"], repo).stdout
    assert "training diverged at epoch" in log and "try a smaller train.lr" in log
    assert "Traceback" not in log

    # Each experiment's outputs are its own: rerun one combination alone in the workspace and
    # compare every output hash with what the queued run recorded.
    seen = set()
    for _, rev in exps.values():
        params = git_show(repo, rev, "params.yaml")
        lock = git_show(repo, rev, "dvc.lock")
        seen.add(lock)
        if "lr: 0.1" in params and "batch_size: 64" in params:
            (repo / "params.yaml").write_text(params)
            run(["dvc", "repro"], repo)
            assert (repo / "dvc.lock").read_text() == lock
    assert len(seen) == 4  # four different results, none overwritten by another


def test_back_to_back_queue_runs_each_run_everything(built):
    """The sweep helpers as the benchmark uses them: a `-j 2` run, its workers waited for, then
    a `-j 1` run. A stop sent after a worker had gone used to stop the next run's worker after
    its first task, leaving the rest queued."""
    from sweep import queue_grid, results, run_queue, stop_workers

    set_params(built, train__epochs=3)
    commit(built, "baseline")
    for jobs, lrs in ((2, "0.01,0.02"), (1, "0.03,0.04")):
        names = queue_grid(built, f"train.lr={lrs}")
        assert len(names) == 2
        run_queue(built, jobs, poll_s=0.5)
        # An idle worker leaves after 10 s; on a machine loaded by the rest of the slow tier,
        # its shutdown has taken over a minute.
        stop_workers(built, timeout_s=180)
        states = {name: row["state"] for name, row in results(built, names).items()}
        assert states == dict.fromkeys(names, "Success")


def test_compare_two_experiments(repo):
    set_params(repo, train__epochs=5)
    run(["dvc", "repro"], repo)
    commit(repo, "baseline")
    run(["dvc", "exp", "run", "-n", "fast", "-S", "train.lr=0.1"], repo)
    run(["dvc", "exp", "run", "-n", "slow", "-S", "train.lr=0.001"], repo)
    diff = json.loads(run(["dvc", "exp", "diff", "fast", "slow", "--json"], repo).stdout)
    assert "test" in json.dumps(diff["metrics"]) and "lr" in json.dumps(diff["params"])

    table = run(["dvc", "exp", "show", "--md"], repo).stdout
    for column in ("test.mae", "train.mae", "reference.test_mae", "train_loss", "train.lr"):
        assert column in table

    out = repo / "compare"
    run(["dvc", "plots", "diff", "fast", "slow", "-o", str(out)], repo)
    html = (out / "index.html").read_text()
    assert "fast" in html and "slow" in html
    images = list((out / "static").glob("*fit.png"))
    assert len(images) >= 2  # one fit picture per experiment, side by side
    data = json.loads(run(["dvc", "plots", "diff", "fast", "slow", "--json"], repo).stdout)
    curves = data["data"]["Training and validation loss"]
    for loss in curves:  # both experiments' curves overlaid in one chart
        assert loss["revisions"] == ["fast", "slow"]
        assert {row["rev"] for row in loss["content"]["data"]["values"]} == {"fast", "slow"}
    shown = json.dumps(curves)
    assert "train_loss" in shown and "val_loss" in shown


def test_activation_lesson_script(built):
    commit(built, "baseline")
    result = run(
        [sys.executable, str(ROOT / "experiments/activations.py"), "--epochs", "3"],
        built,
        timeout=600,
    )
    assert "| mlp none |" in result.stdout and "| mlp relu |" in result.stdout
    assert (built / "activations/activations.png").stat().st_size > 10_000
    page = (built / "activations/activations.md").read_text()
    assert "| linear |" in page.split("activations:start")[1].split("activations:end")[0]
    assert re.search(r"of 5 queued or running \(\d+ s, about \d+ s left\)", result.stderr)
    # Nothing tracked was rewritten: a sweep after the lesson finds no uncommitted changes.
    assert run(["git", "status", "--porcelain"], built).stdout == ""


def test_every_param_can_be_set_with_dash_s(repo):
    """One experiment overriding every key in params.yaml at once, through DVC's own -S."""
    overrides = {
        "data.source": "synthetic",
        "data.seed": "3",
        "data.true_w": "[1.5, -2.0, 0.5]",
        "data.true_b": "-0.5",
        "data.n_train": "300",
        "data.n_val": "50",
        "data.n_test": "100",
        "data.noise_std": "0.05",
        "data.target": "sine",
        "data.table.path": "examples/tables/diabetes.csv",
        "data.table.target": "progression",
        "data.table.features": "[age, bmi]",
        "data.table.categorical": "[]",
        "data.table.max_categories": "10",
        "data.table.exclude": "[]",
        "data.table.missing": "drop",
        "data.table.standardize": "false",
        "data.table.delimiter": "';'",
        "data.table.val_fraction": "0.2",
        "data.table.test_fraction": "0.1",
        "model.kind": "mlp",
        "model.hidden": "[8, 4]",
        "model.activation": "tanh",
        "train.seed": "7",
        "train.lr": "1e-2",
        "train.epochs": "3",
        "train.batch_size": "32",
        "train.loss": "huber",
        "train.optimizer": "adam",
        "train.init_std": "0.1",
        "train.device": "cpu",
        "train.nproc": "1",
        "train.lr_schedule": "cosine",
        "train.average": "swa",
        "train.average_start": "0.25",
        "train.checkpoint_every_s": "30",
        "train.patience": "0",
        "plot.feature": "2",
        "compute.cpu": "native",
    }
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())

    def leaves(node, prefix=""):
        if isinstance(node, dict):
            return {k for key, v in node.items() for k in leaves(v, f"{prefix}{key}.")}
        return {prefix[:-1]}

    assert leaves(params) == set(overrides)
    run(
        [
            "dvc",
            "exp",
            "run",
            "-n",
            "everything",
            *[a for k, v in overrides.items() for a in ("-S", f"{k}={v}")],
        ],
        repo,
    )
    exp = yaml.safe_load((repo / "params.yaml").read_text())  # applied to the workspace
    assert exp["model"]["hidden"] == [8, 4] and exp["data"]["target"] == "sine"
    assert exp["train"]["lr"] in (0.01, "1e-2")  # DVC writes what was typed
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert "learned" not in metrics  # an mlp has no w, b to report


def test_benchmark_smoke_run(tmp_path):
    """The benchmark's quick mode runs end to end and writes its table."""
    out = tmp_path / "BENCHMARKS.md"
    result = run(
        [
            sys.executable,
            str(ROOT / "bench/run.py"),
            "--quick",
            "--only",
            "loop",
            "--out",
            str(out),
        ],
        ROOT,
    )
    assert "loop speed-up over the tutorial" in result.stdout
    assert "| measurement | figure (median) | target |" in out.read_text()
