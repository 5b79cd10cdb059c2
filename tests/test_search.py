"""The adaptive search (experiments/search.py).

Fast: the space file's refusals, the -S values a trial becomes, and the search loop itself on
a known function standing in for the experiments: the same trials and best every time, whatever
order a batch's results come in; killed after any batch and run again over what had landed, it
ends with the uninterrupted search's trials and asks for nothing twice. Slow: a real cluster of
separate processes (the sweep's: scheduler and two workers on loopback), driven by the command
as a user types it."""

from __future__ import annotations

import itertools
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ROOT, run, subprocess_env

sys.path.insert(0, str(ROOT / "experiments"))
from cluster_sweep import SweepError, experiment_name  # noqa: E402
from search import Param, best_of, read_space, search  # noqa: E402

from test_cluster_sweep import cluster, show  # noqa: E402, F401 - the sweep's cluster fixture

SPACE = """\
train.lr: {float: [1.0e-4, 0.1], log: true}
train.batch_size: {int: [8, 128], log: true}
model.hidden: {choice: [[16], [32, 32]]}
model.activation: {choice: [relu, tanh]}
"""


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return read_space(path, ROOT / "params.yaml")


def objective(point) -> float:
    """A known function of a trial's params, its best at lr 0.01, batch 32, [32, 32], tanh."""
    values = dict(o.split("=", 1) for o in point)
    loss = (math.log10(float(values["train.lr"])) + 2) ** 2
    loss += (math.log2(int(values["train.batch_size"])) - 5) ** 2 / 4
    loss += 0.0 if values["model.hidden"] == "[32,32]" else 0.3
    return loss + (0.0 if values["model.activation"] == "tanh" else 0.2)


class Origin:
    """Stands for the experiments on origin: what ran, how often each point was run."""

    def __init__(self, shuffle: int | None = None, fail=lambda point: False):
        self.landed: dict[str, float | None] = {}
        self.runs: list[str] = []
        self.rng = random.Random(shuffle) if shuffle is not None else None
        self.fail = fail

    def run_batch(self, points):
        todo = [p for p in points if experiment_name(p) not in self.landed]
        if self.rng is not None:  # the order in which trials finish
            self.rng.shuffle(todo)
        for point in todo:
            name = experiment_name(point)
            self.runs.append(name)
            self.landed[name] = None if self.fail(point) else objective(point)
        return [self.landed[experiment_name(p)] for p in points]


def summary(trials):
    return [(t.number, t.point, t.value) for t in trials]


def test_the_same_search_whatever_order_trials_finish_in(space):
    first = search(space, 12, 7, 4, Origin().run_batch)
    for order in (1, 2):
        again = search(space, 12, 7, 4, Origin(shuffle=order).run_batch)
        assert summary(again) == summary(first)
    other_seed = search(space, 12, 8, 4, Origin().run_batch)
    assert summary(other_seed) != summary(first)
    best = best_of(first, "minimize")
    assert best.value == min(t.value for t in first)


def test_a_killed_search_run_again_ends_as_one_that_never_stopped(space):
    uninterrupted = search(space, 12, 3, 4, Origin().run_batch)

    class Killed(Exception):
        pass

    origin = Origin()
    calls = 0

    def dies_after_two_batches(points):
        nonlocal calls
        calls += 1
        if calls == 3:
            origin.run_batch(points[:2])  # half the third batch landed, then kill -9
            raise Killed
        return origin.run_batch(points)

    with pytest.raises(Killed):
        search(space, 12, 3, 4, dies_after_two_batches)
    before = list(origin.runs)
    resumed = search(space, 12, 3, 4, origin.run_batch)
    assert summary(resumed) == summary(uninterrupted)
    assert len(origin.runs) == len(set(origin.runs)), "a trial was trained twice"
    assert set(before) <= {t.name for t in resumed}
    rerun = Origin()
    rerun.landed = dict(origin.landed)
    search(space, 12, 3, 4, rerun.run_batch)
    assert rerun.runs == [], "a rerun trained something"


def test_a_failed_trial_is_told_as_failed_and_the_search_goes_on(space):
    origin = Origin(fail=lambda p: "model.activation=relu" in p)
    trials = search(space, 8, 0, 4, origin.run_batch)
    failed = [t for t in trials if t.value is None]
    assert failed and all("model.activation=relu" in t.point for t in failed)
    assert best_of(trials, "minimize").value is not None


def test_the_search_beats_a_grid_of_more_trials(space):
    """On the known function: a grid of the same params, 3 x 3 x 2 x 2 = 36 points, gets to
    0.27 of the optimum (0); 32 trials of the search get closer, whatever the seed."""
    grid = itertools.product(
        [0.0003, 0.003, 0.03], [8, 24, 64], ["[16]", "[32,32]"], ["relu", "tanh"]
    )
    keys = ("train.lr", "train.batch_size", "model.hidden", "model.activation")
    grid_best = min(objective([f"{k}={v}" for k, v in zip(keys, p, strict=True)]) for p in grid)
    assert grid_best == pytest.approx(0.2707, abs=1e-4)
    for seed in range(5):
        trials = search(space, 32, seed, 4, Origin().run_batch)
        assert best_of(trials, "minimize").value < grid_best, seed


def test_overrides_are_what_dvc_exp_run_takes():
    assert Param("train.lr", "float", 1e-4, 0.1, True).override(0.001) == "train.lr=0.001"
    assert Param("train.batch_size", "int", 8, 128).override(32) == "train.batch_size=32"
    hidden = Param("model.hidden", "choice", choices=([16], [32, 32]))
    assert hidden.override("[32, 32]") == "model.hidden=[32,32]"
    assert Param("model.kind", "choice", choices=("mlp",)).override('"mlp"') == "model.kind=mlp"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("train.lrr: {float: [0.1, 1]}", "train.lrr: not a key of params.yaml (its section has:"),
        ("train.lr: {float: [1, 0.1]}", "float needs [low, high]"),
        ("train.lr: {float: [0, 1], log: true}", "a log scale needs low > 0"),
        ("train.lr: {float: [0.1, 1], step: 2}", "unknown entry 'step'"),
        ("train.lr: [0.1, 1]", "expected one of"),
        ("train.batch_size: {int: [8.5, 16]}", "int needs [low, high]"),
        ("model.kind: {choice: []}", "choice needs a non-empty list"),
        ("model.kind: {choice: [mlp, mlp]}", "listed twice"),
        ("- a\n- b", "expected a mapping of params"),
        ("train.lr: {float: [0.1, 1]", "cannot be read as YAML"),
        ("train.optimizer: {choice: &s [sgd, *s]}", "over 10,000 values"),  # refers to itself
        ("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
         + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
         + "train.optimizer: {choice: *a8}", "over 10,000 values"),  # 10^9 values in 10 lines
        (None, "is a FIFO (named pipe), not a regular file"),
    ],
)  # fmt: skip
def test_a_bad_space_is_one_line(tmp_path, text, says):
    path = tmp_path / "space.yaml"
    if text is None:
        os.mkfifo(path)  # never waited on
    else:
        path.write_text(text)
    with pytest.raises(SweepError) as err:
        read_space(path, ROOT / "params.yaml")
    assert "\n" not in str(err.value) and says in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--metric", "test.mae"], "the test split is reported, never used to choose"),
        (["--trials", "0"], "--trials 0: allowed 1..10000"),
        (["--batch", "0"], "--batch 0: allowed 1..256"),
        (["--space", "missing.yaml"], "--space missing.yaml: not found"),
    ],
)
def test_the_command_refuses_in_one_line(args, says):
    argv = ["--space", "space.yaml", *args] if "--space" not in args else args
    result = run([sys.executable, "experiments/search.py", *argv], ROOT, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert says in result.stderr.strip().splitlines()[-1], result.stderr


# --- slow: a cluster of separate processes ------------------------------------------------

SLOW_SPACE = """\
train.lr: {float: [0.005, 0.2], log: true}
train.batch_size: {choice: [16, 64]}
"""


def searching(repo, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    from test_cluster_sweep import S3_ENV

    cmd = [sys.executable, "experiments/search.py", "--space", "space.yaml", "--trials", "4"]
    cmd += ["--batch", "2", "--seed", "5", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=repo, env=subprocess_env(**S3_ENV), **popen)
    result = run(cmd, repo, check=False, env=subprocess_env(**S3_ENV), timeout=600)
    print(f"$ search {' '.join(args)}\n{result.stdout}{result.stderr}")
    return result


def search_project(tmp) -> Path:
    from test_cluster_sweep import project

    repo = project(tmp, [])
    (repo / "space.yaml").write_text(SLOW_SPACE)
    return repo


def trial_rows(repo) -> list[list[str]]:
    """trials.tsv without the best-so-far column's header: number, name, params, metric."""
    return [line.split("\t") for line in (repo / "search/trials.tsv").read_text().splitlines()]


@pytest.mark.slow
def test_search_survives_its_client_killed_and_the_number_of_workers_changes_nothing(
    cluster,  # noqa: F811 - the fixture imported above
    tmp_path,
):
    """On the two-worker cluster: the client killed with SIGKILL once the first batch has
    landed, then run again, ends the search; a rerun trains nothing. The same search with one
    worker (a local cluster), from another origin, gives the same trials and best."""
    from test_cluster_sweep import origin_refs

    repo = search_project(tmp_path / "two")
    proc = searching(repo, "--scheduler", cluster, start_new_session=True,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 400
    while len(origin_refs(repo)) < 2:  # the first batch (2 trials) has landed
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read().decode()
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = origin_refs(repo)
    assert not (repo / "search/trials.tsv").exists()
    resumed = searching(repo, "--scheduler", cluster)
    assert resumed.returncode == 0, resumed.stderr
    refs = origin_refs(repo)
    assert len(refs) == 4 and set(landed) <= set(refs)
    assert all(refs[name] == sha for name, sha in landed.items())  # not trained again
    rows = trial_rows(repo)
    assert [r[0] for r in rows] == ["trial", "0", "1", "2", "3"]
    best = min(rows[1:], key=lambda r: (float(r[4]), int(r[0])))
    assert f"best trial {best[0]}: {best[1]} " in resumed.stdout
    assert f"dvc exp apply {best[1]}" in resumed.stdout
    assert (repo / "search/search.png").stat().st_size > 10_000

    again = searching(repo, "--scheduler", cluster)
    assert again.returncode == 0 and origin_refs(repo) == refs
    assert again.stderr.count("search: a batch of 2: 0 run, 2 already on origin, 0 failed") == 2
    assert trial_rows(repo) == rows

    one = search_project(tmp_path / "one")
    alone = searching(one, "--workers", "1")
    assert alone.returncode == 0, alone.stderr
    assert trial_rows(one) == rows
    for name in refs:  # the same experiments, to the byte
        path = "metrics/evaluate.json"
        assert show(one, name, path) == show(repo, name, path)


def test_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    """Interrupted while it reads its space (a stand-in for any point of a search), the command
    ends with one line and status 130, no traceback."""
    import search as command

    def interrupted(*args):
        raise KeyboardInterrupt

    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    monkeypatch.setattr(command, "read_space", interrupted)
    assert command.main(["--space", str(path)]) == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("search: interrupted; the trials already on origin are kept")
