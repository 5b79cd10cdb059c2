"""Check that the running environment is exactly requirements.lock: same packages, same versions.

Exits 1 with a diff when not. pip itself (the installer that came with the venv) and the project
(installed editable) are not in the lock and are left out.
"""

import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
NOT_LOCKED = {"pip", "torchreg"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    locked = {normalize(name): version for name, version in PIN.findall(LOCK.read_text())}
    installed = {
        normalize(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }
    for name in NOT_LOCKED:
        installed.pop(name, None)
    lines = []
    for name in sorted(locked.keys() | installed.keys()):
        want, got = locked.get(name), installed.get(name)
        if want != got:
            lines.append(f"  {name}: lock {want or '-'}, installed {got or '-'}")
    if lines:
        print(f"check_lock: error: the environment differs from {LOCK.name}:", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
        return 1
    print(f"check_lock: {len(locked)} packages, exactly as {LOCK.name} says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
