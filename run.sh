#!/usr/bin/env bash
# One entry point for a fresh clone:
#   ./run.sh repro [dvc repro options]   set up .venv if needed, then run the pipeline
#   ./run.sh test  [pytest options]      set up .venv if needed, then run the tests
# Set-up creates .venv with Python >= 3.11 and installs the pinned dependencies; it is redone
# only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"

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
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "run.sh: installing pinned dependencies into .venv (first run takes a minute)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[${EXTRAS:-test}]"
  touch "$stamp"
fi
# shellcheck disable=SC1091
source .venv/bin/activate

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  repro) exec dvc repro "$@" ;;
  test) exec python -m pytest "$@" ;;
  *) echo "usage: ./run.sh repro|test [options]" >&2; exit 2 ;;
esac
