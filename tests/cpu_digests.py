"""Train and evaluate a set of configurations through the stages' own `run()` and print the
md5 of every output file as JSON: run by test_cpu_independence.py once per forced instruction
set, in a fresh process each time (the settings under test are read when torch first computes).

    python tests/cpu_digests.py WORKDIR
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
import generate  # noqa: E402
import train  # noqa: E402
from torchreg.config import load_params  # noqa: E402
from torchreg.context import RunContext  # noqa: E402


def configs(base):
    """The default run, then every model x optimizer x loss at a small size."""
    yield "default", base
    for kind, optimizer, loss in itertools.product(
        ["linear", "mlp"], ["sgd", "adam"], ["mae", "mse", "huber"]
    ):
        lr = 0.01 if optimizer == "adam" else 0.001
        yield (
            f"{kind}-{optimizer}-{loss}",
            base.model_copy(
                update={
                    "model": base.model.model_copy(update={"kind": kind}),
                    "train": base.train.model_copy(
                        update={"optimizer": optimizer, "loss": loss, "epochs": 20, "lr": lr}
                    ),
                }
            ),
        )
    for activation in ("sigmoid", "tanh"):
        yield (
            f"mlp-adam-{activation}",
            base.model_copy(
                update={
                    "model": base.model.model_copy(
                        update={"kind": "mlp", "activation": activation}
                    ),
                    "train": base.train.model_copy(
                        update={"optimizer": "adam", "epochs": 20, "lr": 0.01}
                    ),
                }
            ),
        )


def main(workdir: Path) -> None:
    base = load_params(ROOT / "params.yaml")
    data = workdir / "data"
    generate.run(base.data, data / "train.npy", data / "test.npy")
    digests = {}
    for name, params in configs(base):
        out = workdir / name
        ctx = RunContext(torch.device("cpu"))
        train.run(params, ctx, data / "train.npy", out / "model.safetensors", out / "dvclive")
        evaluate.run(
            params.data,
            out / "model.safetensors",
            data / "train.npy",
            data / "test.npy",
            {k: out / f"{k}.out" for k in ("metrics", "predictions", "curves")},
        )
        for path in sorted(p for p in [*data.iterdir(), *out.rglob("*")] if p.is_file()):
            digests[str(path.relative_to(workdir))] = hashlib.md5(path.read_bytes()).hexdigest()
    print(json.dumps(digests, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
