"""The documentation is executed: the README's walkthroughs, then every page under docs/,
replayed from a fresh clone as a newcomer would.

What is replayed, page by page in transcripts.PAGES order, in one clone and one shell: the
Quick start's ```bash block (its commands, one per line, except `./run.sh test`, the suite
this test belongs to) and every ```console block, a transcript, checked as transcripts.py
describes. Every other block of commands is marked as not replayed, and says why (checked
here, fast).

The clone is made with `git clone` from a git repo of the working tree's tracked files, in a
clean environment: HOME an empty folder, no git identity (no GIT_AUTHOR_*/GIT_COMMITTER_*, no
system git config), no virtualenv on PATH. So the README must set up everything itself: the
venv (`./run.sh repro`), the git identity that `dvc exp` and `git commit` need, the remote.
Each command runs in its own `bash`, starting in the folder and with the exported variables the
previous command left (so `cd` and `source .venv/bin/activate` carry over, as in a terminal).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import ROOT, run
from transcripts import (
    ELIDED,
    PAGES,
    Block,
    Command,
    blocks,
    broken_links,
    docs_pages,
    is_replayed,
    mismatch,
    parse_transcript,
    unmarked,
)

CLONE_URL = "<repo-url>"  # the placeholder the Quick start clones from
NOT_REPLAYED = ("./run.sh test",)  # would run this very suite again, inside itself
TIMEOUT_S = 900  # per command: the first `./run.sh repro` installs torch and dvc
# For whoever edits the pages: every command's real output is appended to this file, and the
# replay goes on past a mismatch instead of stopping there.
DUMP = os.environ.get("TORCHREG_TRANSCRIPT_DUMP")


@dataclass
class Walkthrough:
    section: str  # the heading it stands under (the page too, past the README)
    commands: list[Command]


def parse(pages: list[str], texts: dict[str, str] | None = None) -> list[Walkthrough]:
    """The replayed blocks of the pages, grouped by page and section, in order."""
    walkthroughs: dict[str, list[Command]] = {}
    for page in pages:
        for block in blocks(page, (texts or {}).get(page)):
            if not is_replayed(block):
                continue
            name = block.section if page == "README.md" else f"{page}: {block.section}"
            if block.fence == "console":
                commands = parse_transcript(block.lines)
            else:
                commands = [
                    Command(cmd, expected=[ELIDED])  # its output is not shown
                    for cmd in (b.strip() for b in block.lines)
                    if cmd and not cmd.startswith("#") and not cmd.startswith(NOT_REPLAYED)
                ]
            walkthroughs.setdefault(name, []).extend(commands)
    return [Walkthrough(s, cmds) for s, cmds in walkthroughs.items()]


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


WALKTHROUGHS = parse(PAGES)


def test_every_page_is_replayed_in_order():
    assert set(PAGES) == docs_pages(), "list every page under docs/ in transcripts.PAGES"
    assert PAGES[0] == "README.md"


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_replayed_or_marked(page):
    wrong = [f"{b.section}: {why}" for b in blocks(page) if (why := unmarked(b))]
    assert not wrong, f"{page}: {wrong}"


@pytest.mark.parametrize("page", PAGES)
def test_every_link_resolves(page):
    assert broken_links(page) == [], page


def test_broken_links_are_found():
    text = "[a](docs/versions.md) [b](docs/nope.md) [c](#quick-start) [d](#nowhere) [e](https://x)"
    assert broken_links("README.md", "## Quick start\n" + text) == ["docs/nope.md", "#nowhere"]
    assert broken_links("README.md", "[s](docs/reproducibility.md#same-bytes-on-any-cpu)") == []
    assert broken_links("README.md", "[s](docs/reproducibility.md#same-bytes)") != []


def test_block_rules():
    def block(fence, *lines, section="Usage"):
        return Block("docs/x.md", section, fence, list(lines))

    assert unmarked(block("console", "$ dvc repro")) is None
    assert unmarked(block("text", "dvc.yaml   the pipeline")) is None
    assert unmarked(block("text", "$ dvc repro"))  # a transcript in disguise
    assert unmarked(block("bash", "dvc repro"))
    assert unmarked(block("", "[a] $ dvc exp run"))
    assert unmarked(block("bash", "# illustrative: needs a browser", "dvc plots show")) is None
    assert unmarked(block("", "# checked by tests/test_team.py", "[a] $ dvc exp run")) is None
    quick = Block("README.md", "Quick start", "bash", ["./run.sh repro"])
    assert unmarked(quick) is None and is_replayed(quick)


def test_readme_has_the_walkthroughs():
    sections = [w.section for w in WALKTHROUGHS]
    assert sections[0] == "Quick start", sections
    assert any("git clone" in c.line for c in WALKTHROUGHS[0].commands)
    assert any(s.startswith("docs/") for s in sections), sections  # the pages are replayed too
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


def test_pages_are_parsed_in_order():
    texts = {
        "README.md": "## Quick start\n```bash\ngit clone x\n./run.sh test\n```\n",
        "docs/b.md": "# B\n## Use\n```console\n$ false\n[1]\n```\n",
    }
    quick, use = parse(["README.md", "docs/b.md"], texts)
    assert (quick.section, [c.line for c in quick.commands]) == ("Quick start", ["git clone x"])
    assert (use.section, use.commands[0].status) == ("docs/b.md: Use", 1)


def test_transcript_matching():
    table = "x\nTask  Name  Created  Status\n7f3a2b1  too-fast  10:02 AM  Failed\n"
    assert mismatch(["...", "Task Name ... Status", "... too-fast ... Failed"], table) is None
    assert mismatch(["a", "b"], "a\nb\n") is None
    assert mismatch(["b", "a"], "a\nb\n") == "shown line 1 not printed where shown: 'b'"
    # Every printed line is shown, or stood for by a line of `...` (none, or many).
    assert mismatch(["a"], "a\nb\n") == "printed but not shown (no `...` stands for it): 'b'"
    assert mismatch(["a", "..."], "a\nb\nc\n") is None
    assert mismatch(["a", "...", "c"], "a\nc\n") is None
    assert mismatch(["...", "c", "...", "c"], "c\nb\nc\n") is None
    assert mismatch(["...", "err"], "err\nerr\n") is None
    assert mismatch(["err"], "err\nerr\n") is not None  # printed twice, shown once
    assert mismatch(["... ok", "... ok"], "1 ok\n") == (
        "shown line 2 not printed where shown: '... ok'"
    )
    assert mismatch(["0.0082"], "0.00821") is not None  # whole lines, not substrings
    assert mismatch([], "") is None and mismatch([], "x") is not None
    (cmd,) = parse_transcript(["$ false", "x", "", "...", "[1]"])
    assert (cmd.line, cmd.status, cmd.expected) == ("false", 1, ["x", "..."])


@pytest.mark.slow
@pytest.mark.parametrize("walkthrough", WALKTHROUGHS, ids=lambda w: w.section)
def test_walkthrough(shell, walkthrough):
    if shell.failed:
        pytest.skip(f"an earlier walkthrough failed: {shell.failed}")
    shell.failed = walkthrough.section
    for command in walkthrough.commands:
        result = shell.run(command.line.replace(CLONE_URL, str(shell.upstream)))
        problem = mismatch(command.expected, result.stdout)
        if DUMP:
            with open(DUMP, "a") as dump:
                dump.write(f"=== {walkthrough.section}\n$ {command.line}\n{result.stdout}")
                dump.write(f"[exit {result.returncode}; {problem or 'as shown'}]\n")
            continue
        assert result.returncode == command.status and not problem, (
            f"{walkthrough.section}: $ {command.line}\n"
            f"exit status {result.returncode} (shown: {command.status})\n"
            f"{problem}\n--- output ---\n{result.stdout}"
        )
    shell.failed = None
