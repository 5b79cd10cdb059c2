"""What every stage's `main()` shares: logging set-up and turning user errors into one line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from torchreg.errors import UserError

# The last guard on a message that echoes something huge (a 1 MB cell quoted by a parser):
# keep its start (what and where) and its end (what to do).
MAX_MESSAGE = 600


def run_main(stage: str, body: Callable[[], object]) -> None:
    """Run a stage body; a user mistake or Ctrl-C ends it with one line, not a traceback."""
    logging.basicConfig(
        level=os.environ.get("TORCHREG_LOG_LEVEL", "INFO"),
        format=f"{stage}: %(message)s",
        stream=sys.stderr,
    )
    try:
        body()
    except UserError as exc:
        print(f"{stage}: error: {_bounded(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; no output was written", file=sys.stderr)
        sys.exit(130)


def _bounded(message: str) -> str:
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    if len(message) <= MAX_MESSAGE:
        return message
    half = (MAX_MESSAGE - 5) // 2
    return f"{message[:half]} ... {message[-half:]}"
