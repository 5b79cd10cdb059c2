"""Run a grid of DVC experiments on a Dask cluster, one experiment per task, and gather them.

    python experiments/cluster_sweep.py -S 'train.lr=0.001,0.01' -S 'train.seed=0,1'
    python experiments/cluster_sweep.py --scheduler tcp://HOST:8786 -S 'train.lr=range(1,4)'

The grid is DVC's own (`dvc exp run --queue -S` syntax: `a,b`, `range(start,stop,step)`,
`choice(...)`), expanded by DVC's code. The sweep runs the commit checked out here, which must
be on the git remote `origin`; its data comes from the default DVC remote. Each grid point is
one Dask task which, on its worker, with nothing shared with this machine but those two remotes:
takes a scratch clone of origin (one per worker slot, kept and reused by later tasks), checks
out the commit, runs `dvc exp run --pull --allow-missing -n NAME -S ...`, pushes the outputs to
the DVC remote and then the experiment's git ref to origin. The name is a hash of the grid point,
so a point already on origin is not run again. This client then pulls the experiments and
prints their params that vary and the headline metrics; a failed point is reported with its
name, grid point and the tail of its log (exit status 1), the others still land.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PARAMS_FILE = "params.yaml"
HEADLINE = ("test.mae", "test.mae_vs_reference")  # metrics/evaluate.json
LOG_TAIL = 20  # lines of a failed experiment's log shown
# The most grid points a sweep takes unless told otherwise (--max-points): a typo such as
# range(0,1000) twice would otherwise expand to a million experiments before anything runs.
MAX_POINTS = 10_000
# How long the client waits for a scheduler to answer (connection and Dask's handshake).
CONNECT_TIMEOUT_S = 30
# Where a worker keeps its clones when --scratch is not given: its own machine's disk.
SCRATCH_ENV = "TORCHREG_SWEEP_SCRATCH"


class SweepError(Exception):
    """A user mistake or an unusable set-up: one line, exit status 2."""


# --- the grid ----------------------------------------------------------------------------


def expand_grid(
    set_params: Sequence[str], max_points: int = MAX_POINTS, repo: Path | None = None
) -> list[tuple[str, ...]]:
    """The grid points of `-S` sweeps, each a tuple of `-S` values for one experiment, in the
    order `dvc exp run --queue` queues them (DVC's own parser and expansion). Checked first,
    without expanding anything: its size against `max_points`, every params file inside the
    repository `repo` (default: here), every key of params.yaml a key it has."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    for value in set_params:
        if "=" not in value:
            raise SweepError(f"-S {value!r}: expected KEY=VALUES (e.g. train.lr=0.001,0.01)")
    try:
        overrides = to_path_overrides(set_params)
        _check_grid(overrides, max_points, (repo or Path.cwd()).resolve())
        points = get_hydra_sweeps(overrides)
    except (HydraException, DvcException) as e:  # hydra's parse errors, DVC's glob refusal
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SweepError(f"-S {' -S '.join(set_params)}: {first}") from None
    return [
        tuple(o if path == PARAMS_FILE else f"{path}:{o}" for path, ovs in p.items() for o in ovs)
        for p in points
    ]


def _check_grid(overrides: dict[str, list[str]], max_points: int, repo: Path) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    parser, size = OverridesParser.create(), 1
    for path, values in overrides.items():
        where = (repo / path).resolve()
        if not where.is_relative_to(repo) or where == repo:
            raise SweepError(
                f"-S {path}:...: {path} is not a file inside this repository: a sweep changes "
                "params files of the repository only (DVC's own -S would rewrite that file)"
            )
        keys = params_keys(where) if path == PARAMS_FILE and where.is_file() else None
        for override in parser.parse_overrides(values):
            key = override.key_or_group
            if not key:
                raise SweepError(f"-S {override.input_line!r}: no key before '='")
            if keys is not None and key not in keys:
                near = sorted(k for k in keys if k.split(".")[0] == key.split(".")[0])
                raise SweepError(
                    f"-S {override.input_line!r}: {key} is not a key of {path}"
                    + (f" (its section has: {', '.join(near)})" if near else "")
                )
            sweep = override.value()
            if isinstance(sweep, ChoiceSweep):
                size *= len(sweep.list)
            elif isinstance(sweep, RangeSweep):
                size *= max(0, math.ceil((sweep.stop - sweep.start) / sweep.step))
    if size > max_points:
        raise SweepError(
            f"the grid has {size:,} points, over the limit of {max_points:,}: sweep fewer "
            "values, search instead (experiments/search.py), or raise the limit with "
            "--max-points"
        )


def params_keys(path: Path) -> set[str]:
    """Every key of a params file that takes a value, dotted (`train.lr`, `model.hidden`)."""
    from ruamel.yaml import YAML

    def walk(node: object, prefix: str) -> set[str]:
        if isinstance(node, dict):
            return {k for key, v in node.items() for k in walk(v, f"{prefix}{key}.")}
        return {prefix[:-1]}

    with path.open("rb") as f:
        return walk(YAML(typ="safe").load(f) or {}, "") - {""}


def experiment_name(point: Sequence[str], prefix: str = "grid") -> str:
    """A name per grid point, the same on every run: the order of the -S flags does not count."""
    digest = hashlib.sha256("\n".join(sorted(point)).encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


def varying_keys(points: Sequence[Sequence[str]]) -> list[str]:
    """The params that take more than one value across the grid, in first-seen order."""
    values: dict[str, set[str]] = {}
    for point in points:
        for override in point:
            key, _, value = override.partition("=")
            values.setdefault(key.removeprefix(f"{PARAMS_FILE}:"), set()).add(value)
    return [key for key, seen in values.items() if len(seen) > 1]


# --- one task, on a worker ----------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Everything a task needs, by name: no path of the machine that sent it, except a local
    DVC remote's folder (which the workers must then reach at that path)."""

    origin: str  # git URL (or path) of the repository
    commit: str  # the baseline, a full sha
    name: str
    point: tuple[str, ...]
    identity: tuple[str, str]  # git user.name, user.email the experiment is committed as
    remote: str | None = None  # the DVC remote's name, to point at `remote_url`
    remote_url: str | None = None
    scratch: str | None = None  # the worker's clone folder; default $SCRATCH_ENV or ~/.cache


@dataclass
class Outcome:
    name: str
    point: tuple[str, ...]
    status: str  # "done", "existed" (already on origin: nothing run) or "failed"
    worker: str = ""
    started: float = 0.0  # time.time() on the worker when the task began
    timings: dict[str, float] = field(default_factory=dict)  # clone, dvc, push (s)
    log_tail: str = ""


def exp_ref(commit: str, name: str) -> str:
    """The git ref DVC keeps an experiment under (dvc.repo.experiments.refs.ExpRefInfo)."""
    return f"refs/exps/{commit[:2]}/{commit[2:]}/{name}"


def _die_with_parent() -> None:
    # Linux's parent-death signal: if the worker is killed (kill -9), its dvc goes too and
    # can never push a half-finished experiment after the task was handed to another worker.
    if sys.platform == "linux":  # elsewhere (macOS) there is no such signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _git(cwd: Path | None, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def scratch_clone(job: Job) -> Iterator[Path]:
    """A clone of origin at job.commit that no other task uses meanwhile: the first free slot
    (an flock, released by the kernel even on kill -9) among this machine's clones of that
    origin. A clone is kept for the next task of the same slot, with its DVC cache, so a worker
    clones and downloads the data once; a task retried on the same machine finds it again.
    A slot whose last task died is cleaned first: its leftover processes killed, DVC's stale
    locks removed."""
    root = Path(job.scratch or os.environ.get(SCRATCH_ENV) or Path.home() / ".cache/torchreg")
    root = root / "sweeps"
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(job.origin.encode()).hexdigest()[:12]
    slot = 0
    while True:
        lock = open(root / f"{key}-{slot}.lock", "a")  # noqa: SIM115 (held until the end)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            lock.close()
            slot += 1
    clone, running = root / f"{key}-{slot}", root / f"{key}-{slot}.pgid"
    try:
        if running.exists():  # the last task here died mid-run
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(int(running.read_text()), signal.SIGKILL)
            shutil.rmtree(clone / ".dvc" / "tmp", ignore_errors=True)
            running.unlink()
        if not (clone / ".git").is_dir():
            shutil.rmtree(clone, ignore_errors=True)
            tmp = clone.with_name(clone.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            _git(None, "clone", "--quiet", "--no-checkout", job.origin, str(tmp))
            tmp.rename(clone)
        if subprocess.run(
            ["git", "cat-file", "-e", f"{job.commit}^{{commit}}"], cwd=clone
        ).returncode:
            _git(clone, "fetch", "--quiet", "origin", job.commit)
        _git(clone, "checkout", "--quiet", "--force", "--detach", job.commit)
        _git(clone, "clean", "--quiet", "-fd")  # not -x: DVC's cache and outputs stay
        local = clone / ".dvc" / "config.local"
        local.unlink(missing_ok=True)
        if job.remote and job.remote_url:
            local.write_text(f"['remote \"{job.remote}\"']\n    url = {job.remote_url}\n")
        yield clone
    finally:
        lock.close()


_PUSH = """
import sys
from dvc.repo import Repo
with Repo() as repo:
    repo.push()  # the outputs first: a ref on origin always has its outputs in the remote
    repo.experiments.push("origin", [sys.argv[1]])
"""


def run_point(job: Job) -> Outcome:
    """One experiment, run where the task runs. Never raises for a failed experiment: the
    outcome says so, with its log's tail."""
    import socket

    out = Outcome(job.name, job.point, "done", worker=socket.gethostname(), started=time.time())
    if _git(None, "ls-remote", job.origin, exp_ref(job.commit, job.name)).strip():
        out.status = "existed"  # an earlier run (or an earlier try of this task) pushed it
        return out
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = job.identity
    t = time.perf_counter()
    with scratch_clone(job) as clone:
        out.timings["clone"] = time.perf_counter() - t
        # A try of this task that died after `dvc exp run` but before the push left the
        # experiment here only: not on origin, so it runs again, and DVC would refuse the name.
        _git(clone, "update-ref", "-d", exp_ref(job.commit, job.name))
        log_path = clone / ".dvc" / "sweep.log"
        sets = [arg for s in job.point for arg in ("-S", s)]
        run = [bin_dir / "dvc", "exp", "run", "--pull", "--allow-missing", "-n", job.name, *sets]
        push = [sys.executable, "-c", _PUSH, job.name]
        with open(log_path, "w") as log:
            for step, cmd in (("dvc", run), ("push", push)):
                t = time.perf_counter()
                proc = subprocess.Popen(
                    cmd,
                    cwd=clone,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # one process group, to kill it all if need be
                    preexec_fn=_die_with_parent,
                )
                pgid = clone.with_name(clone.name + ".pgid")
                pgid.write_text(str(proc.pid))
                code = proc.wait()
                pgid.unlink()
                out.timings[step] = time.perf_counter() - t
                if code != 0:
                    out.status = "failed"
                    break
        if out.status == "failed":
            lines = log_path.read_text(errors="replace").splitlines()
            out.log_tail = "\n".join(lines[-LOG_TAIL:])
    return out


# --- the client ---------------------------------------------------------------------------


@dataclass
class Sweep:
    """What the client needs to know before it submits anything."""

    repo: Path
    commit: str
    origin: str
    remote: str
    remote_url: str | None
    identity: tuple[str, str]
    on_origin: set[str]  # names of this commit's experiments already on origin


def prepare(repo: Path, git_remote: str = "origin") -> Sweep:
    """Check that the sweep can run from here, and collect what the tasks carry."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        if result.returncode != 0:
            raise SweepError(f"git {' '.join(args)}: {result.stderr.strip() or 'failed'}")
        return result.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        raise SweepError(
            "uncommitted changes to tracked files: the workers run the commit as on origin, "
            "so commit and push them first (git commit, git push)"
        )
    origin = git("remote", "get-url", git_remote)
    if "://" not in origin and ":" not in origin.split("/")[0] and not Path(origin).is_absolute():
        origin = str((repo / origin).resolve())  # a relative path means nothing on a worker
    refs = [line.split("\t") for line in git("ls-remote", origin).splitlines() if "\t" in line]
    branch_tips = [sha for sha, ref in refs if ref.startswith(("refs/heads/", "refs/tags/"))]
    reachable = any(
        subprocess.run(["git", "merge-base", "--is-ancestor", commit, tip], cwd=repo).returncode
        == 0
        for tip in branch_tips
    )
    if not reachable:
        raise SweepError(
            f"commit {commit[:7]} is not on {git_remote} ({origin}): the workers clone it "
            f"from there, so push it first (git push {git_remote} HEAD)"
        )
    prefix = exp_ref(commit, "")
    on_origin = {ref.removeprefix(prefix) for _, ref in refs if ref.startswith(prefix)}

    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        config = dvc_repo.config
        remote = config["core"].get("remote")
        if not remote:
            raise SweepError(
                "no default DVC remote: the workers push the outputs there "
                "(dvc remote add -d NAME URL, then commit .dvc/config)"
            )
        url = config["remote"][remote]["url"]
    remote_url = None
    if "://" not in url:  # a folder: the workers need its absolute path (a shared disk)
        remote_url = str((repo / ".dvc" / url).resolve()) if not Path(url).is_absolute() else url
    name = git("config", "user.name") if _has_config(repo, "user.name") else ""
    email = git("config", "user.email") if _has_config(repo, "user.email") else ""
    if not (name and email):
        raise SweepError(
            "no git identity to commit the experiments as: "
            'git config user.name "Your Name" && git config user.email you@example.com'
        )
    return Sweep(repo, commit, origin, remote, remote_url, (name, email), on_origin)


def _has_config(repo: Path, key: str) -> bool:
    return subprocess.run(["git", "config", key], cwd=repo, capture_output=True).returncode == 0


def describe(point: Sequence[str]) -> str:
    return " ".join(point)


def run_grid(
    client, sweep: Sweep, points: Sequence[tuple[str, ...]], scratch: str | None = None
) -> tuple[list[Outcome], float]:
    """Submit every grid point not on origin yet, wait for them all; return the outcomes (in
    grid order) and the seconds from submitting to the last one's end."""
    from distributed import as_completed

    if run_point.__module__ != "__main__":
        # Imported (by the search, a bench): the scheduler and the workers unpickle the task
        # by this module's name, so they get the file itself (Dask's own way; a worker that
        # joins or restarts later gets it too). Run as a script, the task goes by value.
        client.upload_file(sys.modules[run_point.__module__].__file__)
    outcomes: dict[str, Outcome] = {}
    futures = []
    start, submitted = time.perf_counter(), time.time()
    for point in points:
        name = experiment_name(point)
        if name in sweep.on_origin:
            outcomes[name] = Outcome(name, point, "existed")
            continue
        job = Job(
            sweep.origin,
            sweep.commit,
            name,
            point,
            sweep.identity,
            sweep.remote,
            sweep.remote_url,
            scratch,
        )
        # pure=False: the same grid point submitted again (a rerun) must run, not be served
        # from a finished future; a retry after a lost worker is the scheduler's own.
        futures.append(client.submit(run_point, job, key=f"{name}-{sweep.commit[:8]}", pure=False))
    for future in as_completed(futures):
        if future.status == "error":
            name = str(future.key).rsplit("-", 1)[0]
            point = next(p for p in points if experiment_name(p) == name)
            out = Outcome(name, point, "failed", log_tail=repr(future.exception()))
        else:
            out = future.result()
            # From submitting to the task's start on its worker: the scheduler's share, and the
            # wait for a free worker (the workers' clocks are assumed close to this one's).
            out.timings["queued"] = out.started - submitted
        outcomes[out.name] = out
        print(f"cluster_sweep: {out.name} ({describe(out.point)}): {out.status}", file=sys.stderr)
    wall = time.perf_counter() - start
    return [outcomes[experiment_name(p)] for p in points], wall


def gather(repo: Path, names: Sequence[str]) -> None:
    """Pull the experiments (git refs and outputs) from origin into this repository."""
    if not names:
        return
    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run(
        [dvc, "exp", "pull", "origin", *names], cwd=repo, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SweepError(f"dvc exp pull origin failed: {result.stderr.strip()[-500:]}")


def table(repo: Path, outcomes: Sequence[Outcome], keys: Sequence[str]) -> str:
    """The sweep's experiments only: name, the params that vary, the headline metrics."""
    import dvc.api

    rows = {row.get("Experiment"): row for row in dvc.api.exp_show(repo=str(repo))}
    header, data = ["Experiment", *keys, *HEADLINE], []
    for out in outcomes:
        row = rows.get(out.name) or {}
        given = dict(o.removeprefix(f"{PARAMS_FILE}:").split("=", 1) for o in out.point)
        data.append(
            [out.name, *(given.get(k, "") for k in keys), *(_cell(row, m) for m in HEADLINE)]
        )
    return _markdown(header, data)


def _cell(row: dict, metric: str):
    for column, value in row.items():  # DVC prefixes a column with its file when ambiguous
        if column == metric or column.endswith(f":{metric}"):
            # 5 significant digits, as `dvc exp show` prints them
            return "-" if value is None else f"{value:.5g}" if isinstance(value, float) else value
    return "-"


def _markdown(header: list[str], rows: list[list]) -> str:
    cells = [header, *([str(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def default_workers() -> int:
    """One worker per core this process may use (the CPU affinity, as a container sets it)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS has no affinity
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cluster_sweep",
        description=__doc__.split("\n\n")[0],
        epilog="Runs the commit checked out here, as it is on origin; see docs/sweeps.md.",
    )
    parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        required=True,
        metavar="KEY=VALUES",
        help="a param and its values, as for `dvc exp run --queue -S` (repeat: the grid is "
        "every combination), e.g. -S 'train.lr=0.001,0.01' -S 'train.seed=range(0,4)'",
    )
    parser.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="an existing Dask scheduler; default: a local cluster of --workers processes",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"local cluster only: worker processes (default: one per usable core, here "
        f"{default_workers()})",
    )
    parser.add_argument(
        "--scratch",
        metavar="DIR",
        help=f"where each worker keeps its clones (default: ${SCRATCH_ENV} on the worker, "
        "else ~/.cache/torchreg)",
    )
    parser.add_argument(
        "--max-points",
        type=int,
        default=MAX_POINTS,
        help=f"the most grid points to run (default {MAX_POINTS:,}); a larger grid is refused",
    )
    args = parser.parse_args(argv)
    if args.max_points < 1:
        parser.error(f"--max-points {args.max_points}: allowed 1 or more")
    if args.workers is not None and args.scheduler:
        parser.error("--workers is for the local cluster; not with --scheduler")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: allowed 1 or more")
    return args


@contextlib.contextmanager
def connect(scheduler: str | None, workers: int | None):
    """A Dask client: to the given scheduler, or to a local cluster started (and stopped) here."""
    from distributed import Client, LocalCluster

    if scheduler:
        with _connected(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers or default_workers(),
            threads_per_worker=1,  # one experiment per worker at a time
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,  # not the workers' start and stop chatter
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextlib.contextmanager
def _connected(scheduler: str):
    """A client of the Dask scheduler at `scheduler`, or one line: an address that is not
    one, a port nobody listens on (at once), or a server that does not answer as a Dask
    scheduler within CONNECT_TIMEOUT_S (an HTTP server, a listener that never replies)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    from distributed import Client

    parts = urlsplit(scheduler)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None:
        raise SweepError(f"--scheduler {scheduler}: expected tcp://HOST:PORT (a Dask scheduler)")
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SweepError(f"--scheduler {scheduler}: cannot connect: {e.strerror or e}") from None
    made: dict = {}

    def connect() -> None:
        try:
            made["client"] = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except Exception as e:  # noqa: BLE001 - any failure to connect is the one line below
            made["error"] = e

    thread = threading.Thread(target=connect, daemon=True)  # a handshake that never ends
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 5)
    if "client" not in made:
        why = made.get("error") or f"no answer within {CONNECT_TIMEOUT_S} s"
        first = (str(why).strip().splitlines() or [type(why).__name__])[0]
        raise SweepError(f"--scheduler {scheduler}: not a Dask scheduler that answers ({first})")
    with made["client"] as client:
        yield client


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        points = expand_grid(args.set_param, args.max_points)
        sweep = prepare(Path.cwd())
        with connect(args.scheduler, args.workers) as client:
            outcomes, _ = run_grid(client, sweep, points, args.scratch)
        landed = [o.name for o in outcomes if o.status != "failed"]
        gather(sweep.repo, landed)
    except SweepError as e:
        print(f"cluster_sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "cluster_sweep: interrupted; the experiments already on origin are kept: the same "
            "command runs the rest",
            file=sys.stderr,
        )
        return 130
    print(table(sweep.repo, [o for o in outcomes if o.status != "failed"], varying_keys(points)))
    failed = [o for o in outcomes if o.status == "failed"]
    for out in failed:
        print(
            f"cluster_sweep: experiment {out.name} ({describe(out.point)}) failed on "
            f"{out.worker or 'a worker'}; the end of its log:\n{out.log_tail}",
            file=sys.stderr,
        )
    ran = sum(o.status == "done" for o in outcomes)
    print(
        f"cluster_sweep: {len(points)} experiment{'s' * (len(points) != 1)}: {ran} run, "
        f"{sum(o.status == 'existed' for o in outcomes)} already on origin, {len(failed)} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
