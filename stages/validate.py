"""Check params.yaml before any other stage runs, so a params mistake deletes nothing.

`dvc repro` and `dvc exp run` remove a stage's outputs just before running its command
(dvc/stage/__init__.py, `Stage.run`: `self.remove_outs(...)`). Every other stage depends on this
stage's output, so DVC runs this one first; a bad value stops the pipeline here, before DVC
reaches train and removes the last good model.

Reads:  params.yaml (every section), environment.yaml, the header of data.table.path
Writes: metrics/params.ok  (always the same bytes, so a params change reruns only the stages
        that use the changed params)
"""

from __future__ import annotations

from torchreg.stage import quiet_interrupts, run_main, stage_parser

if __name__ == "__main__":  # first: Ctrl-C during the imports below is one line too
    quiet_interrupts("validate")

from pathlib import Path

from torchreg import environment
from torchreg.config import load_params
from torchreg.data.table import Table
from torchreg.environment import ENVIRONMENT_FILE, STAGE_KEYS
from torchreg.errors import ConfigError, DataError
from torchreg.files import write_bytes

OK = b"params.yaml checked\n"


def run(params_path: Path, out: Path) -> None:
    params = load_params(params_path)
    # The environment record too: a stage that found it untrue would refuse only after DVC had
    # removed its outputs.
    record = params_path.parent / ENVIRONMENT_FILE
    environment.check(STAGE_KEYS, params.compute.cpu, record)
    # The table too: prepare lists it as a dependency whatever the source (DVC needs the file
    # to exist), and a table's header can be checked without reading its rows.
    table = params_path.parent / params.data.table.path
    if params.data.source == "table":
        features = Table(params.data.table, params_path.parent).numeric_features
        # plot would refuse it, after the training (a table of categories alone: any input)
        if features and params.plot.feature >= len(features):
            allowed = f"allowed 0..{len(features) - 1} (its {len(features)} numeric features: "
            raise ConfigError(
                f"plot.feature = {params.plot.feature} is not a numeric feature of "
                f"{params.data.table.path}: "
                + f"{allowed}{', '.join(features)})"
                + "; choose the one plots/fit.png draws against the target, e.g. "
                "-S plot.feature=0"
            )
    elif not table.is_file():
        raise DataError(
            f"data.table.path = {params.data.table.path}: not a file; prepare lists it as a "
            "dependency even for the synthetic source: name an existing table (the default "
            "is examples/tables/cars.csv)"
        )
    write_bytes(out, OK)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, "every section")
    parser.add_argument(
        "--out", type=Path, default=Path("metrics/params.ok"), help="the marker to write"
    )
    args = parser.parse_args(argv)
    run_main("validate", lambda: run(args.params, args.out))


if __name__ == "__main__":
    main()
