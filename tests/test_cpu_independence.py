"""Same params, same bytes on any x86-64 CPU: train and evaluate under forced instruction sets.

One machine stands in for others by forcing the knobs by which torch, MKL, oneDNN and NumPy pick
their kernels. Every run must give byte-identical outputs. A control run of plain torch (without
the package's settings) shows that the forcing is live: there, the same knobs change the bits.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, subprocess_env

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
KNOBS = ("MKL_", "ATEN_", "OMP_")  # this process's own settings of them are left out
FLAGS = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
HAS_AVX2, HAS_AVX512 = "avx2" in FLAGS, "avx512f" in FLAGS


def forced_settings() -> list[dict[str, str]]:
    """Stand-ins for other CPUs: this one as it is, an old one (SSE4.2 only), an AVX2 one, an
    AVX-512 one, and the two knobs that matter most alone. The thread count is forced too: it
    follows the number of cores."""
    oldest = {
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4",
        "OMP_NUM_THREADS": "3",
    }
    settings = [{}, oldest, {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}]
    if HAS_AVX2:
        avx2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
        settings += [{**avx2, "ONEDNN_MAX_CPU_ISA": "AVX2", "NPY_DISABLE_CPU_FEATURES": "X86_V4"}]
        settings += [{"ATEN_CPU_CAPABILITY": "avx2"}]
    if HAS_AVX512:
        settings += [{"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ATEN_CPU_CAPABILITY": "avx512"}]
    return settings


def digests(workdir: Path, forced: dict[str, str]) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, str(HERE / "cpu_digests.py"), str(workdir)],
        env=subprocess_env(ROOT / "src", drop=KNOBS, **forced),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_outputs_do_not_depend_on_the_instruction_set(tmp_path):
    first = None
    for i, forced in enumerate(forced_settings()):
        got = digests(tmp_path / str(i), forced)
        assert len(got) > 50  # every configuration wrote its files
        if first is None:
            first = got
            continue
        differ = sorted(name for name in got if got[name] != first[name])
        assert not differ, f"under {forced}: {differ}"


CONTROL = """
import hashlib, torch
g = torch.Generator().manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Sigmoid(), torch.nn.Linear(64, 1))
opt = torch.optim.Adam(net.parameters(), lr=0.01)
x, y = torch.randn(4096, 4, generator=g), torch.randn(4096, 1, generator=g)
for _ in range(20):
    opt.zero_grad(); torch.nn.functional.l1_loss(net(x), y).backward(); opt.step()
print(hashlib.md5(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest())
"""


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has one code path only: nothing to force")
def test_the_forcing_is_live_without_the_package_settings():
    """Plain torch, no torchreg: the knobs the test forces really change the bits."""

    def plain(**forced: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", CONTROL],
            env=subprocess_env(ROOT / "src", drop=KNOBS, **forced),
            capture_output=True,
            text=True,
        )
        return run.stdout.strip()

    assert plain(MKL_ENABLE_INSTRUCTIONS="SSE4_2") != plain(MKL_ENABLE_INSTRUCTIONS="AVX2")
    assert plain(ATEN_CPU_CAPABILITY="default") != plain(ATEN_CPU_CAPABILITY="avx2")
