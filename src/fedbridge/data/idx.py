"""The IDX file format of MNIST-style datasets: read, gunzip, parse and verify one file.

Every file is checked against the MD5 of its *uncompressed* bytes: the .gz wrappers differ
between mirrors and re-compressions, the payload does not.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from fedbridge.data import catalog
from fedbridge.errors import DataError

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_FIX_CORRUPT = (
    "Fix: re-download it (for the shipped .gz files, `sha256sum -c SHA256SUMS` in that folder "
    "shows which are damaged), or point --data-dir / FEDBRIDGE_DATA at a good copy."
)


class Corrupt(Exception):
    """Why some bytes are not the expected IDX file; callers add the file name and the fix."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzipped or not (decided by its magic bytes)."""
    path = Path(path)
    try:
        return _parse(decompress(read_bytes(path)))
    except Corrupt as e:
        raise DataError(f"{path}: {e}. {_FIX_CORRUPT}") from None


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}). Check its permissions.") from None


def decompress(raw: bytes, path: Path | None = None) -> bytes:
    """Gunzip if the bytes are gzip; with `path`, errors become DataError naming it."""
    try:
        if raw[:2] != b"\x1f\x8b":
            return raw
        try:
            return gzip.decompress(raw)
        except EOFError:
            # Decompress what is there, so the message can say how much is missing.
            partial = zlib.decompressobj(wbits=31).decompress(raw)
            try:
                _parse(partial)
            except Corrupt as e:
                if str(e).startswith("truncated: header says"):
                    raise Corrupt(f"truncated gzip stream ({e})") from None
            raise Corrupt("truncated gzip stream") from None
        except (OSError, zlib.error) as e:
            raise Corrupt(f"not a valid gzip file ({e})") from None
    except Corrupt as e:
        if path is None:
            raise
        raise DataError(f"{path}: {e}. {_FIX_CORRUPT}") from None


def verify(name: str, stem: str, data: bytes, path: Path | None = None) -> np.ndarray:
    """Parse uncompressed bytes as dataset `name`'s file `stem`, checking its MD5; with `path`, errors
    become DataError naming it."""
    try:
        array = _parse(data)
        want_ndim = 3 if "idx3" in stem else 1
        if array.ndim != want_ndim:
            raise Corrupt(f"expected {want_ndim} dimensions, header has {array.ndim}")
        expected, actual = catalog.spec(name).md5[stem], _md5(data)
        if actual != expected:
            raise Corrupt(f"wrong checksum: expected MD5 {expected}, got {actual}{_whose(name, stem, actual)}")
        return array
    except Corrupt as e:
        if path is None:
            raise
        raise DataError(f"{path}: {e}. {_FIX_CORRUPT}") from None


def _parse(data: bytes) -> np.ndarray:
    # IDX header: two zero bytes, element type, number of dimensions, then one big-endian u32 per dimension.
    if len(data) < 4 or data[:2] != b"\0\0":
        hint = " (looks like an HTML page, not data)" if data[:1] == b"<" else ""
        raise Corrupt(f"not an IDX file: starts with bytes {data[:4].hex(' ') or '(empty)'}{hint}")
    dtype, ndim = data[2], data[3]
    if dtype != 0x08:
        raise Corrupt(f"IDX element type is 0x{dtype:02x}; only unsigned bytes (0x08) are supported")
    if ndim == 0:
        raise Corrupt("IDX header has 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise Corrupt(f"truncated: header needs {header} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes"
        raise Corrupt(f"{what}: header says {expected} bytes, file has {len(data)}")
    # Copy so callers get a writable array (torch.from_numpy warns on read-only buffers).
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _whose(name: str, stem: str, digest: str) -> str:
    # The commonest "corruption" is a folder holding the other dataset; say so plainly.
    other = catalog.owner(stem, digest)
    return f" (this is the {other.title} file, not the {catalog.spec(name).title} one)" if other else ""


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
