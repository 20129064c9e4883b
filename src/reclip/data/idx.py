"""A reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is two zero bytes, a type code, the number of dimensions ``d``, then ``d``
big-endian uint32 sizes, then the values in row-major, big-endian order. Files may be
gzip-compressed (as distributed) or plain (as torchvision leaves them after download).
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from reclip.data.images import describe_error
from reclip.errors import ReclipError

# IDX type code -> big-endian numpy dtype.
_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-byte-order numpy array.

    Raises ``ReclipError`` naming the file when it is not a valid IDX file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ReclipError(f"{path} is not an IDX file (bad magic number); re-download it")
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ReclipError(f"{path} is truncated (incomplete IDX header); re-download it")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = math.prod(shape)  # exact: numpy's product can overflow on a corrupt header
    if len(data) < header + count * dtype.itemsize:
        raise ReclipError(f"{path} is truncated (expected {count} values of shape {shape}); re-download it")
    values = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return values.reshape(shape).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip data."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ReclipError(f"cannot read IDX file {path} ({describe_error(exc)}); re-download it") from exc
