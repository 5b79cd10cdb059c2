"""Many machines, one experiment history: three clones of one bare git origin share their
experiments through `dvc exp push` / `dvc exp pull` and one DVC remote (a folder or S3).

Run with `-rP` to see the transcript (each command and its real output): docs/team.md shows
it, and the test checks that every line the page shows is in it.
"""

import json
import re
import shlex
import subprocess

import pytest

from support import run
from transcripts import blocks, mismatch

MODEL = "models/model.safetensors"
# Machine -> (experiment name, train.lr); the `repo` fixture's baseline lr is 0.05.
SWEEP = {"a": ("lr-0.1", "0.1"), "b": ("lr-0.02", "0.02")}
# The columns worth reading in the transcript (dvc exp show has one per param and metric).
COLUMNS = ["--drop", ".*", "--keep", r"Experiment|train_loss|test\.mae$|train\.lr$"]


@pytest.fixture(params=["local", "s3"])
def dvc_remote(request, tmp_path) -> list[list[str]]:
    """The commands that make one shared DVC remote the default, for the origin's first commit:
    a folder every clone reaches by the same absolute path, or a bucket on the moto server."""
    if request.param == "local":
        return [["dvc", "remote", "add", "-d", "team", str(tmp_path / "dvc-storage")]]
    url = request.getfixturevalue("s3_server")
    return [
        ["dvc", "remote", "add", "-d", "team", "s3://models/team"],
        ["dvc", "remote", "modify", "team", "endpointurl", url],
    ]


def on(machine, cmd, cwd, check=True):
    """Run a command on one "machine" and print it with its output: the test's transcript."""
    merged = {"capture_output": False, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    result = run(cmd, cwd, check=check, **merged)  # as a terminal shows it: one stream
    print(f"[{machine}] $ {shlex.join(cmd)}")
    if result.stdout.strip():
        print(result.stdout.rstrip())
    return result


def show(clone) -> dict[str, dict]:
    """name -> {"params": params.yaml, "metrics": {path: data}} from `dvc exp show --json`."""
    found = {}
    for row in json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout):
        for exp in row.get("experiments") or []:
            data = exp["revs"][0]["data"]
            found[exp["name"]] = {
                "params": data["params"]["params.yaml"]["data"],
                "metrics": {path: m["data"] for path, m in data["metrics"].items()},
            }
    return found


def scalars(tree):
    """The metrics without their lists: DVC leaves list values (learned.w) out of exp show."""
    if isinstance(tree, dict):
        return {k: scalars(v) for k, v in tree.items() if not isinstance(v, list)}
    return tree


PROMPT = re.compile(r"\[\w\] \$ ")


def by_command(transcript: list[str]) -> list[tuple[str, list[str]]]:
    """`[a] $ command` lines, each with the lines under it."""
    found: list[tuple[str, list[str]]] = []
    for line in transcript:
        if PROMPT.match(line):
            found.append((line, []))
        elif found:
            found[-1][1].append(line)
    return found


def page_transcript() -> list[str]:
    """The transcript docs/team.md shows: its block marked as checked by this test."""
    (block,) = [
        b for b in blocks("docs/team.md") if b.lines[:1] == ["# checked by tests/test_team.py"]
    ]
    return block.lines[1:]


def not_shown_as_run(shown: list[str], printed: str) -> list[str]:
    """The page's commands (and output lines) that the run did not print, in order."""
    runs = by_command(printed.splitlines())
    wrong = []
    for command, expected in by_command(shown):
        i = next((i for i, (c, _) in enumerate(runs) if c == command), None)
        if i is None:
            wrong.append(f"not run: {command}")
            continue
        _, output = runs.pop(i)
        problem = mismatch(expected, "\n".join(output))
        if problem:
            wrong.append(f"{command}: {problem}")
    return wrong


def test_page_transcript_check():
    printed = "[a] $ dvc push\n3 files pushed\n[c] $ dvc pull\nEverything is up to date.\n"
    assert not_shown_as_run(["[a] $ dvc push", "...", "3 files pushed"], printed) == []
    assert not_shown_as_run(["[a] $ dvc push", "| a | b |"], printed) == [
        "[a] $ dvc push: shown line 1 not printed where shown: '| a | b |'"
    ]
    assert not_shown_as_run(["[c] $ dvc pull"], printed) == [
        "[c] $ dvc pull: printed but not shown (no `...` stands for it): "
        "'Everything is up to date.'"
    ]
    assert not_shown_as_run(["[b] $ dvc push"], printed) == ["not run: [b] $ dvc push"]


@pytest.mark.slow
def test_three_machines_share_one_experiment_history(repo, tmp_path, dvc_remote, capsys):
    # The shared origin: a bare repository holding the baseline, whose .dvc/config names the
    # one DVC remote every machine pushes to and pulls from.
    for cmd in dvc_remote:
        run(cmd, repo)
    run(["git", "commit", "-q", "-am", "shared DVC remote"], repo)
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    run(["git", "push", "-q", str(origin), "main"], repo)
    machines = {m: tmp_path / m for m in "abc"}
    for clone in machines.values():
        run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)

    # Machines a and b each run one experiment and push it: git refs to origin, outputs to
    # the DVC remote.
    trained = {}
    for machine, (name, lr) in SWEEP.items():
        clone = machines[machine]
        on(machine, ["dvc", "exp", "run", "-n", name, "-S", f"train.lr={lr}"], clone)
        pushed = on(machine, ["dvc", "exp", "push", "origin", name], clone).stdout
        assert f"Pushed experiment {name} to Git remote 'origin'" in pushed
        trained[name] = {
            "model": (clone / MODEL).read_bytes(),
            "metrics": {
                path: json.loads((clone / path).read_text())
                for path in ("metrics/evaluate.json", "dvclive/metrics.json")
            },
            "uploaded": pushed,
        }
    first, second = (name for name, _ in SWEEP.values())
    assert trained[first]["model"] != trained[second]["model"]
    # The remote is content-addressed: b's data is a's data, so only b's model is new.
    assert "5 files uploaded" in trained[first]["uploaded"]
    assert "1 file uploaded" in trained[second]["uploaded"]

    # Machine c sees both experiments without downloading any output...
    c = machines["c"]
    listed = on("c", ["dvc", "exp", "list", "origin"], c).stdout
    assert first in listed and second in listed
    on("c", ["dvc", "exp", "pull", "origin", "--no-cache"], c)
    assert not (c / ".dvc/cache/files").exists()
    on("c", ["dvc", "exp", "show", "--md", *COLUMNS], c)
    shown = show(c)
    for name, lr in SWEEP.values():
        assert shown[name]["params"]["train"]["lr"] == float(lr)
        assert shown[name]["metrics"] == scalars(trained[name]["metrics"])

    # ...then fetches the chosen one's outputs, applies it and has a's model, bit for bit.
    on("c", ["dvc", "exp", "pull", "origin", first], c)  # says "No experiments to pull."
    assert (c / ".dvc/cache/files").is_dir()  # but fetched the outputs all the same
    on("c", ["dvc", "exp", "apply", first], c)
    assert "Everything is up to date." in on("c", ["dvc", "pull"], c).stdout
    assert (c / MODEL).read_bytes() == trained[first]["model"]
    assert "Data and pipelines are up to date." in on("c", ["dvc", "status"], c).stdout
    assert "Running stage" not in on("c", ["dvc", "repro"], c).stdout

    # Applying an experiment whose outputs were never fetched: git's side is applied, the
    # checkout fails (exit 255, names the missing files), and `dvc pull` completes it.
    failed = on("c", ["dvc", "exp", "apply", second], c, check=False)
    assert failed.returncode != 0
    assert MODEL in failed.stdout
    assert "1 file fetched" in on("c", ["dvc", "pull"], c).stdout
    assert (c / MODEL).read_bytes() == trained[second]["model"]
    assert "Running stage" not in on("c", ["dvc", "repro"], c).stdout

    # What docs/team.md shows is what this run printed.
    printed = capsys.readouterr().out
    print(printed)  # still shown by -rP
    assert not_shown_as_run(page_transcript(), printed) == []
