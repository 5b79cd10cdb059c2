"""The README is executed: its walkthroughs, replayed from a fresh clone as a newcomer would.

What is replayed, in README order, in one clone:
- the Quick start's ```bash block: its commands, one per line (the output is not shown there),
  except `./run.sh test`, the suite this test belongs to;
- every ```console block, a transcript. A line starting with `$ ` is a command; the lines up to
  the next command are what it prints (stdout and stderr together). Every shown line must
  match a line of the real output, a different one each; other lines may come between, in any
  order (a parallel sweep finishes in any order). Runs of spaces count as one; blank lines and
  lines of just `...` (lines left out) are not checked. `...` within a line stands for any
  text (times, hashes, random experiment names). A line `[N]` says the command exits with
  status N; without one it must succeed.

The clone is made with `git clone` from a git repo of the working tree's tracked files, in a
clean environment: HOME an empty folder, no git identity (no GIT_AUTHOR_*/GIT_COMMITTER_*, no
system git config), no virtualenv on PATH. So the README must set up everything itself: the
venv (`./run.sh repro`), the git identity that `dvc exp` and `git commit` need, the remote.
Each command runs in its own `bash`, starting in the folder and with the exported variables the
previous command left (so `cd` and `source .venv/bin/activate` carry over, as in a terminal).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import ROOT, run

README = ROOT / "README.md"
CLONE_URL = "<repo-url>"  # the placeholder the Quick start clones from
NOT_REPLAYED = ("./run.sh test",)  # would run this very suite again, inside itself
TIMEOUT_S = 900  # per command: the first `./run.sh repro` installs torch and dvc


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)  # shown output lines, blanks dropped
    status: int = 0


@dataclass
class Walkthrough:
    section: str  # the README heading it stands under
    commands: list[Command]


def parse(text: str) -> list[Walkthrough]:
    """The replayed blocks of the README, grouped by section, in order."""
    walkthroughs: dict[str, list[Command]] = {}
    section, fence, block = "", None, []
    for line in text.splitlines():
        if fence is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif line.startswith("```"):
                fence, block = line[3:].strip(), []
            continue
        if line.strip() != "```":
            block.append(line)
            continue
        if fence == "console":
            walkthroughs.setdefault(section, []).extend(parse_transcript(block))
        elif fence == "bash" and section == "Quick start":
            walkthroughs.setdefault(section, []).extend(
                Command(cmd)
                for cmd in (b.strip() for b in block)
                if cmd and not cmd.startswith("#") and not cmd.startswith(NOT_REPLAYED)
            )
        fence = None
    return [Walkthrough(s, cmds) for s, cmds in walkthroughs.items()]


def parse_transcript(block: list[str]) -> list[Command]:
    commands: list[Command] = []
    for line in block:
        if line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif not commands:
            raise ValueError(f"README transcript: output before any command: {line!r}")
        elif re.fullmatch(r"\[\d+\]", line.strip()):
            commands[-1].status = int(line.strip()[1:-1])
        elif line.strip() and line.strip() != "...":
            commands[-1].expected.append(line)
    return commands


def normalize(line: str) -> str:
    return " ".join(line.split())


def line_pattern(shown: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in normalize(shown).split("...")))


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The shown lines that match no line of the output (an empty list: all found)."""
    unused = [normalize(line) for line in output.splitlines()]
    missing = []
    # The most specific lines first, so that `... Success` cannot take the `too-fast` line.
    for shown in sorted(expected, key=lambda line: line.count("...")):
        pattern = line_pattern(shown)
        match = next((i for i, line in enumerate(unused) if pattern.fullmatch(line)), None)
        if match is None:
            missing.append(shown)
        else:
            del unused[match]
    return missing


class Shell:
    """Each command in a fresh bash that starts where the previous one ended: the same working
    folder and the same exported variables, as one terminal would keep them."""

    def __init__(self, cwd: Path, env: dict[str, str], state: Path):
        self.env, self.state = env, state
        self.upstream: Path | None = None  # the repo that `<repo-url>` stands for
        self.failed: str | None = None  # the walkthrough that failed; later ones are skipped
        state.mkdir()
        (state / "cwd").write_text(str(cwd))
        (state / "env").write_text("")

    def run(self, command: str) -> subprocess.CompletedProcess:
        script = (
            # Never run a command anywhere else than where the last one ended.
            f". '{self.state}/env' && cd -- \"$(cat '{self.state}/cwd')\" || exit 99\n"
            f"{command}\n"
            "__status=$?\n"
            f"pwd > '{self.state}/cwd'; export -p > '{self.state}/env'\n"
            "exit $__status\n"
        )
        return subprocess.run(
            ["bash", "-c", script],
            env=self.env,
            cwd=self.state,  # not this checkout, whatever happens
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT_S,
        )


def newcomer_env(home: Path) -> dict[str, str]:
    """This process's environment, less what a fresh account would not have."""
    venvs = {str(Path(p)) for p in (os.environ.get("VIRTUAL_ENV"),) if p}
    path = [
        p
        for p in os.environ["PATH"].split(os.pathsep)
        if p
        and not (Path(p).parent / "pyvenv.cfg").exists()
        and not any(p.startswith(v) for v in venvs)
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GIT_", "DVC_", "XDG_", "PYTHON", "VIRTUAL_ENV", "PYTEST_"))
    }
    keep = ("GIT_SSL_CAINFO",)  # how this machine reaches https, not who the user is
    env.update({k: os.environ[k] for k in keep if k in os.environ})
    env.update(HOME=str(home), PATH=os.pathsep.join(path), GIT_CONFIG_NOSYSTEM="1")
    return env


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """A terminal in an empty folder, and the project to clone at `<repo-url>`."""
    tmp = tmp_path_factory.mktemp("readme")
    upstream = tmp / "upstream"
    files = run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (upstream / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, upstream / name)
    run(["git", "init", "-q", "-b", "main"], cwd=upstream)
    run(["git", "add", "-A"], cwd=upstream)
    run(["git", "commit", "-q", "-m", "torchreg"], cwd=upstream)  # as its authors, not the user
    (tmp / "home").mkdir()
    (tmp / "work").mkdir()
    sh = Shell(tmp / "work", newcomer_env(tmp / "home"), tmp / "shell-state")
    sh.upstream = upstream
    return sh


WALKTHROUGHS = parse(README.read_text())


def test_readme_has_the_walkthroughs():
    sections = [w.section for w in WALKTHROUGHS]
    assert sections[0] == "Quick start", sections
    assert any("git clone" in c.line for c in WALKTHROUGHS[0].commands)
    lines = [c.line for w in WALKTHROUGHS for c in w.commands]
    for needed in (
        "git config user.name",
        "dvc exp run -n",
        "dvc exp show",
        "--run-all",
        "dvc push",
    ):
        assert any(needed in line for line in lines), needed
    assert any(c.status for w in WALKTHROUGHS for c in w.commands)  # a failure is shown too


def test_transcript_matching():
    assert (
        missing_lines(
            ["Task Name ... Status", "... too-fast ... Failed"],
            "x\nTask  Name  Created  Status\n7f3a2b1  too-fast  10:02 AM  Failed\n",
        )
        == []
    )
    assert missing_lines(["b", "a"], "a\nb\n") == []  # any order
    assert missing_lines(["... ok", "... ok"], "1 ok\n") == ["... ok"]  # one line each
    assert missing_lines(["0.0082"], "0.00821") == ["0.0082"]  # whole lines, not substrings
    (cmd,) = parse_transcript(["$ false", "[1]"])
    assert (cmd.line, cmd.status, cmd.expected) == ("false", 1, [])


@pytest.mark.slow
@pytest.mark.parametrize("walkthrough", WALKTHROUGHS, ids=lambda w: w.section)
def test_walkthrough(shell, walkthrough):
    if shell.failed:
        pytest.skip(f"an earlier walkthrough failed: {shell.failed}")
    shell.failed = walkthrough.section
    for command in walkthrough.commands:
        result = shell.run(command.line.replace(CLONE_URL, str(shell.upstream)))
        missing = missing_lines(command.expected, result.stdout)
        assert result.returncode == command.status and not missing, (
            f"README, {walkthrough.section}: $ {command.line}\n"
            f"exit status {result.returncode} (README: {command.status})\n"
            f"not in the output: {missing}\n--- output ---\n{result.stdout}"
        )
    shell.failed = None
