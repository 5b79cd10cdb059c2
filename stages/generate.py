"""Generate the synthetic train and test sets: y = f(x) + N(0, noise_std), x ~ N(0, 1).

Reads:  params.yaml (data.*), environment.yaml (numpy)
Writes: data/train.npy, data/test.npy  (float32, rows x (features + 1): the features, then y)
"""

from __future__ import annotations

from torchreg.stage import quiet_interrupts, run_main, stage_parser

if __name__ == "__main__":  # first: Ctrl-C during the imports below is one line too
    quiet_interrupts("generate")

import logging
from pathlib import Path

from torchreg import environment
from torchreg.config import DataConfig, load_params
from torchreg.data import check_disk, nbytes, write_dataset
from torchreg.environment import ENVIRONMENT_FILE
from torchreg.files import check_writable

log = logging.getLogger("generate")


def run(cfg: DataConfig, train_path: Path, test_path: Path) -> None:
    check_writable(train_path, test_path)
    sizes = {"train": (train_path, cfg.n_train), "test": (test_path, cfg.n_test)}
    check_disk({path: nbytes(rows, cfg.n_features) for path, rows in sizes.values()})
    for split, (path, rows) in sizes.items():
        write_dataset(path, cfg, split, rows)
        log.info(
            "wrote %s: %d rows x %d features (target %s)", path, rows, cfg.n_features, cfg.target
        )


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__, "data.*")
    parser.add_argument(
        "--train", type=Path, default=Path("data/train.npy"), help="where to write the training set"
    )
    parser.add_argument(
        "--test", type=Path, default=Path("data/test.npy"), help="where to write the test set"
    )
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        environment.check("generate", path=args.params.parent / ENVIRONMENT_FILE)
        run(params.data, args.train, args.test)

    run_main("generate", body)


if __name__ == "__main__":
    main()
