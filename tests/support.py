"""Helpers the tests import: paths, the one environment for subprocesses, running dvc, git and
the stage scripts, and the one-line error check. Fixtures live in conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's dvc and python, whatever PATH says

sys.path.insert(0, str(ROOT / "experiments"))
from sweep import set_params  # noqa: E402

__all__ = [
    "BIN",
    "GIT_ENV",
    "OUTPUTS",
    "ROOT",
    "Payload",
    "commit",
    "one_clean_line",
    "run",
    "run_stage",
    "set_params",
    "start_stage",
    "subprocess_env",
]

# Every output of `dvc repro`.
OUTPUTS = [
    "data/train.npy",
    "data/test.npy",
    "models/model.safetensors",
    "dvclive/metrics.json",
    "dvclive/plots/metrics/train_loss.tsv",
    "metrics/evaluate.json",
    "plots/predictions.tsv",
    "plots/curves.tsv",
    "plots/fit.png",
    "plots/loss.png",
    "plots/predicted_vs_actual.png",
    "plots/residuals.png",
]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def subprocess_env(
    pythonpath: str | Path = "src",
    *,
    inherit: bool = True,
    drop: tuple[str, ...] = (),
    **extra: str,
) -> dict[str, str]:
    """The environment of every subprocess the tests start (dvc, git, stage scripts, torchrun).

    With inherit: this process's environment less DVC_ROOT (which points a stage at a DVC
    repo) and less the variables whose names start with a prefix in `drop`, plus a git
    identity and the venv's bin first on PATH. Without: nothing but PATH="" (for a script
    that must need nothing else). PYTHONPATH is `pythonpath`: the default "src" is relative,
    so a subprocess in a copy of the repo imports the copy's own package; a folder without
    one passes ROOT / "src". `extra` is added last."""
    if inherit:
        env = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
        env.pop("DVC_ROOT", None)
        env.update(GIT_ENV)
        env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    else:
        env = {"PATH": ""}
    return {**env, "PYTHONPATH": str(pythonpath), **extra}


def load_stage(name: str):
    """A stage script (stages/<name>.py) imported as a module, to call its run()."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_stage", ROOT / f"stages/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run dvc, git or any command in cwd; with check, a failure shows its output."""
    kw.setdefault("capture_output", True)
    kw.setdefault("env", subprocess_env())
    result = subprocess.run(cmd, cwd=cwd, text=True, **kw)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def run_stage(
    repo: Path, name: str, *args: str, check: bool = False, **kw
) -> subprocess.CompletedProcess:
    """Run stages/<name>.py in repo (a copy of the project) as DVC would, without DVC."""
    result = run([sys.executable, f"stages/{name}.py", *args], repo, check=False, **kw)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def start_stage(repo: Path, name: str, **kw) -> subprocess.Popen:
    """stages/<name>.py in repo, started and left running, its stdout and stderr piped."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("env", subprocess_env())
    return subprocess.Popen([sys.executable, f"stages/{name}.py"], cwd=repo, text=True, **kw)


def one_clean_line(result: subprocess.CompletedProcess, stage: str, alone: bool = False) -> str:
    """The one `<stage>: error: ` line of a run that failed with exit status 2 and no
    traceback; with alone, the only line on stderr."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    if alone:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{stage}: error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


class Payload:
    """Pickles to a call of open(path, "w"): unpickling it creates the file, so the file's
    existence shows that a loader ran code from the data."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
