"""The data side: where rows come from, how they are split, and the files that hold them.

- `datafile`: the .npy data files (features, then y; float32, sealed with a sha256), written a
  block at a time and read a range of rows at a time;
- `synthetic`: the tutorial's source, y = f(x) + noise drawn from seeded generators;
- `table`: a user's CSV or Parquet table, read a batch at a time with pyarrow;
- `split`: a table's rows into train, validation and test by a hash of each row, and the
  features' standardisation fitted on the training split.

The modules use NumPy, not torch. The names most callers need are here.
"""

from torchreg.data.datafile import (
    CHUNK_ROWS,
    DIGEST_NOTE,
    GENERATE_HINT,
    NPY_MAGIC,
    ArrayRows,
    DataFile,
    as_rows,
    check_disk,
    dvc_cache_copy_dir,
    nbytes,
    write_rows,
)
from torchreg.data.synthetic import make_block, stream_seed, true_function, write_dataset

__all__ = [
    "CHUNK_ROWS",
    "DIGEST_NOTE",
    "GENERATE_HINT",
    "NPY_MAGIC",
    "ArrayRows",
    "DataFile",
    "as_rows",
    "check_disk",
    "dvc_cache_copy_dir",
    "make_block",
    "nbytes",
    "stream_seed",
    "true_function",
    "write_dataset",
    "write_rows",
]
