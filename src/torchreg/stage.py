"""What every stage's `main()` shares: logging set-up and turning user errors into one line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from torchreg.errors import UserError

# The pid of the train stage process that launched this rank (set by context.launch). Such a
# rank stays quiet on an interrupt: the launcher reports it, once.
LAUNCHER_ENV = "TORCHREG_LAUNCHER_PID"
# The last guard on a message that echoes something huge (a 1 MB cell quoted by a parser):
# keep its start (what and where) and its end (what to do).
MAX_MESSAGE = 600
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def stage_parser(doc: str, uses: str) -> argparse.ArgumentParser:
    """A stage's command line: its docstring's first paragraph, every default shown, and the
    --params option every stage has (`uses`: the params it reads)."""
    result = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    result.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help=f"the params file; uses {uses}"
    )
    return result


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signum)


def quiet_interrupts(stage: str) -> None:
    """Until `run_main` takes over, end the process on Ctrl-C or SIGTERM with its one line.

    A stage calls this before its heavy imports (torch takes seconds): an interrupt there
    would otherwise print a traceback through the import machinery. Nothing has been written
    yet, so exiting at once loses nothing."""

    def stop(signum: int, frame: object) -> None:
        _say_interrupted(stage, signum)
        raise SystemExit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # `nohup`, `cmd &`: stay ignored
            signal.signal(signum, stop)
    _quiet.add(stop)
    stop_with_dvc()  # as early as can be: dvc may be killed while torch is imported


_quiet: set[Callable] = set()  # the handlers quiet_interrupts installed


def _say_interrupted(stage: str, signum: int) -> None:
    if os.environ.get(LAUNCHER_ENV, str(os.getpid())) == str(os.getpid()):
        name = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        print(f"{stage}: {name}; no output was written", file=sys.stderr)


# Set once the dvc process that started this stage is gone (see stop_with_dvc).
ORPHANED = threading.Event()
ORPHAN_GRACE_S = 10.0  # from SIGTERM to SIGKILL, for a stage stuck in a long C call


def stop_with_dvc() -> None:
    """A stage that DVC started ends when that dvc process ends, however it ends: a kill -9 of
    `dvc repro` must not leave a trainer behind, writing outputs and checkpoints while the next
    `dvc repro` runs its own. A thread looks twice a second at the processes between this one
    and dvc (the shell DVC runs the command in, a launcher); once one of them is gone, or if
    dvc was gone before the stage could look, the stage gets SIGTERM, as from `kill` (its one
    line; a checkpoint saved is kept). Started by hand (no DVC_STAGE in the environment, which
    DVC sets), a stage outlives its shell as any program does (`nohup`). Called by
    quiet_interrupts, before the heavy imports, and by run_main; the thread starts once."""
    if "DVC_STAGE" not in os.environ or _watching:
        return
    _watching.append(True)
    chain = _up_to_dvc()

    def watch() -> None:
        while _intact(chain):
            time.sleep(0.5)
        ORPHANED.set()  # from now on no output is put in place (files.atomic_path)
        os.kill(os.getpid(), signal.SIGTERM)
        # A long numpy or torch call delays Python's handler: end it all the same.
        time.sleep(ORPHAN_GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="stop-with-dvc", daemon=True).start()


_watching: list[bool] = []  # not empty once stop_with_dvc has started its thread


def _names_dvc(process: object) -> bool:
    """Whether a process is the dvc program (`dvc ...`, `python .../dvc ...`, `python -m dvc`)."""
    import psutil

    try:
        args = process.cmdline()
    except psutil.Error:
        return False
    return any(Path(a).name in ("dvc", "dvc.exe") for a in args[:2]) or args[1:3] == ["-m", "dvc"]


def _up_to_dvc() -> list:
    """This process's ancestors, nearest first, up to the dvc process that ran the stage: the
    first one that is the dvc program or was started without DVC_STAGE (DVC sets it for the
    stage's command only, so the shell that runs the command has it, and so does a launcher).
    Empty where dvc is gone already: the walk ended at init (pid 1), which adopted the orphans,
    unless init is dvc itself (`docker run ... dvc repro`)."""
    import psutil

    chain = [psutil.Process().parent()]
    while chain[-1] is not None:
        try:
            if _names_dvc(chain[-1]) or "DVC_STAGE" not in chain[-1].environ():
                break
            chain.append(chain[-1].parent())
        except psutil.Error:  # gone, or not ours to read: count it as dvc
            break
    chain = [p for p in chain if p is not None]
    if chain and chain[-1].pid == 1 and not _names_dvc(chain[-1]):
        return []
    return chain


def _intact(chain: list) -> bool:
    """Whether each process of `chain` is still the child of the next (False for no chain). A
    process that dies hands its children to another parent at once, before anyone reaps it."""
    import psutil

    try:
        links = zip([os.getpid(), *(p.pid for p in chain)], chain, strict=False)
        return bool(chain) and all(psutil.Process(a).ppid() == b.pid for a, b in links)
    except psutil.Error:
        return False


def run_main(stage: str, body: Callable[[], object]) -> None:
    """Run a stage body; a user mistake, Ctrl-C or SIGTERM ends it with one line, not a
    traceback (exit 2 for a mistake, 128 + the signal's number for an interrupt)."""
    level = os.environ.get("TORCHREG_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        print(
            f"{stage}: error: TORCHREG_LOG_LEVEL = {_bounded(repr(level))} is not a log level "
            f"(allowed: {', '.join(LOG_LEVELS)})",
            file=sys.stderr,
        )
        sys.exit(2)
    logging.basicConfig(
        level=level,
        format=f"{stage}: %(message)s",
        stream=sys.stderr,
    )
    if signal.getsignal(signal.SIGINT) in _quiet:  # from here on, clean up first
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: clean up, one line
    stop_with_dvc()
    try:
        body()
    except UserError as exc:
        print(f"{stage}: error: {_bounded(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
        _say_interrupted(stage, signum)
        sys.exit(128 + signum)


def _bounded(message: str) -> str:
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    if len(message) <= MAX_MESSAGE:
        return message
    half = (MAX_MESSAGE - 5) // 2
    return f"{message[:half]} ... {message[-half:]}"
