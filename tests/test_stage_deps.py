"""Every stage's `deps` in dvc.yaml lists the package modules it really imports, or DVC would
serve a stale cache after a library change."""

import subprocess
import sys

import pytest
import yaml

from support import ROOT, subprocess_env

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
RUNNER = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print(*sorted(m for m in sys.modules if m.startswith('torchreg'))))\n"
    "sys.argv = [sys.argv[1], '--help']\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_list_every_imported_module(stage):
    script = f"stages/{stage}.py"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, script],
        cwd=ROOT,
        env=subprocess_env("src", inherit=False),
        capture_output=True,
        text=True,
    )
    imported = result.stdout.strip().splitlines()[-1].split()
    paths = [f"src/{m.replace('.', '/')}" for m in imported if m != "torchreg"]
    files = {f"{p}/__init__.py" if (ROOT / p).is_dir() else f"{p}.py" for p in paths}
    files.add("src/torchreg/__init__.py")
    deps = {d for d in STAGES[stage]["deps"] if isinstance(d, str)}
    assert script in deps and len(files) > 3, result.stderr
    assert files <= deps, f"{stage}: missing {sorted(files - deps)}"
