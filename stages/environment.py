"""Record what outside the params and the code can change output bytes: the versions of the
packages that compute or write them, and the family of CPUs that gives the same bytes.

DVC runs this stage on every `dvc repro` (`always_changed`), in a fraction of a second (no
torch import). The other stages read its keys as params, so upgrading numpy reruns generate,
train, evaluate and plot; moving to a CPU of another family reruns train and evaluate; and a
run with the same environment reruns nothing. `dvc exp show` shows the keys beside the params.

Reads:  params.yaml (compute.cpu), the installed packages' metadata, /proc/cpuinfo
Writes: environment.yaml
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from torchreg.config import load_params
from torchreg.cpu import family
from torchreg.files import write_bytes
from torchreg.stage import run_main, stage_parser

# The packages whose version can change some output's bytes (what they compute or write).
PACKAGES = ("numpy", "torch", "safetensors", "dvclive", "matplotlib", "pillow")
HEADER = "# Written by stages/environment.py on every `dvc repro`: do not edit.\n"


def describe(cpu_mode: str) -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return {"cpu": family(cpu_mode), **found}


def run(cpu_mode: str, out: Path) -> dict[str, str]:
    found = describe(cpu_mode)
    # Quoted, so that every value is a string to YAML (a version like 2.10 is not a number).
    text = HEADER + "".join(f'{key}: "{value}"\n' for key, value in found.items())
    write_bytes(out, text.encode())
    return found


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, "compute.cpu")
    parser.add_argument(
        "--out", type=Path, default=Path("environment.yaml"), help="the file to write"
    )
    args = parser.parse_args(argv)
    run_main("environment", lambda: run(load_params(args.params).compute.cpu, args.out))


if __name__ == "__main__":
    main()
