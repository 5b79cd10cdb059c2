"""End to end with the real dvc CLI, in a temporary copy of the repo (conftest: repo, built)."""

import json

import pytest
import yaml

from support import OUTPUTS, commit, run, run_stage, set_params

pytestmark = pytest.mark.slow


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_repro_builds_everything_then_nothing_then_the_same(repo):
    first = run(["dvc", "repro"], repo)
    assert ran_stages(first.stdout) == {"validate", "prepare", "train", "evaluate", "plot"}
    for name in OUTPUTS:
        assert (repo / name).stat().st_size > 0, name
    lock = (repo / "dvc.lock").read_text()
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert {"test", "train", "reference", "noise_floor_mae"} <= set(metrics)

    second = run(["dvc", "repro"], repo)
    assert ran_stages(second.stdout) == set()
    assert "Data and pipelines are up to date" in second.stdout

    run(["dvc", "repro", "-f"], repo)
    assert (repo / "dvc.lock").read_text() == lock  # same params, same bytes


def test_changing_lr_reruns_train_but_not_generate(built):
    set_params(built, train__lr=0.02)
    again = run(["dvc", "repro"], built)
    assert ran_stages(again.stdout) == {"validate", "train", "evaluate", "plot"}
    set_params(built, plot__feature=0)
    assert ran_stages(run(["dvc", "repro"], built).stdout) == {"validate", "plot"}


def test_experiment_shows_up_with_its_own_metrics(built):
    commit(built, "baseline")
    run(["dvc", "exp", "run", "-S", "train.lr=0.01", "-n", "slow-lr"], built)
    rows = json.loads(run(["dvc", "exp", "show", "--json"], built).stdout)
    baseline = next(r for r in rows if r["name"] == "main")
    exps = [e for e in baseline["experiments"] or [] if e["name"] == "slow-lr"]
    assert exps, "experiment missing from dvc exp show"
    exp = exps[0]["revs"][0]["data"]
    assert exp["params"]["params.yaml"]["data"]["train"]["lr"] == 0.01
    exp_mae = exp["metrics"]["metrics/evaluate.json"]["data"]["test"]["mae"]
    base_mae = baseline["data"]["metrics"]["metrics/evaluate.json"]["data"]["test"]["mae"]
    assert exp_mae != base_mae


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train__lr", -1, "train.lr = -1 is not allowed"),
        ("data__n_train", 0, "data.n_train = 0 is not allowed"),
        ("plot__feature", 9, "plot.feature = 9 is not a feature"),
    ],
)
def test_bad_param_fails_cleanly_and_writes_nothing(repo, key, value, message):
    set_params(repo, **{key: value})
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert (
        not (repo / "data/train.npy").exists() and not (repo / "models/model.safetensors").exists()
    )


def test_typo_in_section_name_is_refused(repo):
    data = yaml.safe_load((repo / "params.yaml").read_text())
    data["trian"] = data.pop("train")
    (repo / "params.yaml").write_text(yaml.safe_dump(data))
    result = run_stage(repo, "prepare")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("prepare: error: ")
    assert "params.yaml: unknown key 'trian' (allowed: data, model, train, plot, compute)" in line
    assert "params.yaml: train is missing" in line
