"""Prepare the train, validation and test splits from the data source (data.source).

synthetic: draw y = f(x) + N(0, noise_std), x ~ N(0, 1), each split from its own seed stream.
table:     read data.table.path (CSV or Parquet), keep the target and the features, split the
           rows by a hash of each row and data.seed, standardise the features on the training
           split (data.table.standardize).

Reads:  params.yaml (data.*), environment.yaml (numpy, pyarrow), the table (data.table.path)
Writes: data/train.npy, data/val.npy, data/test.npy (float32, rows x (features + 1): the
        features, then y), data/features.json (the columns' names, the rows of each split,
        the rows dropped, the standardisation)
"""

from __future__ import annotations

from torchreg.stage import quiet_interrupts, run_main, stage_parser

if __name__ == "__main__":  # first: Ctrl-C during the imports below is one line too
    quiet_interrupts("prepare")

import logging
from pathlib import Path

from torchreg import environment
from torchreg.config import DataConfig, load_params
from torchreg.data import check_disk, nbytes, write_dataset
from torchreg.data.split import SPLITS, Prepared, prepare_table
from torchreg.environment import ENVIRONMENT_FILE
from torchreg.files import check_writable, write_json

log = logging.getLogger("prepare")


def run(cfg: DataConfig, out: dict[str, Path], features_path: Path) -> Prepared:
    check_writable(*out.values(), features_path)
    if cfg.source == "table":
        prepared = prepare_table(cfg, out, features_path)
        for split in SPLITS:
            log.info("wrote %s: %d rows", out[split], prepared.rows[split])
        return prepared
    rows = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    check_disk({out[s]: nbytes(rows[s], cfg.n_features) for s in SPLITS})
    prepared = Prepared([f"x{j}" for j in range(cfg.n_features)], "y", rows)
    for split in SPLITS:
        write_dataset(out[split], cfg, split, rows[split])
        log.info(
            "wrote %s: %d rows x %d features (target %s)",
            out[split],
            rows[split],
            cfg.n_features,
            cfg.target,
        )
    write_json(features_path, prepared.record("synthetic"))
    return prepared


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, "data.*")
    for split, what in (("train", "training"), ("val", "validation"), ("test", "test")):
        parser.add_argument(
            f"--{split}",
            type=Path,
            default=Path(f"data/{split}.npy"),
            help=f"where to write the {what} set",
        )
    parser.add_argument(
        "--features",
        type=Path,
        default=Path("data/features.json"),
        help="where to write the columns' names, the split sizes and the standardisation",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        environment.check("prepare", path=args.params.parent / ENVIRONMENT_FILE)
        out = {split: getattr(args, split) for split in SPLITS}
        run(params.data, out, args.features)

    run_main("prepare", body)


if __name__ == "__main__":
    main()
