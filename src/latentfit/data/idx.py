"""The IDX format of the MNIST files: the four files of a dataset, read and written (what the download
stage verifies and the preprocess stage reads)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from latentfit.core.errors import DataError
from latentfit.core.io import atomic_path

IMAGE_SHAPE = (28, 28)
SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}
_IDX_DTYPES = {0x08: np.uint8}


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the MNIST format)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with atomic_path(path) as tmp, gzip.open(tmp, "wb", compresslevel=6) as f:
        f.write(header + array.tobytes())


def idx_bytes(path: str | Path) -> bytes:
    """The decompressed content of a gzipped file, failing with a DataError that says what is wrong with it."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{Path(path).name}: truncated or corrupt gzip ({err})") from err


def read_idx(path: str | Path, raw: bytes | None = None) -> np.ndarray:
    """Read a gzipped IDX file (or its decompressed bytes `raw`), failing with a DataError that says what is wrong."""
    raw = idx_bytes(path) if raw is None else raw
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{Path(path).name}: not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) != offset + int(np.prod(dims)):
        raise DataError(f"{Path(path).name}: IDX header says {dims} but holds {len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)
