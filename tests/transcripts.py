"""The documentation's fenced blocks, read the way tests/test_readme.py replays them, and the
matching of a shown transcript against real output (also used by tests/test_team.py).

Pages: README.md, then every page under docs/, in PAGES order. In a page:
- a ```console block is a transcript: a line starting with `$ ` is a command, the lines up to
  the next command what it prints. The shown lines are the real output's lines, all of them
  and in the same order, except that a line of just `...` stands for any number of lines
  (none included); `...` within a line stands for any text; runs of spaces count as one; blank
  lines are not compared. A line `[N]` says the command exits with status N; without one it
  must succeed.
- the README's Quick start ```bash block is replayed command by command (output not shown);
- a ```text block holds no commands (a file tree, a diagram);
- any other block of commands (```bash, or one without a language) starts with a comment
  line saying why it is not replayed: `# illustrative: <why>` or `# checked by tests/<file>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from support import ROOT

# The order a reader follows, and the order the pages are replayed in (one clone, one shell).
PAGES = [
    "README.md",
    "docs/failure-behaviour.md",
    "docs/versions.md",
    "docs/sweeps.md",
    "docs/interrupted-runs.md",
    "docs/activations.md",
    "docs/dependencies.md",
    "docs/performance.md",
    "docs/pipeline.md",
    "docs/reproducibility.md",
    "docs/scaling-out.md",
    "docs/schedules.md",
    "docs/team.md",
    "docs/testing.md",
    "docs/mutation-testing.md",
    "docs/internals/same-bytes.md",
    "docs/internals/sweeps.md",
    # Last: it commits a table and leaves its experiments in the workspace.
    "docs/own-data.md",
]
NOT_REPLAYED = ("# illustrative", "# checked by tests/")


@dataclass
class Block:
    page: str
    section: str  # the heading it stands under
    fence: str  # the info string: console, bash, text, ...
    lines: list[str]


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)  # shown output lines (`...` kept), no blanks
    status: int = 0


def blocks(page: str, text: str | None = None) -> list[Block]:
    """Every fenced block of a page (ROOT / page unless text is given), in order."""
    text = (ROOT / page).read_text() if text is None else text
    found, section, fence, block = [], "", None, []
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
        found.append(Block(page, section, fence, block))
        fence = None
    return found


def is_replayed(block: Block) -> bool:
    return block.fence == "console" or (
        block.page == "README.md" and block.section == "Quick start" and block.fence == "bash"
    )


def unmarked(block: Block) -> str | None:
    """Why a block breaks the rules above, or None."""
    if is_replayed(block):
        return None
    if block.fence == "text":
        if any(line.lstrip().startswith("$ ") for line in block.lines):
            return "a ```text block with commands (`$ `): make it ```console, or mark it"
        return None
    first = block.lines[0].strip() if block.lines else ""
    if not first.startswith(NOT_REPLAYED):
        return f"a ```{block.fence} block neither replayed nor marked {' or '.join(NOT_REPLAYED)}"
    return None


def parse_transcript(block: list[str]) -> list[Command]:
    commands: list[Command] = []
    for line in block:
        if line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif not commands:
            raise ValueError(f"transcript: output before any command: {line!r}")
        elif re.fullmatch(r"\[\d+\]", line.strip()):
            commands[-1].status = int(line.strip()[1:-1])
        elif line.strip():
            commands[-1].expected.append(line)
    return commands


def normalize(line: str) -> str:
    return " ".join(line.split())


def line_pattern(shown: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in normalize(shown).split("...")))


ELIDED = "..."  # a shown line that stands for any number of real lines


def mismatch(expected: list[str], output: str) -> str | None:
    """Where the shown lines part from the output's lines (None: they agree).

    Glob matching over lines: each shown line matches exactly one real line, in order; a line
    of just `...` matches any run of them, the empty run included."""
    shown = [normalize(line) for line in expected if line.strip()]
    real = [normalize(line) for line in output.splitlines() if line.strip()]
    patterns = [None if line == ELIDED else line_pattern(line) for line in shown]
    i = j = 0  # next shown line, next real line
    star = back = -1  # the last `...` seen, and the real line it was tried up to
    furthest = 0  # the most shown lines matched at once, for the message
    after = 0  # the real line after the first match of every shown line
    while j < len(real):
        if i < len(shown) and patterns[i] is not None and patterns[i].fullmatch(real[j]):
            i, j = i + 1, j + 1
            if i > furthest:
                furthest, after = i, j
        elif i < len(shown) and patterns[i] is None:
            star, back, i = i, j, i + 1
        elif star >= 0:
            back += 1
            i, j = star + 1, back
        else:
            break
    while i < len(shown) and patterns[i] is None:
        i += 1
    if i == len(shown) and j == len(real):
        return None
    if furthest < len(shown):
        return f"shown line {furthest + 1} not printed where shown: {shown[furthest]!r}"
    return f"printed but not shown (no `...` stands for it): {real[after]!r}"


def docs_pages() -> set[str]:
    return {"README.md", *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))}


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    as dashes."""
    found = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            found.add(title.replace(" ", "-"))
    return found


def broken_links(page: str, text: str | None = None) -> list[str]:
    """The page's relative links whose file, or whose heading anchor, does not exist."""
    path = ROOT / page
    text = path.read_text() if text is None else text
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target) if target else path
        if not file.exists():
            broken.append(link)
        elif anchor and file.suffix == ".md":
            content = text if file == path else file.read_text()
            if anchor not in heading_anchors(content):
                broken.append(link)
    return broken
