"""Shared code for the pipeline stages in stages/: config, data, model, training, evaluation.

Importing the package imports nothing heavy; each stage imports only the modules it needs.

It does pin how torch computes on the CPU to the portable mode (torchreg.cpu), so that the
same params give the same bytes on any x86-64 CPU of a family, whatever imports it; a stage
then switches to the mode its params ask for (`compute.cpu`) before torch computes.
"""

import os
import sys

from torchreg.cpu import portable_settings

os.environ.update(portable_settings())
if "torch" in sys.modules:  # its thread pool was sized at import
    sys.modules["torch"].set_num_threads(1)
