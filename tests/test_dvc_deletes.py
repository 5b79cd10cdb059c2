"""What DVC itself deletes: a params mistake must fail before DVC removes any output.

DVC removes a stage's outputs just before it runs the stage's command. The validate stage runs
first (every stage depends on its output), so a bad value stops `dvc repro` and `dvc exp run`
before DVC reaches train.
"""

import pytest

from support import commit, run, set_params

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


def test_bad_lr_under_dvc_repro_deletes_nothing(built):
    commit(built, "good")
    good = snapshot(built)

    set_params(built, train__lr=-1)
    result = run(["dvc", "repro"], built, check=False)
    assert result.returncode != 0
    assert "validate: error: params.yaml: train.lr = -1 is not allowed" in result.stderr
    assert "Running stage 'train'" not in result.stdout
    assert snapshot(built) == good

    # Back to the good value, as docs/failure-behaviour.md says (see below why not checkout):
    # only the cheap validate stage runs again.
    (built / "params.yaml").write_text(run(["git", "show", "HEAD:params.yaml"], built).stdout)
    again = run(["dvc", "repro"], built)
    assert "Running stage 'validate'" in again.stdout
    assert "Running stage 'train'" not in again.stdout
    assert snapshot(built) == good
    assert run(["git", "status", "--porcelain"], built).stdout == ""


def test_bad_lr_under_dvc_exp_run_deletes_nothing(built):
    commit(built, "good")
    good = snapshot(built)

    result = run(["dvc", "exp", "run", "-S", "train.lr=abc"], built, check=False)
    assert result.returncode != 0
    assert "validate: error: params.yaml: train.lr = 'abc' is not allowed" in result.stderr
    assert snapshot(built) == good
    # DVC leaves its -S edit in the workspace: params.yaml keeps the bad value until reverted.
    assert "lr: abc" in (built / "params.yaml").read_text()
    # The recovery docs/failure-behaviour.md gives. Not `git checkout params.yaml`: DVC rewrites
    # the file within the second and at the same size, so git's stat check takes it as unchanged.
    committed = run(["git", "show", "HEAD:params.yaml"], built).stdout
    (built / "params.yaml").write_text(committed)
    again = run(["dvc", "repro"], built)
    assert "Running stage 'train'" not in again.stdout
    assert snapshot(built) == good


def test_a_misspelt_new_section_stops_the_pipeline(built):
    good = snapshot(built)
    with (built / "params.yaml").open("a") as f:
        f.write("trian:\n  lr: 0.1\n")
    result = run(["dvc", "repro"], built, check=False)
    assert result.returncode != 0
    assert "unknown key 'trian'" in result.stderr
    assert snapshot(built) == good
