"""Benchmark the pipeline against the tutorial and print one table; write it to BENCHMARKS.md.

Every figure is the median of --repeats runs; every target is a ratio of two things measured
side by side in this same run, because shared machines are noisy.

    python bench/run.py                 # everything (about 10 minutes on 2 cores)
    python bench/run.py --only loop     # one section: loop, pipeline, noop, scale, sweep
    python bench/run.py --quick         # a smoke run with tiny sizes (used by the tests)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "experiments")]

import tutorial  # noqa: E402
from sweep import queue, run_queue, set_params  # noqa: E402

from torchreg.config import load_params  # noqa: E402
from torchreg.data import make_block  # noqa: E402
from torchreg.evaluation import prediction_errors  # noqa: E402
from torchreg.model import LinearRegression, build_model  # noqa: E402
from torchreg.training import fit, seeded  # noqa: E402

BIN = Path(sys.executable).parent
SECTIONS = ("loop", "pipeline", "noop", "scale", "huge", "ddp", "sweep")
MAE_SEEDS = (0, 1, 2, 3, 4)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, measured: str, target: str = "", verdict: bool | None = None):
        mark = "" if verdict is None else ("met" if verdict else "NOT met")
        self.rows.append((what, measured, target, mark))
        print(f"  {what}: {measured}  {target} {mark}", flush=True)

    def markdown(self) -> str:
        lines = ["| measurement | figure (median) | target | |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    fn()  # warm-up: lazy imports and allocator caches are not what is measured
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# Peak RSS must come from a small parent: a child forked from this process (which holds
# torch) would report this process's memory as its own peak, from before its exec.
_WAIT = """
import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=sys.stderr)
_, status, usage = os.wait4(proc.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int]:
    """Run a command; return its wall seconds and peak resident memory in bytes."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    with tempfile.TemporaryFile() as log:
        result = subprocess.run(
            [sys.executable, "-c", _WAIT, *cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        seconds, rss, code = result.stdout.split()
        if int(code) != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read().decode()[-3000:]}")
    return float(seconds), int(rss)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    dvc_version = subprocess.run(
        [BIN / "dvc", "--version"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__},"
        f" dvc {dvc_version}, {torch.get_num_threads()} torch threads"
    )


def fresh_copy(dest: Path) -> Path:
    """A clone of the committed repo with its own DVC cache, ready for dvc commands."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


# --- 1. the training loop --------------------------------------------------------------------


def bench_loop(table: Table, repeats: int, epochs: int) -> None:
    params = load_params(ROOT / "params.yaml")
    cfg = params.train.model_copy(update={"epochs": epochs})
    train = torch.from_numpy(make_block(params.data, "train", 0, params.data.n_train))
    test = torch.from_numpy(make_block(params.data, "test", 0, params.data.n_test))
    x, y = train[:, :-1].contiguous(), train[:, -1].contiguous()
    steps = epochs * -(-len(train) // cfg.batch_size)

    def start() -> LinearRegression:
        return build_model(params.model, x.shape[1], cfg.init_std, seeded(cfg.seed, "init"))

    def tutorial_run(seed: int) -> LinearRegression:
        import random

        random.seed(seed)
        model = start()
        w0 = model.w.detach().clone().requires_grad_()
        b0 = model.b.detach().clone().requires_grad_()
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                tutorial.train(x, y, epochs, cfg.lr, cfg.batch_size, w0, b0)
            finally:
                sys.stdout = stdout
        with torch.no_grad():
            model.w.copy_(w0)
            model.b.copy_(b0)
        return model

    def project_run(seed: int) -> LinearRegression:
        model = start()
        fit(model, train, cfg, seeded(seed, "shuffle"))
        return model

    t_tut, _ = median_time(lambda: tutorial_run(cfg.seed), repeats)
    t_ours, _ = median_time(lambda: project_run(cfg.seed), repeats)
    # Constant-lr SGD ends at a random point near the optimum: one run's MAE varies by a few
    # percent with the shuffle seed, so compare the mean over the same MAE_SEEDS seeds.
    mae_tut = statistics.mean(prediction_errors(tutorial_run(s), test)["mae"] for s in MAE_SEEDS)
    mae_ours = statistics.mean(prediction_errors(project_run(s), test)["mae"] for s in MAE_SEEDS)
    speedup = t_tut / t_ours
    table.add(
        "training loop, tutorial (500x4, batch 16, MAE, SGD)",
        f"{t_tut / steps * 1e6:.1f} us/step, mean test MAE {mae_tut:.6f}",
    )
    table.add(
        "training loop, project (fast path)",
        f"{t_ours / steps * 1e6:.1f} us/step, mean test MAE {mae_ours:.6f}",
    )
    table.add("loop speed-up over the tutorial", f"{speedup:.1f}x", ">= 4x", speedup >= 4)
    table.add(
        f"mean test MAE over shuffle seeds {MAE_SEEDS}, project / tutorial",
        f"{mae_ours / mae_tut:.4f}",
        "<= 1.005",
        mae_ours / mae_tut <= 1.005,
    )

    mlp_cfg = params.model.model_copy(update={"kind": "mlp"})
    mlp_epochs = max(1, epochs // 10)
    mcfg = cfg.model_copy(update={"epochs": mlp_epochs})

    def mlp_project() -> None:
        model = build_model(mlp_cfg, x.shape[1], 0, seeded(0, "init"))
        fit(model, train, mcfg, seeded(0, "shuffle"))

    def mlp_plain() -> None:
        """The usual nn.Module + torch.optim loop, tracking the loss the usual way."""
        model = build_model(mlp_cfg, x.shape[1], 0, seeded(0, "init"))
        optimizer = torch.optim.SGD(model.parameters(), lr=mcfg.lr)
        g = seeded(0, "shuffle")
        for _ in range(mlp_epochs):
            order = torch.randperm(len(x), generator=g)
            running = 0.0
            for i in range(0, len(x), mcfg.batch_size):
                idx = order[i : i + mcfg.batch_size]
                loss = F.l1_loss(model(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                running += loss.item() * len(idx)

    t_plain, _ = median_time(mlp_plain, repeats)
    t_mlp, _ = median_time(mlp_project, repeats)
    ratio = t_mlp / t_plain
    mlp_steps = mlp_epochs * -(-len(train) // cfg.batch_size)
    table.add(
        "mlp [16, 16] step: project / plain nn.Module + torch.optim loop",
        f"{t_mlp / mlp_steps * 1e6:.0f} vs {t_plain / mlp_steps * 1e6:.0f} us/step = {ratio:.2f}",
        "<= 1.0 (noise +-5%)",
        ratio <= 1.05,
    )


# --- 2. and 3. the whole pipeline ------------------------------------------------------------


def clean_outputs(repo: Path) -> None:
    for name in ("data", "models", "dvclive", "metrics", "plots", ".dvc/cache"):
        shutil.rmtree(repo / name, ignore_errors=True)
    (repo / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(
        ["git", "checkout", "-q", "--", "data/.gitignore", "models/.gitignore"],
        cwd=repo,
        check=False,
    )


def bench_pipeline(table: Table, repeats: int, work: Path, epochs: int | None) -> None:
    repo = fresh_copy(work / "pipeline")
    if epochs:
        set_params(repo, train__epochs=epochs)
    out = work / "tutorial.png"
    tutorial_cmd = [sys.executable, str(ROOT / "bench/tutorial.py"), str(out)]
    t_tut, t_dvc = [], []
    for _ in range(repeats):
        t_tut.append(measured(tutorial_cmd, work)[0])
        clean_outputs(repo)
        t_dvc.append(measured(["dvc", "repro"], repo)[0])
    tut, dvc = statistics.median(t_tut), statistics.median(t_dvc)
    table.add("tutorial script, one process (data, 1000 epochs, plot)", f"{tut:.2f} s")
    table.add(
        "`dvc repro` from nothing, default params",
        f"{dvc:.2f} s",
        "<= 1.25x tutorial",
        dvc / tut <= 1.25,
    )
    table.add("  ratio", f"{dvc / tut:.2f}x")
    per_stage = []
    for stage in ("generate", "train", "evaluate", "plot"):
        seconds, rss = measured([sys.executable, f"stages/{stage}.py"], repo, {"PYTHONPATH": "src"})
        per_stage.append(f"{stage} {seconds:.2f} s")
    table.add("  where the time goes (each stage alone)", ", ".join(per_stage))

    t_status, t_noop = [], []
    for _ in range(max(repeats, 5)):
        t_status.append(measured(["dvc", "status"], repo)[0])
        t_noop.append(measured(["dvc", "repro"], repo)[0])
    status, noop = statistics.median(t_status), statistics.median(t_noop)
    table.add("`dvc status`, up to date", f"{status:.2f} s")
    table.add(
        "`dvc repro`, nothing to do",
        f"{noop:.2f} s = {noop / status:.2f}x status",
        "<= 1.5x status",
        noop / status <= 1.5,
    )


# --- 4. scale ----------------------------------------------------------------------------------


def bench_scale(table: Table, repeats: int, work: Path, sizes: list[int]) -> None:
    repo = fresh_copy(work / "scale")
    base_s, base_rss = measured([sys.executable, "-c", "import torch"], repo)
    table.add(
        "torch process baseline (python -c 'import torch')", f"{base_rss / 2**20:.0f} MiB peak RSS"
    )
    seconds_at: dict[int, float] = {}
    for n in sizes:
        set_params(repo, data__n_train=n, train__batch_size=4096, train__epochs=1)
        total = []
        for _ in range(repeats):
            row = {}
            for stage in ("generate", "train", "evaluate"):
                row[stage] = measured(
                    [sys.executable, f"stages/{stage}.py"],
                    repo,
                    {"PYTHONPATH": "src", "TORCHREG_LOG_LEVEL": "WARNING"},
                )
            total.append(row)
        size = (repo / "data/train.npy").stat().st_size
        limit = base_rss + 2 * size
        stage_time = 0.0
        for stage in ("generate", "train", "evaluate"):
            secs = statistics.median(r[stage][0] for r in total)
            rss = max(r[stage][1] for r in total)
            stage_time += secs
            judged = n == max(sizes)  # the target is set at the largest size
            target = f"RSS <= {limit / 2**20:.0f} MiB (torch + 2x {size / 2**20:.0f} MiB data)"
            table.add(
                f"{n:,} rows x 4, batch 4096, 1 epoch: {stage}",
                f"{secs:.2f} s, peak RSS {rss / 2**20:.0f} MiB",
                target if judged else "",
                (rss <= limit) if judged else None,
            )
        seconds_at[n] = stage_time
    if len(sizes) == 2:
        small, big = sizes
        growth = seconds_at[big] / seconds_at[small]
        table.add(
            f"time growth {small:,} -> {big:,} rows (generate+train+evaluate)",
            f"{growth:.1f}x",
            f"<= {1.2 * big / small:.0f}x",
            growth <= 1.2 * big / small,
        )


# --- 6. data larger than memory, and data parallelism -----------------------------------


def bench_huge(table: Table, repeats: int, work: Path, sizes: list[int]) -> None:
    """Peak memory per stage must not grow with the number of rows."""
    repo = fresh_copy(work / "huge")
    peaks: dict[str, list[int]] = {"generate": [], "train": [], "evaluate": []}
    for n in sizes:
        set_params(repo, data__n_train=n, train__batch_size=65536, train__epochs=1)
        runs = [
            {
                stage: measured(
                    [sys.executable, f"stages/{stage}.py"],
                    repo,
                    {"PYTHONPATH": "src", "TORCHREG_LOG_LEVEL": "WARNING"},
                )
                for stage in peaks
            }
            for _ in range(repeats)
        ]
        size = (repo / "data/train.npy").stat().st_size
        for stage in peaks:
            secs = statistics.median(r[stage][0] for r in runs)
            rss = max(r[stage][1] for r in runs)
            peaks[stage].append(rss)
            table.add(
                f"{n:,} rows x 4 ({size / 2**30:.2f} GiB), batch 65536, 1 epoch: {stage}",
                f"{secs:.1f} s, peak RSS {rss / 2**20:.0f} MiB",
            )
    for stage, (small, big) in peaks.items():
        growth = big / small
        table.add(
            f"peak RSS {sizes[0]:,} -> {sizes[1]:,} rows: {stage}",
            f"{growth:.2f}x",
            "flat (<= 1.1x)",
            growth <= 1.1,
        )
    shutil.rmtree(repo / "data", ignore_errors=True)


def bench_ddp(table: Table, repeats: int, work: Path, rows: int) -> None:
    """The train stage with 1 and 2 processes, where compute dominates and where it does not."""
    repo = fresh_copy(work / "ddp")
    cases = {
        f"mlp [256, 256], {rows:,} rows, batch 4096, 1 epoch": dict(
            data__n_train=rows,
            model__kind="mlp",
            model__hidden=[256, 256],
            train__batch_size=4096,
            train__epochs=1,
            train__optimizer="adam",
        ),
        "linear, default params (500 rows, batch 16, 1000 epochs)": {},
    }
    for name, changes in cases.items():
        subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=repo, check=True)
        set_params(repo, **changes)
        measured([sys.executable, "stages/generate.py"], repo, {"PYTHONPATH": "src"})
        times = {}
        for nproc in (1, 2):
            set_params(repo, train__nproc=nproc)
            times[nproc] = statistics.median(
                measured([sys.executable, "stages/train.py"], repo, {"PYTHONPATH": "src"})[0]
                for _ in range(repeats)
            )
        table.add(
            f"train stage, {name}: 1 vs 2 processes",
            f"{times[1]:.1f} s vs {times[2]:.1f} s = {times[2] / times[1]:.2f}x",
        )


# --- 5. sweeps ---------------------------------------------------------------------------------


def bench_sweep(table: Table, repeats: int, work: Path, epochs: int | None) -> None:
    repo = fresh_copy(work / "sweep")
    if epochs:
        set_params(repo, train__epochs=epochs)
        subprocess.run(["git", "commit", "-qam", "bench epochs"], cwd=repo, check=True)
    grid = {
        f"lr{lr}-bs{bs}": [f"train.lr={lr}", f"train.batch_size={bs}"]
        for lr in ("0.001", "0.01")
        for bs in (16, 64)
    }
    timings: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for jobs in (1, 2):
            queue(repo, grid)
            timings[jobs].append(run_queue(repo, jobs))
    one, two = statistics.median(timings[1]), statistics.median(timings[2])
    table.add("4 queued experiments, `dvc queue start -j 1`", f"{one:.1f} s")
    table.add(
        "4 queued experiments, `dvc queue start -j 2`",
        f"{two:.1f} s = {two / one:.2f}x of -j 1",
        "<= 0.7x",
        two / one <= 0.7,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", action="append", choices=SECTIONS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    repeats = 1 if args.quick else args.repeats
    table = Table()
    desc = machine()
    print(f"Machine: {desc}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="torchreg-bench-") as tmp:
        work = Path(tmp)
        if "loop" in sections:
            bench_loop(table, repeats, epochs=5 if args.quick else 1000)
        if "pipeline" in sections or "noop" in sections:
            bench_pipeline(table, repeats, work, epochs=5 if args.quick else None)
        if "scale" in sections:
            sizes = [10_000, 100_000] if args.quick else [1_000_000, 10_000_000]
            bench_scale(table, min(repeats, 3), work, sizes)
        if "huge" in sections:
            sizes = [100_000, 1_000_000] if args.quick else [10_000_000, 100_000_000]
            bench_huge(table, min(repeats, 3), work, sizes)
        if "ddp" in sections:
            bench_ddp(table, repeats, work, rows=20_000 if args.quick else 1_000_000)
        if "sweep" in sections:
            bench_sweep(table, repeats, work, epochs=5 if args.quick else None)
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        f"# Benchmarks\n\nMachine: {desc}\n\nCommand: `{command.strip()}` "
        f"(median of {repeats} runs per figure)\n\n{table.markdown()}\n"
    )
    args.out.write_text(text)
    print(f"\n{table.markdown()}\n\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
