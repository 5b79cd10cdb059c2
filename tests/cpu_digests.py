"""Train and evaluate a set of configurations through the stages' own `run()` and print the
md5 of every output file as JSON: run by test_cpu_independence.py once per forced instruction
set, in a fresh process each time (the settings under test are read when torch first computes).

    python tests/cpu_digests.py WORKDIR [EPOCHS]

EPOCHS caps every configuration's epochs (the default run's 1000 included): under an emulated
CPU, a few epochs show any op that rounds differently, in a fraction of the time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "stages"), str(ROOT / "src")]

import torch  # noqa: E402

import evaluate  # noqa: E402 - the stage scripts, imported as modules
import prepare  # noqa: E402
import train  # noqa: E402
from torchreg import cpu, parallel  # noqa: E402
from torchreg.config import load_params  # noqa: E402
from torchreg.context import RunContext  # noqa: E402


def configs(base):
    """(name, params) for the default run, then every model x optimizer x loss, the
    activations, the lr schedules, weight averaging and the other targets, at a small size."""

    def variant(name, data=None, model=None, **train):
        optimizer = train.get("optimizer", "sgd")
        train = {"epochs": 20, "lr": 0.01 if optimizer == "adam" else 0.001, **train}
        return name, base.model_copy(
            update={
                "data": base.data.model_copy(update=data or {}),
                "model": base.model.model_copy(update=model or {}),
                "train": base.train.model_copy(update=train),
            }
        )

    yield "default", base
    for kind, optimizer, loss in itertools.product(
        ["linear", "mlp"], ["sgd", "adam"], ["mae", "mse", "huber"]
    ):
        yield variant(
            f"{kind}-{optimizer}-{loss}", None, {"kind": kind}, optimizer=optimizer, loss=loss
        )
    for activation in ("sigmoid", "tanh"):
        yield variant(
            f"mlp-adam-{activation}",
            None,
            {"kind": "mlp", "activation": activation},
            optimizer="adam",
        )
    for schedule in ("cosine", "step"):
        yield variant(f"linear-sgd-{schedule}", lr_schedule=schedule)
        yield variant(
            f"mlp-adam-{schedule}", None, {"kind": "mlp"}, optimizer="adam", lr_schedule=schedule
        )
    yield variant("linear-sgd-swa", average="swa")
    yield variant("mlp-adam-swa", None, {"kind": "mlp"}, optimizer="adam", average="swa")
    # Products of parallel.MIN_BLOCKED_WORK multiply-adds and more (2500 x 128 x 256), and
    # batches of 2 * parallel.BLOCK_ROWS rows and more: split into fixed blocks.
    assert parallel.MIN_BLOCKED_WORK <= 2500 * 128 * 256 and 2 * parallel.BLOCK_ROWS <= 2500
    yield variant(
        "mlp-adam-blocked",
        {"n_train": 5000},
        {"kind": "mlp", "hidden": (128, 256)},
        optimizer="adam",
        batch_size=2500,
    )
    for target in ("quadratic", "sine"):
        yield variant(f"{target}-mlp-adam", {"target": target}, {"kind": "mlp"}, optimizer="adam")
    # A user's tables: parsing, the hash split and the standardisation, then early stopping.
    for table, target, model, missing in (
        ("cars.csv", "Miles_per_Gallon", "linear", "drop"),
        ("diabetes.csv", "progression", "mlp", "refuse"),
    ):
        path = str(ROOT / "examples/tables" / table)
        own = base.data.table.model_copy(
            update={"path": path, "target": target, "missing": missing}
        )
        yield variant(
            f"table-{table}-{model}",
            {"source": "table", "table": own},
            {"kind": model},
            lr=0.01,
            patience=3,
        )


def main(workdir: Path, epochs: int | None = None) -> None:
    cpu.use("portable")  # as the stages do: says so on a CPU outside the x86-64-v3 family
    digests = {}
    base = load_params(ROOT / "params.yaml")
    # train's `auto` values as on the synthetic source; the tables' set theirs below
    for name, params in configs(base.resolved("synthetic", base.data.n_train)):
        if epochs is not None:
            cfg = params.train
            params = params.model_copy(
                update={"train": cfg.model_copy(update={"epochs": min(cfg.epochs, epochs)})}
            )
        source = params.data
        what = Path(source.table.path).stem if source.source == "table" else source.target
        data = workdir / f"data-{source.source}-{what}-{source.n_train}"
        if not data.exists():
            out = {split: data / f"{split}.npy" for split in ("train", "val", "test")}
            prepare.run(params.data, out, data / "features.json")
        out = workdir / name
        ctx = RunContext(torch.device("cpu"))
        features = data / "features.json"
        train.run(
            params, ctx, data / "train.npy", out / "model.safetensors", out / "dvclive", None,
            data / "val.npy", features,
        )  # fmt: skip
        evaluate.run(
            params.data,
            out / "model.safetensors",
            data / "train.npy",
            data / "test.npy",
            {k: out / f"{k}.out" for k in ("metrics", "predictions", "curves")},
            params.train.loss,
            frozenset(),
            features,
        )
        for path in sorted(p for p in [*data.iterdir(), *out.rglob("*")] if p.is_file()):
            digests[str(path.relative_to(workdir))] = hashlib.md5(path.read_bytes()).hexdigest()
    print(json.dumps(digests, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
