"""environment.yaml: what besides the params and the code can change output bytes.

The file records the versions of the packages that compute or write the outputs and the
family of CPUs that gives the same bytes (torchreg.cpu). It is committed, and the stages read
its keys as params in dvc.yaml, so DVC treats them like any param: a change reruns exactly the
stages it can affect, and `dvc exp show` shows them. DVC cannot see what is installed, so each
stage checks, before any work, that the record is true here, and refuses in one line if not.
After changing the environment (`./run.sh lock`, a new machine), record it with

    python -m torchreg.environment          # writes environment.yaml
    python -m torchreg.environment --check  # says whether it is true here (exit 1 if not)

This module must not import torch (the plot stage does not use torch).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from torchreg.cpu import family
from torchreg.errors import ConfigError, UserError
from torchreg.files import write_bytes

ENVIRONMENT_FILE = Path("environment.yaml")
PACKAGES = (
    "numpy",
    "pyarrow",
    "torch",
    "scipy-openblas32",
    "safetensors",
    "dvclive",
    "matplotlib",
    "pillow",
)
# What each stage depends on; dvc.yaml lists the same keys (a test checks).
STAGE_KEYS = {
    "prepare": ("numpy", "pyarrow"),
    "train": ("cpu", "numpy", "torch", "scipy-openblas32", "safetensors", "dvclive"),
    "evaluate": ("cpu", "numpy", "torch", "scipy-openblas32", "safetensors"),
    "plot": ("numpy", "matplotlib", "pillow"),
}
RECORD = "python -m torchreg.environment"
MAX_SHOWN = 2  # differences named in one message
HEADER = (
    "# What besides params.yaml and the code can change output bytes; the stages read these\n"
    "# as params and refuse to run where they are not true.\n"
    "# Written by: python -m torchreg.environment\n"
    "# cpu: the family of CPUs that gives the same bytes under compute.cpu: portable.\n"
)


def found() -> dict[str, str]:
    """What this machine has, in the file's keys."""
    out = {"cpu": family()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def record(path: Path = ENVIRONMENT_FILE) -> dict[str, str]:
    here = found()
    # Quoted, so that every value is a string to YAML (a version like 2.10 is not a number).
    write_bytes(path, (HEADER + "".join(f'{k}: "{v}"\n' for k, v in here.items())).encode())
    return here


def recorded(path: Path = ENVIRONMENT_FILE) -> dict[str, str]:
    from torchreg.config import read_params_file  # YAML as DVC reads it

    try:
        raw = read_params_file(path)
    except UserError as exc:
        text = str(exc)
        if "expected a mapping of sections" in text:  # read_params_file speaks of params.yaml
            text = f'{path}: expected lines of `key: "value"` ({", ".join(found())})'
        raise ConfigError(f"{text}; record this machine's with: {RECORD}") from None
    return {str(k): str(v) for k, v in raw.items()}


def check(
    stage: str | Iterable[str], cpu_mode: str = "portable", path: Path = ENVIRONMENT_FILE
) -> None:
    """Refuse, in one line, to run `stage` (or several: the file is read once) where the record
    it depends on is not true. The CPU is checked in portable mode only: native mode promises
    nothing across machines. Without a record (a stage run by hand outside the repository)
    there is nothing to check; under DVC there always is one, as the stages list it among their
    params."""
    if not path.exists():
        return
    stages = [stage] if isinstance(stage, str) else list(stage)
    needed = {k for name in stages for k in STAGE_KEYS[name]}
    keys = [k for k in found() if k in needed and (k != "cpu" or cpu_mode == "portable")]
    wrong = mismatches(keys, recorded(path), found())
    if wrong:
        raise ConfigError(
            f"{path} records {'; '.join(wrong)}: this environment would give other bytes than "
            f"the ones recorded. Record it with `{RECORD}` (then `dvc repro` reruns what it "
            "affects), or install what is recorded (./run.sh setup)"
        )


def mismatches(keys: Iterable[str], was: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs, the first MAX_SHOWN of it, then how many more."""
    wrong = [
        f"{key} {was[key]!r} but this machine has {now[key]!r}"
        if key in was
        else f"no {key} (this machine has {now[key]!r})"
        for key in keys
        if was.get(key) != now[key]
    ]
    more = len(wrong) - MAX_SHOWN
    return wrong[:MAX_SHOWN] + ([f"and {more} more"] if more > 0 else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is true here")
    parser.add_argument("--file", type=Path, default=ENVIRONMENT_FILE)
    args = parser.parse_args(argv)
    try:
        if not args.check:
            here = record(args.file)
            print(f"wrote {args.file}: " + ", ".join(f"{k} {v}" for k, v in here.items()))
            return
        here = found()
        wrong = mismatches(here, recorded(args.file), here)
    except (UserError, OSError) as exc:
        sys.exit(f"environment: error: {exc}")
    if wrong:
        sys.exit(f"environment: {args.file} records {'; '.join(wrong)} (record it: {RECORD})")
    print(f"{args.file} is true here")


if __name__ == "__main__":
    main()
