"""run.sh's set-up when torch cannot be fetched: one line that says where it looked and how to
point pip at a wheel or an index, exit status 2, and no half-made environment marked done.
Runs in a copy of the three files the set-up reads (it replaces .venv in its own folder)."""

import os
import re
import shutil
import subprocess
import sys

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


@pytest.mark.slow
def test_with_the_venv_activated_the_set_up_makes_a_new_one(setup_copy):
    """The README has users activate .venv; when the lock changes, the set-up deletes it and
    makes a new one. With .venv's Python first on PATH, that is not the Python to make it with:
    it goes with the old one ('.venv/bin/python3.11: No such file or directory')."""
    venv = setup_copy / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_"))}
    env |= {
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",  # as `source .venv/bin/activate` does
        "VIRTUAL_ENV": str(venv),
        "HOME": str(setup_copy),
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_FIND_LINKS": "",
        "TORCH_INDEX_URL": "",  # torch is nowhere: the set-up stops at its first step
    }
    result = subprocess.run(
        ["./run.sh", "setup"], cwd=setup_copy, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert "No such file" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("run.sh: error: cannot install torch")
    assert (venv / "bin" / "python").exists()  # the new venv, made


# What a Mac's base system has (bash 3.2, BSD grep): run.sh must need nothing more.
MAC_TOOLS = ("bash", "env", "cat", "grep", "rm", "dirname")
GNU_ONLY = ("sha256sum", "readlink -f", "sed -i ", "date -d", "timeout ", "grep -P", "stat -c")


def gnu_only(script: str) -> list[str]:
    """The GNU-only commands (or options) a shell script runs; its comments do not count."""
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    return [t for t in GNU_ONLY if re.search(rf"(?<![-\w]){re.escape(t)}", code)]


def test_run_sh_uses_no_gnu_only_tool():
    assert gnu_only("# no sha256sum here\npip --timeout 15 x\n") == []
    assert gnu_only("want=$(sha256sum f)\n") == ["sha256sum"]
    assert gnu_only("timeout 5 cmd\n") == ["timeout "]
    assert gnu_only((ROOT / "run.sh").read_text()) == []


@pytest.mark.slow
def test_on_a_mac_run_sh_asks_for_pypis_torch_with_a_macs_tools_alone(setup_copy, tmp_path):
    """`uname -s` says Darwin: torch is the plain version (PyPI's macOS build is the CPU one),
    and the set-up runs with the tools a Mac has (any other would be 'command not found')."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in MAC_TOOLS:
        (tools / name).symlink_to(shutil.which(name))
    (tools / "python3").symlink_to(sys.executable)
    (tools / "uname").write_text("#!/bin/sh\necho Darwin\n")
    (tools / "uname").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_"))}
    env |= {
        "PATH": str(tools),
        "HOME": str(setup_copy),
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_FIND_LINKS": "",
        "TORCH_INDEX_URL": "",  # nowhere: nothing is downloaded
    }
    result = subprocess.run(
        ["bash", "run.sh", "setup"], cwd=setup_copy, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "command not found" not in result.stderr
    lines = result.stderr.strip().splitlines()
    torch = next(line for line in lines if line.startswith("run.sh: 1/3 "))
    assert torch == "run.sh: 1/3 torch==2.13.0 (the largest)"
    assert lines[-1].startswith("run.sh: error: cannot install torch==2.13.0: ")
