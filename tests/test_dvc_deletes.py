"""What DVC itself deletes: a params mistake must fail before DVC removes any output.

DVC removes a stage's outputs just before it runs the stage's command. The validate stage runs
first (every stage depends on its output), so a bad value stops `dvc repro` and `dvc exp run`
before DVC reaches train.
"""

import pytest

from conftest import run, set_params

pytestmark = pytest.mark.slow

KEPT = [
    "data/train.npy",
    "models/model.safetensors",
    "dvclive/metrics.json",
    "dvclive/plots/metrics/train_loss.tsv",
    "metrics/evaluate.json",
]


def snapshot(repo) -> dict[str, bytes]:
    return {p: (repo / p).read_bytes() for p in KEPT}


def test_bad_lr_under_dvc_repro_deletes_nothing(repo):
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "good"], repo)
    good = snapshot(repo)

    set_params(repo, train__lr=-1)
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "validate: error: params.yaml: train.lr = -1 is not allowed" in result.stderr
    assert "Running stage 'train'" not in result.stdout
    assert snapshot(repo) == good

    # Back to the good value: only the cheap validate stage runs again.
    run(["git", "checkout", "params.yaml"], repo)
    again = run(["dvc", "repro"], repo)
    assert "Running stage 'validate'" in again.stdout
    assert "Running stage 'train'" not in again.stdout
    assert snapshot(repo) == good
    assert run(["git", "status", "--porcelain"], repo).stdout == ""


def test_bad_lr_under_dvc_exp_run_deletes_nothing(repo):
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "good"], repo)
    good = snapshot(repo)

    result = run(["dvc", "exp", "run", "-S", "train.lr=abc"], repo, check=False)
    assert result.returncode != 0
    assert "validate: error: params.yaml: train.lr = 'abc' is not allowed" in result.stderr
    assert snapshot(repo) == good
    # DVC leaves its -S edit in the workspace: params.yaml keeps the bad value until reverted.
    assert "lr: abc" in (repo / "params.yaml").read_text()
    run(["git", "checkout", "params.yaml"], repo)
    again = run(["dvc", "repro"], repo)
    assert "Running stage 'train'" not in again.stdout
    assert snapshot(repo) == good


def test_a_misspelt_new_section_stops_the_pipeline(repo):
    run(["dvc", "repro"], repo)
    good = snapshot(repo)
    with (repo / "params.yaml").open("a") as f:
        f.write("trian:\n  lr: 0.1\n")
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "unknown key 'trian'" in result.stderr
    assert snapshot(repo) == good
