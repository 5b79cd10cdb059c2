"""Shared code for the pipeline stages in stages/: config, data, model, training, evaluation.

Importing the package imports nothing heavy; each stage imports only the modules it needs.

It does pin how torch computes on the CPU, so that the same params give the same bytes on any
x86-64 CPU (README, "Same bytes on any CPU"). Torch picks its kernels by the CPU it finds:
- MKL (matrix products) has code paths per instruction set that round differently;
  `MKL_CBWR=COMPATIBLE` makes it take the one path every x86-64 CPU has;
- ATen's own kernels (sums, activations, the optimizers) are compiled per vector width
  (default, AVX2, AVX-512) and sum in a different order on each; `ATEN_CPU_CAPABILITY=default`
  takes the baseline one;
- a reduction split across threads adds its partial sums in an order set by the thread count,
  which follows the number of cores: one thread per process (`train.nproc` runs more processes,
  and that count is a param).
Both variables are read when torch first computes, not when it is imported, so this works even
where torch was imported first; the thread count is set directly in that case.
"""

import os
import sys

CPU_SETTINGS = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "default",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
os.environ.update(CPU_SETTINGS)
if "torch" in sys.modules:  # its thread pool was sized at import
    sys.modules["torch"].set_num_threads(1)
