"""The environment as a pipeline input (environment.yaml), the CPU modes, and the CPU-independent
maths: recorded versions rerun exactly the stages they affect, a false record is refused."""

from __future__ import annotations

import hashlib
import math
import os
import sys

import numpy as np
import pytest
import yaml

from support import ROOT, run, run_stage, subprocess_env
from torchreg import cpu, environment, fixedmath
from torchreg.errors import ConfigError


def test_each_stage_checks_the_keys_dvc_yaml_gives_it():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, keys in environment.STAGE_KEYS.items():
        listed = [p["environment.yaml"] for p in stages[name]["params"] if isinstance(p, dict)]
        assert listed == [list(keys)], name
    # every stage that computes with a package in the record depends on it
    assert {name for name in stages if name != "validate"} == set(environment.STAGE_KEYS)


def test_the_committed_record_is_true_on_this_machine():
    """CI installs the lock, so the record (written on the same kind of machine) holds."""
    assert environment.recorded(ROOT / "environment.yaml") == environment.found()


def test_a_false_record_is_refused_in_one_line_naming_what_differs(tmp_path):
    path = tmp_path / "environment.yaml"
    environment.record(path)
    environment.check("train", path=path)  # true: nothing raised
    path.write_text(path.read_text().replace('torch: "', 'torch: "0.1-'))
    with pytest.raises(ConfigError) as info:
        environment.check("train", path=path)
    message = str(info.value)
    assert "\n" not in message
    assert "torch '0.1-" in message and f"has {environment.found()['torch']!r}" in message
    assert environment.RECORD in message
    environment.check("prepare", path=path)  # prepare does not use torch: it may run


def test_the_cpu_family_is_checked_in_portable_mode_only(tmp_path):
    path = tmp_path / "environment.yaml"
    environment.record(path)
    path.write_text(path.read_text().replace('cpu: "', 'cpu: "another '))
    with pytest.raises(ConfigError, match="cpu 'another "):
        environment.check("evaluate", "portable", path)
    environment.check("evaluate", "native", path)  # native promises nothing across machines


def test_without_a_record_nothing_is_checked_and_a_broken_one_is_named(tmp_path):
    path = tmp_path / "environment.yaml"
    environment.check("plot", path=path)  # a stage run by hand, outside the repository
    path.write_text("cpu: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML.*python -m torchreg.environment"):
        environment.check("plot", path=path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r'expected lines of `key: "value"` \(cpu, numpy'):
        environment.check("plot", path=path)
    path.write_text('cpu: "x"\n')
    with pytest.raises(ConfigError, match=r"records no numpy \(this machine has '.*'\)"):
        environment.check("plot", path=path)


@pytest.mark.parametrize("kind", ["directory", "list"])
def test_the_command_says_what_is_wrong_in_one_line(tmp_path, kind):
    path = tmp_path / "environment.yaml"
    path.mkdir() if kind == "directory" else path.write_text("- a\n")
    result = run(
        ["python", "-m", "torchreg.environment", "--check", "--file", str(path)], ROOT, check=False
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("environment: error: ") and str(path) in line


def test_cpu_modes_set_and_undo_the_settings(monkeypatch):
    for key in cpu.portable_settings():
        monkeypatch.setenv(key, "sentinel")
    cpu.use("native")
    assert not set(cpu.portable_settings()) & set(os.environ)
    cpu.use("portable")
    assert {k: os.environ[k] for k in cpu.portable_settings()} == cpu.portable_settings()


@pytest.mark.parametrize(
    "flags,capability,name",
    [
        ({"sse4_2", "avx", "avx2", "fma"}, "avx2", "x86-64-v3"),
        ({"sse4_2", "avx", "fma"}, "default", "x86-64 baseline"),  # AVX + FMA, no AVX2
        ({"sse4_2", "avx", "avx2"}, "default", "x86-64 baseline"),  # AVX2 without FMA
    ],
)
def test_the_family_follows_avx2_and_fma(monkeypatch, caplog, flags, capability, name):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    assert cpu.family() == name
    assert cpu.portable_settings()["ATEN_CPU_CAPABILITY"] == capability
    monkeypatch.setattr(os, "environ", dict(os.environ))
    cpu.use("portable")
    told = [r.getMessage() for r in caplog.records if "family" in r.getMessage()]
    assert bool(told) == (name != "x86-64-v3")


def test_fixed_sin_and_exp_are_within_two_units_in_the_last_place():
    x = np.random.default_rng(0).standard_normal(200_000) * 6
    x = np.concatenate([x, np.arange(-40, 41) * (math.pi / 4), [0.0, -0.0, 1e-300]])
    for ours, oracle in ((fixedmath.sin, math.sin), (fixedmath.exp, math.exp)):
        got = ours(x)
        want = np.array([oracle(v) for v in x])
        ulps = np.abs(got - want) / np.spacing(np.maximum(np.abs(want), 1e-300))
        assert ulps.max() <= 2, ours.__name__
    assert fixedmath.exp(np.array([-800.0, 800.0])).tolist() == [0.0, math.inf]
    with pytest.raises(ValueError, match="needs"):
        fixedmath.sin(np.array([1e6]))


def fake_version(repo, package: str, version: str) -> None:
    """Make `package` report `version` to the stages (PYTHONPATH=src sees this dist-info
    first), as an upgrade would, without changing what is installed."""
    info = repo / "src" / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_a_new_recorded_version_reruns_the_stages_it_affects_and_only_those(built):
    record = ["python", "-m", "torchreg.environment"]
    fake_version(built, "pillow", "99.0")
    stale = run_stage(built, "plot")  # the record says otherwise: refused, nothing drawn
    assert stale.returncode == 2
    assert "records pillow" in stale.stderr and len(stale.stderr.strip().splitlines()) == 1
    run(record, built)
    assert ran_stages(run(["dvc", "repro"], built).stdout) == {"validate", "plot"}
    fake_version(built, "torch", "99.0")
    run(record, built)
    assert ran_stages(run(["dvc", "repro"], built).stdout) == {"validate", "train", "evaluate"}
    assert ran_stages(run(["dvc", "repro"], built).stdout) == set()
    shown = run(["dvc", "exp", "show", "--json"], built).stdout
    assert '"torch": "99.0"' in shown


@pytest.mark.slow
def test_a_false_record_stops_at_validate_and_deletes_nothing(built):
    """DVC removes a stage's outputs just before running it: the record is checked first."""
    before = {p: p.read_bytes() for p in (built / "models").iterdir()}
    plots = {p: p.read_bytes() for p in (built / "plots").glob("*.png")}
    record = built / "environment.yaml"
    record.write_text(record.read_text().replace('torch: "', 'torch: "0.1-'))
    failed = run(["dvc", "repro"], built, check=False)
    assert failed.returncode != 0
    assert "validate: error: environment.yaml records torch '0.1-" in failed.stderr
    assert ran_stages(failed.stdout) == {"validate"}
    assert {p: p.read_bytes() for p in (built / "models").iterdir()} == before
    assert {p: p.read_bytes() for p in (built / "plots").glob("*.png")} == plots


def test_importing_the_package_imports_nothing_heavy():
    """A stage installs its Ctrl-C handler right after `from torchreg.stage import ...`: an
    interrupt before that is a traceback, so the package's import must be quick."""
    code = "import sys, torchreg.stage; print([m for m in ('numpy', 'torch') if m in sys.modules])"
    result = run([sys.executable, "-c", code], ROOT, env=subprocess_env(ROOT / "src"))
    assert result.stdout == "[]\n"


@pytest.mark.parametrize("order", ["torchreg first", "torch first"])
def test_torch_computes_portably_whichever_is_imported_first(order):
    imports = "import torchreg, torch" if order == "torchreg first" else "import torch, torchreg"
    code = f"{imports}, os; print(os.environ['ATEN_CPU_CAPABILITY'], torch.get_num_threads())"
    env = subprocess_env(ROOT / "src", drop=("ATEN_", "OMP_", "MKL_"))
    result = run([sys.executable, "-c", code], ROOT, env=env)
    expected = cpu.portable_settings()["ATEN_CPU_CAPABILITY"]
    assert result.stdout == f"{expected} 1\n"


@pytest.mark.slow
def test_run_sh_repro_records_a_machine_of_another_family_and_runs(built):
    """A newcomer's `./run.sh repro` on a machine the committed environment.yaml does not
    describe (a Mac, arm64): it says what differs, records this machine, and DVC reruns."""
    # This checkout's environment, stamped as run.sh's own: it installs nothing.
    (built / ".venv/bin").mkdir(parents=True)
    (built / ".venv/bin/activate").write_text(f". '{ROOT}/.venv/bin/activate'\n")
    stamp = hashlib.sha256((built / "requirements.lock").read_bytes())
    stamp.update((built / "pyproject.toml").read_bytes())
    (built / ".venv/.installed").write_text(f"{stamp.hexdigest()}  -\n")
    path = built / "environment.yaml"
    path.write_text(path.read_text().replace('cpu: "x86-64-v3"', 'cpu: "arm64 (Darwin)"'))
    result = run(["./run.sh", "repro"], built, env=subprocess_env(drop=("VIRTUAL_ENV",)))
    said = [line for line in result.stderr.splitlines() if line.startswith("run.sh: ")]
    assert said[0].startswith("run.sh: environment.yaml records cpu 'arm64 (Darwin)' but")
    assert said[1].startswith("run.sh: this machine's results will be its own bytes")
    assert environment.recorded(path) == environment.found()
    # This machine is the family dvc.lock was made on: recorded so, nothing is out of date.
    assert "Running stage" not in result.stdout and "test MAE" in result.stdout
    again = run(["./run.sh", "repro"], built)
    assert not any(line.startswith("run.sh: this machine") for line in again.stderr.splitlines())


@pytest.mark.parametrize(
    "machine,system,name",
    [
        ("aarch64", "Linux", "arm64 (Linux)"),
        ("arm64", "Darwin", "arm64 (Darwin)"),  # a Mac: another compiler's torch
        ("riscv64", "Linux", "portable on riscv64 (not x86-64: its own bytes)"),
    ],
)
def test_a_cpu_that_is_not_x86_is_a_family_of_its_own_and_says_so(
    monkeypatch, caplog, machine, system, name
):
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu.platform, "system", lambda: system)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    assert cpu.family() == name
    assert cpu.portable_settings()["ATEN_CPU_CAPABILITY"] == "default"  # NEON, not SVE
    cpu.use("portable")
    (said,) = [r.getMessage() for r in caplog.records if "family" in r.getMessage()]
    assert f"is not x86-64: its bytes are those of the {name} family" in said
    assert "AVX2" not in said
