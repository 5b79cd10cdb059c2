"""A queued experiment shows its loss in `dvc exp show` while it trains (DVCLive, live)."""

import time

import dvc.api
import pytest
from dvc.exceptions import NotDvcRepoError

from support import run

pytestmark = pytest.mark.slow


def test_running_experiment_shows_its_loss(repo):
    # Long enough to be caught running: a million epochs of the default run take minutes.
    run(["dvc", "exp", "run", "--queue", "-n", "long", "-S", "train.epochs=1000000"], repo)
    # Output to a file: the workers inherit it, and a pipe would stay open until they end.
    with open(repo.parent / "queue.log", "w") as log:
        run(
            ["dvc", "queue", "start", "-j", "1"], repo, capture_output=False, stdout=log, stderr=log
        )
    try:
        seen = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(seen) < 2:
            try:
                rows = dvc.api.exp_show(repo=str(repo))
            except NotDvcRepoError:
                # DVC 3.67.1 lists a running task before its temporary workspace has a .dvc
                # folder; asked in that moment, exp_show fails. Ask again.
                rows = []
            except FileNotFoundError as error:
                # Likewise before the task has written its info file, .dvc/tmp/exps/run/REV/REV.run.
                if not str(error.filename).endswith(".run"):
                    raise
                rows = []
            for row in rows:
                running = row.get("Experiment") == "long" and row.get("State") == "Running"
                if running and row.get("train_loss") is not None and row["step"] not in seen:
                    seen.append(row["step"])
            time.sleep(1)
        # Two different epochs seen while it ran: the summary is rewritten as it trains.
        assert len(seen) >= 2, f"no live loss seen within 180 s (saw steps {seen})"
        assert all(0 <= step < 1_000_000 - 1 for step in seen)
    finally:
        run(["dvc", "queue", "kill", "long"], repo, check=False)
        run(["dvc", "queue", "stop", "--kill"], repo, check=False)
