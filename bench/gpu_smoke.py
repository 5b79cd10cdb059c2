"""GPU smoke check for a maintainer with a CUDA machine: python bench/gpu_smoke.py

Runs the train and evaluate stages on CUDA and on the CPU, at the default params and at
10,000,000 rows (batch 4096, 1 epoch), in a temporary clone of the repo, and prints the
device, the times and the metrics side by side. The metrics should agree to float tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fresh_copy, measured  # noqa: E402
from sweep import set_params  # noqa: E402

CASES = {
    "default params": {},
    "10,000,000 rows, batch 4096, 1 epoch": dict(
        data__n_train=10_000_000, train__batch_size=4096, train__epochs=1
    ),
}


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; run this on a machine with a GPU", file=sys.stderr)
        return 2
    print(
        f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}"
    )
    env = {"PYTHONPATH": "src", "TORCHREG_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp:
        repo = fresh_copy(Path(tmp) / "repo")
        for name, changes in CASES.items():
            subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=repo, check=True)
            set_params(repo, **changes)
            measured([sys.executable, "stages/prepare.py"], repo, env)
            for device in ("cuda", "cpu"):
                set_params(repo, train__device=device)
                t_train, _ = measured([sys.executable, "stages/train.py"], repo, env)
                t_eval, _ = measured([sys.executable, "stages/evaluate.py"], repo, env)
                m = json.loads((repo / "metrics/evaluate.json").read_text())
                print(
                    f"{name:40s} {device:4s}  train {t_train:6.2f} s  evaluate {t_eval:5.2f} s"
                    f"  test.mae {m['test']['mae']:.6g}  train.mae {m['train']['mae']:.6g}"
                    f"  reference {m['reference']['test_mae']:.6g}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
