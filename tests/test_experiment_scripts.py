"""The scripts under experiments/: they start from the committed params, say so, and explain
themselves with --help."""

import subprocess
import sys

import pytest

from support import ROOT, run, subprocess_env

SCRIPTS = ["seeds", "sweep", "activations"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_explains_the_script(script):
    result = run(
        [sys.executable, str(ROOT / "experiments" / f"{script}.py"), "--help"],
        ROOT,
        env=subprocess_env(ROOT / "src"),
    )
    description = " ".join(result.stdout.split("\n\n")[1].split())
    assert len(description) > 40, result.stdout
    assert description.endswith("."), description  # not cut off mid-sentence


@pytest.fixture
def committed(tmp_path, monkeypatch):
    """A git repo whose HEAD has the project's params.yaml and whose workspace has lr 0.5."""
    run(["git", "init", "-q", "-b", "main"], tmp_path)
    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text)
    run(["git", "add", "params.yaml"], tmp_path)
    run(["git", "commit", "-q", "-m", "params"], tmp_path)
    workspace = text.replace("lr: auto  ", "lr: 0.5   ").replace("epochs: auto", "epochs: 3   ")
    (tmp_path / "params.yaml").write_text(workspace)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_seeds_trains_from_the_committed_params(committed, capsys):
    import seeds

    params, source = seeds.committed_params()
    assert params.train.lr == "auto"  # git HEAD's, not the workspace's 0.5
    assert source.startswith("params.yaml at git HEAD (")
    capsys.readouterr()
    one = ["--data-seeds", "0", "--train-seeds", "0", "--options", "constant"]
    assert seeds.main(["--params", "params.yaml", *one]) == 0  # the workspace's, when asked
    out, err = capsys.readouterr()
    assert err.startswith("seeds: params.yaml; 1 seed pairs")
    assert "params.yaml: train.loss = mae, 3 epochs, lr 0.5" in out


def test_seeds_outside_a_repository_is_one_line(tmp_path, monkeypatch, capsys):
    import seeds

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert seeds.main(["--data-seeds", "0", "--train-seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("seeds: error: cannot read params.yaml at git HEAD") and err.count("\n") == 1
    )


def test_activations_refuses_a_workspace_params_file_that_differs(committed):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments/activations.py")],
        cwd=committed,
        env=subprocess_env(ROOT / "src"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("activations: error: params.yaml differs from git HEAD's")
    assert "Traceback" not in result.stderr
