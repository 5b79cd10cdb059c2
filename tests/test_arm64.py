"""The portable mode on arm64: every arm64 CPU gives the same bytes, one family, as every
x86-64-v3 CPU does on its side. Checked under emulated arm64 CPUs (qemu-aarch64, user mode):
tools/arm64/setup.sh builds an arm64 Python 3.11 with the aarch64 builds of the lock's
packages, once, into TORCHREG_ARM64_WORK (default /tmp/torchreg-arm64; about 2.5 GB and a few
minutes the first time, seconds after), and tools/arm64/python runs it as a chosen CPU model,
whose /proc/cpuinfo and /sys say what Linux says on that model (libraries pick kernels by it).

tests/cpu_digests.py (every configuration, 1 epoch each) runs under each model; all of them
must agree on every output. Before the portable mode took its products on arm64 from fixed
kernels (torchreg.gemm's ARMV8), a Neoverse N1 and a Cortex-A72 differed from `max` in 61 and
87 of 206 outputs. What the emulation cannot tell: speed, and the bytes of a Mac (another
torch build); the torch here is PyPI's aarch64 build, whose CPU code is the one measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import ROOT, subprocess_env

pytestmark = pytest.mark.slow

# With SVE (all qemu emulates); a Neoverse N1 without SVE; an old Cortex-A72 (ARMv8.0).
CPUS = ("max", "neoverse-n1", "cortex-a72")
WORK = Path(os.environ.get("TORCHREG_ARM64_WORK", "/tmp/torchreg-arm64"))
TOOLS = ROOT / "tools/arm64"


@pytest.fixture(scope="module")
def runtime() -> Path:
    result = subprocess.run(
        ["bash", str(TOOLS / "setup.sh"), str(ROOT), str(WORK)],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return WORK


def digests(tmp_path: Path, cpu: str | None) -> dict[str, str]:
    """tests/cpu_digests.py at 1 epoch: natively (cpu None) or as an emulated arm64 model."""
    env = subprocess_env(ROOT / "src", TORCHREG_LOG_LEVEL="ERROR")
    command = [sys.executable]
    if cpu is not None:
        env.update(ARM64_WORK=str(WORK), ARM64_CPU=cpu)
        command = ["bash", str(TOOLS / "python")]
    out = tmp_path / (cpu or "native")
    result = subprocess.run(
        [*command, str(ROOT / "tests/cpu_digests.py"), str(out), "1"],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, f"{cpu}: {result.stderr[-3000:]}"
    return json.loads(result.stdout)


def test_every_arm64_cpu_gives_the_same_bytes(runtime, tmp_path):
    with ThreadPoolExecutor(2) as pool:  # this machine's cores
        found = dict(zip(CPUS, pool.map(lambda cpu: digests(tmp_path, cpu), CPUS), strict=True))
    first, *others = CPUS
    differ = {cpu: [k for k in found[first] if found[cpu][k] != found[first][k]] for cpu in others}
    assert not any(differ.values()), {cpu: (len(d), d[:5]) for cpu, d in differ.items()}
    # The data is drawn by NumPy's generators and written as float32: the same on x86-64.
    native = digests(tmp_path, None)
    data = [k for k in native if k.startswith("data-")]
    assert data and all(found[first][k] == native[k] for k in data)
    equal = sum(found[first][k] == native[k] for k in native)
    print(f"arm64 ({', '.join(CPUS)}): one family; {equal} of {len(native)} outputs as x86-64's")
