#!/usr/bin/env bash
# Regenerates requirements.lock: every package of the environment run.sh installs (the
# dependencies of pyproject.toml and all its extras), pinned, with sha256 hashes.
#   ./run.sh lock                  re-resolve after a pyproject.toml change, keeping other pins
#   ./run.sh lock --upgrade        move every package not pinned in pyproject.toml to its newest
#   ./run.sh lock -P pillow        move one package
# Made by pip-tools (pip-compile) in its own venv (.venv-lock), so the tool never lands in .venv.
# The lock is resolved for the machine it runs on: Linux x86_64, CPython 3.11, as CI.
#
# torch is the CPU build (torch==X+cpu, from https://download.pytorch.org/whl/cpu): the project
# trains on the CPU for bit-reproducibility, and the CUDA build is 4x the size. Its line carries
# NO HASH: pip-compile can hash only the wheels it sees, and where torch comes from a local
# wheelhouse (pip's find-links, as in CI) that file cannot be checked against
# download.pytorch.org's. pip's hash mode is all-or-nothing, so run.sh installs torch first by
# exact version, then everything else with --require-hashes.
# TORCH_INDEX_URL= ./run.sh lock skips the PyTorch index (for a machine that cannot reach it and
# has the wheel in pip's find-links).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}

# pip asks every index for every package: an extra index that does not answer would cost
# minutes per package. Ask it once, first.
if [ -n "$torch_index" ] && ! "$python" - "$torch_index" <<'PY'; then
import sys
import urllib.request

url = sys.argv[1].rstrip("/") + "/torch/"
try:
    urllib.request.urlopen(url, timeout=15).close()
except Exception as exc:  # any reason it cannot be read: say it in one line
    sys.exit(
        f"lock: error: {url} did not answer ({exc}): with a torch wheel in pip's find-links, run"
        " TORCH_INDEX_URL= ./run.sh lock; or name a mirror with TORCH_INDEX_URL=<url>"
    )
PY
  exit 2
fi

if [ ! -x .venv-lock/bin/pip-compile ]; then
  "$python" -m venv .venv-lock
  .venv-lock/bin/python -m pip install --quiet pip-tools==7.6.2
fi
# pip's retries are bounded too (--pip-args): 45 s per request that gets no answer, not pip's
# default of minutes.
CUSTOM_COMPILE_COMMAND="./run.sh lock" .venv-lock/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --all-extras \
  ${torch_index:+--extra-index-url "$torch_index"} --no-emit-index-url --no-emit-find-links \
  --pip-args "--timeout 15 --retries 2" --output-file requirements.lock "$@" pyproject.toml

# Drop torch's hashes (see above), leaving one plain line `torch==X+cpu`.
awk '
  /^torch==/ { sub(/ \\$/, ""); print "# no hash for torch: run.sh installs it first (see tools/lock.sh)"; print; skip = 1; next }
  skip && /^ +--hash=/ { next }
  { skip = 0; print }
' requirements.lock >requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
if ! grep -q '^torch==[^ ]*+cpu$' requirements.lock; then
  echo "lock: error: requirements.lock does not pin a CPU build of torch (torch==X+cpu)" >&2
  exit 1
fi
