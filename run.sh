#!/usr/bin/env bash
# One entry point for a fresh clone:
#   ./run.sh repro [dvc repro options]   set up .venv if needed, then run the pipeline
#   ./run.sh test  [pytest options]      set up .venv if needed, then run the fast tests
#   ./run.sh test-all [pytest options]   the same set-up, then every test (the slow tier too)
#   ./run.sh setup                       set up .venv if needed, nothing else
#   ./run.sh lock  [pip-compile options] regenerate requirements.lock (see tools/lock.sh)
#   ./run.sh mutate [module...]          mutation testing of the package (see tools/mutate.sh)
# Set-up creates .venv with Python >= 3.11 and installs exactly requirements.lock (every
# package, pinned, hashed; torch is the CPU build); it is redone from scratch only when
# requirements.lock or pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"

if [ "${1:-}" = lock ]; then
  shift
  exec tools/lock.sh "$@"
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if ! "${python:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "run.sh: error: needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi

stamp=.venv/.installed
# The stamp: a hash of what set-up installs, by whichever tool this system has (macOS has no
# sha256sum; Python is here in any case).
want=$(cat requirements.lock pyproject.toml | "$python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest(), " -")')
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  packages=$(grep -c '^[A-Za-z0-9_.-]*==' requirements.lock)
  echo "run.sh: installing requirements.lock ($packages packages) into a new .venv, in 3 steps" >&2
  # A new venv, not an update: a package dropped from the lock must not linger. Made by the
  # Python a venv was made from: with .venv activated, "$python" is .venv's own and goes with it.
  python=$("$python" -c 'import sys; print(getattr(sys, "_base_executable", "") or sys.executable)')
  rm -rf .venv
  "$python" -m venv .venv
  pip=(.venv/bin/python -m pip install --quiet --no-deps)
  torch=$(grep -m1 '^torch==' requirements.lock)
  torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
  if [ "$(uname -s)" = Darwin ]; then
    # macOS: PyPI's torch is the CPU build (with Apple's GPU, MPS), under the plain version.
    torch=${torch%+cpu}
    torch_index=${TORCH_INDEX_URL-https://pypi.org/simple}
  fi
  SECONDS=0
  echo "run.sh: 1/3 $torch (the largest)" >&2
  # torch has no hash in the lock (see tools/lock.sh). A wheel already in pip's find-links (a
  # local wheelhouse: PIP_FIND_LINKS or pip.conf) is used without asking the network; else
  # PyTorch's CPU index has it. pip's own retries are bounded: an index that does not answer
  # costs about a minute, not pip's default of several.
  if ! "${pip[@]}" --no-index "$torch" 2>/dev/null; then
    echo "run.sh: $torch is not in pip's find-links; fetching it from ${torch_index:-nowhere (TORCH_INDEX_URL is empty)}" >&2
    if [ -z "$torch_index" ] ||
      ! "${pip[@]}" --timeout 15 --retries 2 --extra-index-url "$torch_index" "$torch"; then
      echo "run.sh: error: cannot install $torch: put its wheel in a folder and run" \
        "PIP_FIND_LINKS=/that/folder ./run.sh setup, or name an index that has it with" \
        "TORCH_INDEX_URL=<url> ./run.sh setup (see docs/dependencies.md)" >&2
      exit 2
    fi
  fi
  echo "run.sh: 2/3 the other $((packages - 1)) packages ($SECONDS s so far)" >&2
  grep -v '^torch==' requirements.lock >.venv/requirements-hashed.txt
  "${pip[@]}" --require-hashes -r .venv/requirements-hashed.txt
  # The project itself, editable; its build backend (setuptools) is in the lock.
  echo "run.sh: 3/3 this project, editable ($SECONDS s so far)" >&2
  "${pip[@]}" --no-build-isolation -e .
  echo "$want" >"$stamp"
  echo "run.sh: set-up done in $SECONDS s" >&2
fi
# shellcheck disable=SC1091
source .venv/bin/activate

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  setup) ;;
  repro)
    # Another platform or CPU family (a Mac, arm64, an x86-64 CPU without AVX2) makes bytes of
    # its own: record this machine in environment.yaml, say so, and let DVC rerun what that
    # affects (a plain `dvc repro` refuses instead, naming what differs).
    if ! differs=$(python -m torchreg.environment --check 2>&1); then
      echo "run.sh: ${differs#environment: }" >&2
      echo "run.sh: this machine's results will be its own bytes, not the committed ones" \
        "(docs/reproducibility.md); recording it:" >&2
      python -m torchreg.environment >&2
    fi
    dvc repro "$@"
    # The headline, also when DVC skipped evaluate (its outputs were up to date) and printed none.
    python - <<'PY'
import json, pathlib
path = pathlib.Path("metrics/evaluate.json")
if path.exists():
    m = json.loads(path.read_text())
    floor = f", noise floor {m['noise_floor_mae']:.6g}" if "noise_floor_mae" in m else ""
    print(f"run.sh: {path}: test MAE {m['test']['mae']:.6g} (closed-form reference "
          f"{m['reference']['test_mae']:.6g}{floor}); all metrics: dvc metrics show", flush=True)
PY
    ;;
  # The fast tier (a minute or two); `-m slow` after it runs the slow tier alone.
  test) exec python -m pytest -m "not slow" "$@" ;;
  test-all) exec python -m pytest "$@" ;;
  mutate) exec tools/mutate.sh "$@" ;;
  *) echo "usage: ./run.sh setup|repro|test|test-all|lock|mutate [options]" >&2; exit 2 ;;
esac
