"""Sweeps on a Dask cluster (experiments/cluster_sweep.py).

Fast: the grid (DVC's -S syntax, expanded by DVC's own code), the names, the command's one-line
refusals. Slow: a real cluster of separate processes over TCP on loopback (`dask scheduler` and
two `dask worker`s, each with its own HOME and scratch folder, sharing nothing with the client
but a bare git origin and the DVC remote: a folder, or S3 through moto), driven by the command
as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support import BIN, ROOT, run, subprocess_env
from transcripts import blocks

sys.path.insert(0, str(ROOT / "experiments"))
from cluster_sweep import SweepError, exp_ref, expand_grid, experiment_name, varying_keys  # noqa: E402

SCRIPT = "experiments/cluster_sweep.py"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

# --- fast: the grid and the names ---------------------------------------------------------


def test_grid_is_dvcs_product_in_queue_order():
    assert expand_grid(["train.lr=0.001,0.01", "train.seed=0,1"]) == [
        ("train.lr=0.001", "train.seed=0"),
        ("train.lr=0.001", "train.seed=1"),
        ("train.lr=0.01", "train.seed=0"),
        ("train.lr=0.01", "train.seed=1"),
    ]
    assert expand_grid(["train.seed=range(0,3)", "model.kind=mlp"]) == [
        ("train.seed=0", "model.kind=mlp"),
        ("train.seed=1", "model.kind=mlp"),
        ("train.seed=2", "model.kind=mlp"),
    ]
    assert expand_grid(["train.lr=choice(0.1,0.2)"]) == [("train.lr=0.1",), ("train.lr=0.2",)]
    # Another params file keeps its prefix, as `dvc exp run -S file:key=value` takes it.
    assert expand_grid(["other.yaml:a=1,2"]) == [("other.yaml:a=1",), ("other.yaml:a=2",)]


@pytest.mark.parametrize(
    "bad", ["train.lr", "train.lr=range(1", "train.lr=glob(*)", "train.lr=[1,2"]
)
def test_bad_grid_is_one_clear_error(bad):
    with pytest.raises(SweepError) as err:
        expand_grid(["train.seed=0", bad])
    assert "\n" not in str(err.value) and bad in str(err.value)


def test_names_are_per_grid_point_and_repeatable():
    points = expand_grid(["train.lr=0.001,0.01", "train.seed=0,1"])
    names = [experiment_name(p) for p in points]
    assert len(set(names)) == len(points)
    assert names == [
        experiment_name(p) for p in expand_grid(["train.lr=0.001,0.01", "train.seed=0,1"])
    ]
    # The order of the -S flags does not make another experiment.
    assert experiment_name(("train.seed=0", "train.lr=0.01")) == names[2]
    assert all(n.startswith("grid-") and len(n) == 15 for n in names)


def test_varying_keys_are_the_swept_ones():
    points = expand_grid(["train.lr=0.001,0.01", "train.epochs=5", "params.yaml:train.seed=0,1"])
    assert varying_keys(points) == ["train.lr", "train.seed"]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run([sys.executable, str(ROOT / SCRIPT), *args], cwd, check=False)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-S", "train.lr"], "expected KEY=VALUES"),
        (["-S", "train.lr=range(1"], "train.lr=range(1"),
        (["-S", "a=1", "--workers", "0"], "--workers 0: allowed 1 or more"),
    ],
)
def test_command_refuses_bad_input_in_one_line(args, says):
    result = cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert says in last, result.stderr


def git_repo(path: Path) -> Path:
    path.mkdir()
    run(["git", "init", "-q", "-b", "main"], path)
    (path / "f").write_text("1\n")
    run(["git", "add", "f"], path)
    run(["git", "commit", "-q", "-m", "one"], path)
    return path


def test_refuses_a_commit_that_origin_does_not_have(tmp_path):
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    repo = git_repo(tmp_path / "repo")
    run(["git", "remote", "add", "origin", str(origin)], repo)
    result = cli("-S", "train.lr=0.1", cwd=repo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not on origin" in result.stderr and "git push origin HEAD" in result.stderr
    (repo / "f").write_text("2\n")
    result = cli("-S", "train.lr=0.1", cwd=repo)
    assert result.returncode == 2 and "uncommitted changes" in result.stderr


@pytest.mark.slow
def test_the_readme_set_up_for_a_sweep_on_one_machine(repo):
    """The README's two lines for a trial, in a clone whose origin cannot be pushed to (as
    a fresh clone of the project's), then a one-point sweep on the local cluster."""
    (block,) = [
        b
        for b in blocks("README.md")
        if b.lines[:1] and "tests/test_cluster_sweep.py" in b.lines[0]
    ]
    upstream = repo.parent / "upstream"  # stands for the project's: never pushed to here
    repo.rename(upstream)
    run(["git", "clone", "-q", str(upstream), str(repo)], repo.parent)
    for line in block.lines[1:]:
        run(["bash", "-c", line], repo)
    result = run([sys.executable, SCRIPT, "-S", "train.lr=0.1"], repo, timeout=300)
    assert "cluster_sweep: 1 experiment: 1 run, 0 already on origin, 0 failed" in result.stderr
    ours = run(["git", "for-each-ref", "refs/exps"], repo.parent / "torchreg-origin.git").stdout
    assert ours.count("\n") == 1
    assert run(["git", "for-each-ref", "refs/exps"], upstream).stdout == ""


# --- slow: a cluster of separate processes ------------------------------------------------


def start(cmd: list, log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        env=subprocess_env(**env),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker`s (each under a nanny, which restarts it if it
    dies) on 127.0.0.1; yields the scheduler's address. Each worker has its own HOME (no git
    identity, no config) and scratch folder."""
    from distributed import Client

    tmp = tmp_path_factory.mktemp("cluster")
    file = tmp / "scheduler.json"
    procs = [
        start(
            [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0"]
            + ["--no-dashboard", "--scheduler-file", file],
            tmp / "scheduler.log",
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        for i in range(2):
            home, scratch = tmp / f"home{i}", tmp / f"scratch{i}"
            home.mkdir()
            procs.append(
                start(
                    [BIN / "dask", "worker", address, "--host", "127.0.0.1", "--nthreads", "1"]
                    + ["--no-dashboard", "--local-directory", scratch / "dask"],
                    tmp / f"worker{i}.log",
                    HOME=str(home),
                    TORCHREG_SWEEP_SCRATCH=str(scratch),
                    **S3_ENV,
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def s3_url():
    pytest.importorskip("dvc_s3", reason="S3 support not installed: pip install -e '.[s3]'")
    from conftest import moto_s3

    with moto_s3() as url:
        yield url


def project(tmp: Path, remote_cmds: list[list[str]]) -> Path:
    """A clone (the client) of a bare origin holding the project at 30 epochs; the DVC remote
    that `remote_cmds` make the default is committed there."""
    from conftest import copy_of_the_repo

    repo = copy_of_the_repo(tmp / "client")
    for cmd in remote_cmds:
        run(cmd, repo)
    run(["git", "commit", "-q", "-am", "remote", "--allow-empty"], repo)
    origin = tmp / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    run(["git", "config", "user.name", "Sweeper"], repo)
    run(["git", "config", "user.email", "sweeper@example.com"], repo)
    return repo


@pytest.fixture(scope="module")
def client_repo(tmp_path_factory):
    """The client, with the project's own default remote: a folder next to the clone
    (`../torchreg-dvc-storage`), which the workers reach by its absolute path."""
    return project(tmp_path_factory.mktemp("local"), [])


def sweep(repo: Path, address: str, *sets: str) -> subprocess.CompletedProcess:
    args = [arg for s in sets for arg in ("-S", s)]
    result = run(
        [sys.executable, SCRIPT, "--scheduler", address, *args],
        repo,
        check=False,
        env=subprocess_env(**S3_ENV),
        timeout=300,
    )
    print(f"$ cluster_sweep {' '.join(args)}\n{result.stdout}{result.stderr}")
    return result


def origin_refs(repo: Path) -> dict[str, str]:
    """Experiment name -> commit, of the experiments on origin."""
    out = run(["git", "ls-remote", "origin", "refs/exps/*"], repo).stdout
    refs = [line.split("\t") for line in out.splitlines()]
    names = [ref.rsplit("/", 1)[1] for _, ref in refs]
    assert len(names) == len(set(names)), f"an experiment twice on origin: {out}"
    return {ref.rsplit("/", 1)[1]: sha for sha, ref in refs}


def show(repo: Path, name: str, path: str) -> str:
    """A file of an experiment of HEAD that is here (pulled), from its git ref."""
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    return run(["git", "show", f"{exp_ref(head, name)}:{path}"], repo).stdout


def local_params(repo: Path, name: str) -> dict:
    return yaml.safe_load(show(repo, name, "params.yaml"))


def outs_in_local_remote(repo: Path, name: str) -> None:
    """Every cached output of the experiment is in the DVC remote: nothing half-pushed."""
    lock = yaml.safe_load(show(repo, name, "dvc.lock"))
    storage = repo.parent / "torchreg-dvc-storage" / "files" / "md5"
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] in ("data/train.npy", "data/test.npy", "models/model.safetensors"):
                md5 = out["md5"]
                assert (storage / md5[:2] / md5[2:]).is_file(), (name, out["path"])


@pytest.mark.slow
def test_grid_lands_and_rerun_trains_nothing(cluster, client_repo):
    grid = ("train.lr=0.02,0.1", "train.seed=1")
    points = expand_grid(grid)
    result = sweep(client_repo, cluster, *grid)
    assert result.returncode == 0, result.stderr
    names = [experiment_name(p) for p in points]
    on_origin = origin_refs(client_repo)
    assert set(on_origin) == set(names)
    for name, lr in zip(names, (0.02, 0.1), strict=True):
        params = local_params(client_repo, name)  # pulled: the ref is here
        assert (params["train"]["lr"], params["train"]["seed"]) == (lr, 1)
        assert name in result.stdout  # the table
        outs_in_local_remote(client_repo, name)
    header = result.stdout.splitlines()[0]
    assert "train.lr" in header and "train.seed" not in header and "test.mae" in header

    # The same bytes as the same -S run here with plain `dvc exp run`: the whole dvc.lock
    # (every output's md5) and the metrics kept in git.
    run(
        ["dvc", "exp", "run", "--temp", "-n", "here", "-S", "train.lr=0.1", "-S", "train.seed=1"],
        client_repo,
    )
    for path in ("dvc.lock", "metrics/evaluate.json", "dvclive/metrics.json"):
        assert show(client_repo, names[1], path) == show(client_repo, "here", path), path

    # Again: everything is on origin, nothing runs, nothing is pushed.
    again = sweep(client_repo, cluster, *grid)
    assert again.returncode == 0, again.stderr
    assert "2 experiments: 0 run, 2 already on origin, 0 failed" in again.stderr
    assert origin_refs(client_repo) == on_origin


@pytest.mark.slow
def test_a_failing_point_is_reported_and_the_rest_land(cluster, client_repo):
    grid = ("train.lr=0.03,1e6",)
    points = expand_grid(grid)  # DVC's parser writes 1e6 as 1000000.0
    good, bad = (experiment_name(p) for p in points)
    result = sweep(client_repo, cluster, *grid)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"experiment {bad} ({points[1][0]}) failed on" in result.stderr
    assert "training diverged at epoch 1" in result.stderr  # the log's tail
    assert "1 run, 0 already on origin, 1 failed" in result.stderr
    refs = origin_refs(client_repo)
    assert good in refs and bad not in refs
    assert local_params(client_repo, good)["train"]["lr"] == 0.03
    outs_in_local_remote(client_repo, good)


@pytest.mark.slow
def test_a_worker_killed_mid_task_loses_nothing(cluster, client_repo):
    from distributed import Client

    grid = ("train.lr=0.04,0.05,0.06",)
    names = [experiment_name(p) for p in expand_grid(grid)]
    args = [arg for s in grid for arg in ("-S", s)]
    with Client(cluster, timeout="30s") as watcher:
        proc = subprocess.Popen(
            [sys.executable, SCRIPT, "--scheduler", cluster, *args],
            cwd=client_repo,
            env=subprocess_env(**S3_ENV),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not (busy := [w for w, keys in watcher.processing().items() if keys]):
            assert time.monotonic() < deadline and proc.poll() is None, "no task started"
            time.sleep(0.2)
        time.sleep(4)  # into `dvc exp run`
        victim = busy[0]
        task = watcher.processing()[victim]
        pid = watcher.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    print(f"killed worker {victim} (pid {pid}) running {task}\n{stdout}{stderr}")
    assert task, "the killed worker was running a task"
    assert proc.returncode == 0, stderr
    refs = origin_refs(client_repo)  # asserts each name at most once
    assert set(names) <= set(refs)
    for name, lr in zip(names, (0.04, 0.05, 0.06), strict=True):
        assert local_params(client_repo, name)["train"]["lr"] == lr
        outs_in_local_remote(client_repo, name)


@pytest.mark.slow
def test_s3_remote(cluster, s3_url, tmp_path):
    import boto3

    repo = project(
        tmp_path,
        [
            ["dvc", "remote", "add", "-d", "team", "s3://models/sweeps"],
            ["dvc", "remote", "modify", "team", "endpointurl", s3_url],
        ],
    )
    grid = ("train.lr=0.02,0.1",)
    result = sweep(repo, cluster, *grid)
    assert result.returncode == 0, result.stderr
    names = [experiment_name(p) for p in expand_grid(grid)]
    assert set(origin_refs(repo)) == set(names)
    s3 = boto3.client("s3", endpoint_url=s3_url, **_boto_keys())
    stored = {o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"]}
    for name in names:
        lock = yaml.safe_load(show(repo, name, "dvc.lock"))
        (model,) = (o for o in lock["stages"]["train"]["outs"] if o["path"].startswith("models"))
        assert f"sweeps/files/md5/{model['md5'][:2]}/{model['md5'][2:]}" in stored
    # The client pulled the outputs too: the model is in its cache.
    assert (repo / ".dvc/cache/files/md5" / model["md5"][:2] / model["md5"][2:]).is_file()


def _boto_keys() -> dict[str, str]:
    return {
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }


@pytest.mark.slow
def test_a_task_run_again_in_its_clone_after_a_lost_push(client_repo, tmp_path):
    # A try that died between `dvc exp run` and the push leaves the experiment in the slot's
    # clone only; the next try in that clone must run it again and push it, not trip over it.
    from cluster_sweep import Job, prepare, run_point

    sweep_ = prepare(client_repo)
    point = ("train.lr=0.07",)
    job = Job(
        sweep_.origin,
        sweep_.commit,
        experiment_name(point),
        point,
        sweep_.identity,
        sweep_.remote,
        sweep_.remote_url,
        str(tmp_path / "scratch"),
    )
    assert run_point(job).status == "done"
    ref = exp_ref(job.commit, job.name)
    run(["git", "update-ref", "-d", ref], Path(sweep_.origin))  # the push never happened
    again = run_point(job)
    assert again.status == "done", again.log_tail
    assert job.name in origin_refs(client_repo)


# --- fast: what is refused before any cluster starts --------------------------------------


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (["train.seed=range(0,1000)", "data.seed=range(0,1000)"],
         "the grid has 1,000,000 points, over the limit of 10,000"),
        (["train.lr=range(0,1,0.0001)"], "the grid has 10,000 points"),  # at the limit: allowed
        (["../outside.yaml:k=v"], "../outside.yaml is not a file inside this repository"),
        (["/tmp/victim.yaml:k=1,2"], "/tmp/victim.yaml is not a file inside this repository"),
        (["=0.1"], "-S '=0.1': no key before '='"),
        (["train.lrr=0.1,0.2"], "train.lrr is not a key of params.yaml (its section has: "),
        (["trian.lr=0.1"], "trian.lr is not a key of params.yaml"),
    ],
)  # fmt: skip
def test_a_grid_is_checked_before_it_is_expanded(sets, says):
    if says.startswith("the grid has 10,000 "):
        assert len(expand_grid(sets, repo=ROOT)) == 10_000
        with pytest.raises(SweepError) as err:
            expand_grid(sets, max_points=9_999, repo=ROOT)
        assert "the grid has 10,000 points, over the limit of 9,999" in str(err.value)
        return
    with pytest.raises(SweepError) as err:
        expand_grid(sets, repo=ROOT)
    assert "\n" not in str(err.value) and says in str(err.value), str(err.value)


def test_a_million_point_grid_is_refused_at_once():
    start = time.monotonic()
    result = cli("-S", "train.seed=range(0,1000)", "-S", "data.seed=range(0,1000)")
    assert result.returncode == 2 and "over the limit of 10,000" in result.stderr
    assert "--max-points" in result.stderr and time.monotonic() - start < 30


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("http://127.0.0.1:8786", "expected tcp://HOST:PORT"),
        ("garbage", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:1", "cannot connect"),
    ],
)
def test_a_scheduler_address_that_is_not_one_is_one_line(address, says):
    from cluster_sweep import connect

    start = time.monotonic()
    with pytest.raises(SweepError) as err, connect(address, None):
        pass
    assert says in str(err.value) and time.monotonic() - start < 10


def test_a_listener_that_never_answers_is_refused_within_the_timeout(monkeypatch):
    import socket

    import cluster_sweep

    monkeypatch.setattr(cluster_sweep, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(SweepError) as err, cluster_sweep.connect(address, None):
            pass
    assert "not a Dask scheduler that answers" in str(err.value)
    assert time.monotonic() - start < 15
