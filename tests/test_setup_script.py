"""run.sh's set-up when torch cannot be fetched: one line that says where it looked and how to
point pip at a wheel or an index, exit status 2, and no half-made environment marked done.
Runs in a copy of the three files the set-up reads (it replaces .venv in its own folder)."""

import os
import shutil
import subprocess

import pytest

from support import ROOT


@pytest.fixture
def setup_copy(tmp_path):
    for name in ("run.sh", "requirements.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


@pytest.mark.slow
def test_torch_nowhere_is_one_line_naming_both_remedies(setup_copy):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_"))}
    env |= {
        "HOME": str(setup_copy),
        "PIP_CONFIG_FILE": "/dev/null",  # no find-links from this machine's pip configuration
        "PIP_FIND_LINKS": "",
        "TORCH_INDEX_URL": "",  # and no index: torch is nowhere
    }
    result = subprocess.run(
        ["./run.sh", "setup"], cwd=setup_copy, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith("run.sh: torch==") and "not in pip's find-links" in lines[-2]
    assert lines[-1].startswith("run.sh: error: cannot install torch==")
    assert "PIP_FIND_LINKS=" in lines[-1] and "TORCH_INDEX_URL=" in lines[-1]
    assert not (setup_copy / ".venv/.installed").exists()
