"""Same params, same bytes on any x86-64 CPU: train and evaluate under forced instruction sets
and under emulated CPUs.

One machine stands in for others in two ways. Forcing the knobs by which torch, MKL, oneDNN and
NumPy pick their kernels shows the code paths of one CPU. Emulating whole CPUs of both vendors
(`qemu-x86_64 -cpu MODEL`: CPUID reports that CPU, vendor included, so MKL, ATen, NumPy and the
C library dispatch as they would on it) shows what forcing cannot: library code that rounds
differently per CPU model or vendor. Every run must give byte-identical outputs within a family
of CPUs (torchreg.cpu). Control runs of plain torch (without the package's settings) show that
the forcing and the emulation are live: there, they change the bits.
"""

import json
import os
import shutil
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


# Emulated CPUs: x86-64-v3 (AVX2 and FMA), both vendors, gives the bytes of this machine; the
# baseline family (no AVX2) gives bytes of its own, the same on each of its CPUs (Intel only:
# AMD models without AVX2 stop at an illegal instruction while importing torch under qemu).
V3_CPUS = ("Haswell-v4", "EPYC-Rome")
BASELINE_CPUS = ("Nehalem", "SandyBridge")
EMULATED_EPOCHS = 1  # any op that rounds differently shows in the first steps
QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(
    QEMU is None and not os.environ.get("CI"),
    reason="qemu-user is not installed (apt-get install qemu-user; CI installs it)",
)


def emulated(cpu: str | None, args: list[str], **forced: str) -> subprocess.Popen:
    """A Python process of this venv, under an emulated `cpu` (None: this CPU). Niced: five of
    them run at once for minutes, and the slow tier's other worker runs DVC queue workers whose
    own timeouts must not starve."""
    prefix = [] if cpu is None else [QEMU or "qemu-x86_64", "-cpu", cpu]
    return subprocess.Popen(
        ["nice", "-n", "10", *prefix, sys.executable, *args],
        env=subprocess_env(ROOT / "src", drop=KNOBS, **forced),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def emulated_digests(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Digests of every configuration, natively and under each emulated CPU, all at once."""
    work = tmp_path_factory.mktemp("emulated")
    args = [str(HERE / "cpu_digests.py")]
    runs = {
        cpu: emulated(
            None if cpu == "native" else cpu, [*args, str(work / cpu), str(EMULATED_EPOCHS)]
        )
        for cpu in ("native", *V3_CPUS, *BASELINE_CPUS)
    }
    results = {}
    for cpu, proc in runs.items():
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, f"{cpu}: {err[-2000:]}"
        results[cpu] = json.loads(out)
        results[cpu + " log"] = err
    return results


@needs_qemu
@pytest.mark.parametrize("cpu", V3_CPUS)
def test_emulated_cpus_with_avx2_give_the_bytes_of_this_one(emulated_digests, cpu):
    if "avx2" not in FLAGS or "fma" not in FLAGS:
        pytest.skip("this CPU is not of the x86-64-v3 family: nothing native to compare with")
    native, got = emulated_digests["native"], emulated_digests[cpu]
    assert len(got) == len(native) > 100
    differ = sorted(name for name in got if got[name] != native[name])
    assert not differ, f"under an emulated {cpu}: {differ}"


@needs_qemu
def test_emulated_cpus_without_avx2_agree_and_are_told_so(emulated_digests):
    first, second = (emulated_digests[cpu] for cpu in BASELINE_CPUS)
    assert len(first) == len(second) > 100
    differ = sorted(name for name in first if first[name] != second[name])
    assert not differ, f"{BASELINE_CPUS}: {differ}"
    for cpu in BASELINE_CPUS:
        assert "x86-64 baseline family" in emulated_digests[cpu + " log"]
    # Not the v3 family's bytes: that is what the line says.
    native = emulated_digests["native"]
    assert any(first[name] != native[name] for name in first)


@needs_qemu
def test_the_emulation_is_live_without_the_package_settings():
    """Plain torch (its own Adam, MKL's and ATen's own choices): emulated CPUs of both vendors
    give other bits than this one, so the emulation does show what differs."""
    control = CONTROL.replace("range(20)", "range(3)")  # the first steps differ already
    runs = {cpu: emulated(cpu, ["-c", control]) for cpu in (None, *V3_CPUS)}
    digests = {cpu: proc.communicate(timeout=600)[0].strip() for cpu, proc in runs.items()}
    assert all(digests.values()), digests
    for cpu in V3_CPUS:
        assert digests[cpu] != digests[None], f"plain torch under {cpu} matched this CPU"
