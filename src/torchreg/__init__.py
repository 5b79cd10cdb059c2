"""Shared code for the pipeline stages in stages/: config, data, model, training, evaluation.

Importing the package imports nothing heavy (not even numpy: a stage's Ctrl-C handler is not
installed yet when it runs); each stage imports only the modules it needs.

It does pin how torch computes on the CPU to the portable mode (torchreg.cpu), so that the
same params give the same bytes on any x86-64 CPU of a family, whatever imports it: as torch
is imported (or now, if it already is). A stage then switches to the mode its params ask for
(`compute.cpu`) before torch computes.
"""

import importlib.abc
import os
import sys

from torchreg import cpu


class _PinBeforeTorch(importlib.abc.MetaPathFinder):
    """Sets the portable mode's environment as torch is first imported (finding the CPU's
    family imports numpy, which torch imports anyway), unless a stage chose another mode."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 (importlib's signature)
        if name == "torch":
            sys.meta_path.remove(self)
            if cpu.current() == "portable":
                os.environ.update(cpu.portable_settings())
        return None  # the usual finders import it


if "torch" in sys.modules:
    os.environ.update(cpu.portable_settings())
    sys.modules["torch"].set_num_threads(1)  # its thread pool was sized at import
else:
    sys.meta_path.insert(0, _PinBeforeTorch())
