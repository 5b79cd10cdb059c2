"""What a training run reports while it runs: progress on the terminal, the training and
validation losses through DVCLive.

Both are epoch callbacks for `training.fit`, used only by the process that writes.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tqdm import tqdm

from torchreg.errors import UserError

log = logging.getLogger(__name__)
# How often the running summary (dvclive/metrics.json) is rewritten: often enough for
# `dvc exp show` on a running experiment, rarely enough to cost nothing (DVCLive's next_step()
# rewrites it and more on every call: about 5 ms a step).
SUMMARY_EVERY_S = 1.0


class Progress:
    """A progress bar on a terminal; otherwise a log line every tenth of the run."""

    def __init__(self, epochs: int, done: int = 0, val: Sequence[float] = ()) -> None:
        self.epochs, self.every, self.val = epochs, max(1, epochs // 10), val
        self.bar = tqdm(
            total=epochs,
            initial=done,
            desc="train",
            unit="epoch",
            disable=not sys.stderr.isatty(),
        )

    def __call__(self, epoch: int, loss: float) -> None:
        val = f"  val_loss {self.val[epoch]:.6f}" if epoch < len(self.val) else ""
        if self.bar.disable:
            if (epoch + 1) % self.every == 0 or epoch == 0:
                log.info("epoch %d/%d  loss %.6f%s", epoch + 1, self.epochs, loss, val)
        else:
            self.bar.set_postfix_str(f"loss {loss:.6f}{val}", refresh=False)
            self.bar.update()

    def close(self) -> None:
        self.bar.close()


class LiveLog:
    """The per-epoch losses in DVCLive's layout, written as training goes: each epoch appends a
    row to dvclive/plots/metrics/train_loss.tsv (and val_loss.tsv), and the summary
    dvclive/metrics.json (what `dvc exp show` reads from a running experiment) is rewritten at
    most every SUMMARY_EVERY_S.

    The folder is cleared first, so it never mixes two runs (DVC removes it before the stage
    anyway); a resumed run then logs the losses of the epochs it resumes after again, so its
    files are the same bytes as an uninterrupted run's. The final summary is written when the
    block ends without an error, and a run that fails or is interrupted removes its partial
    log. A SIGKILLed run leaves a partial log and no model: DVC sees a failed stage and caches
    neither, and the next `dvc repro` reruns it (resuming from its checkpoint).
    """

    def __init__(
        self, live_dir: Path, history: Sequence[float] = (), val: Sequence[float] = ()
    ) -> None:
        """`val`: the validation loss of each epoch, filled in before the epoch's call."""
        self.live_dir, self.history, self.val = live_dir, history, val
        self._last_summary = 0.0

    def __enter__(self) -> LiveLog:
        from dvclive import Live  # not at module import: it costs the stage half a second

        try:
            shutil.rmtree(self.live_dir, ignore_errors=True)
            self.live = Live(str(self.live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
        except OSError as exc:
            raise UserError(f"cannot write {self.live_dir}: {exc.strerror or exc}") from None
        for epoch, loss in enumerate(self.history):
            self(epoch, loss)
        return self

    def __call__(self, epoch: int, loss: float) -> None:
        try:
            self.live.step = epoch
            self.live.log_metric("train_loss", loss)
            if epoch < len(self.val):
                self.live.log_metric("val_loss", self.val[epoch])
            now = time.monotonic()
            if now - self._last_summary >= SUMMARY_EVERY_S:
                self.live.make_summary()
                self._last_summary = now
        except OSError as exc:
            raise UserError(f"cannot write {self.live_dir}: {exc.strerror or exc}") from None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None:
            shutil.rmtree(self.live_dir, ignore_errors=True)
            return
        try:
            self.live.make_summary()  # end() takes the step from the last summary written
            self.live.end()
        except OSError as exc:
            shutil.rmtree(self.live_dir, ignore_errors=True)
            raise UserError(f"cannot write {self.live_dir}: {exc.strerror or exc}") from None
