"""The IDX file format of MNIST-style datasets: read, gunzip, parse and verify one file.

Every file is checked against the MD5 of its *uncompressed* bytes: the .gz wrappers differ
between mirrors and re-compressions, the payload does not.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from fedbridge import files
from fedbridge.data import catalog
from fedbridge.errors import DataError

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# The largest file of the known datasets, MNIST's and Fashion-MNIST's train images, is 47,040,016
# bytes uncompressed. Nothing bigger is read or decompressed, so a wrong file (a disk image, a link
# to /dev/zero, a gzip bomb) is named instead of filling the memory.
MAX_FILE_BYTES = 64 * 2**20

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
    """The bytes of the regular file `path`; anything else is a DataError saying what it is.

    Only regular files are read, at most MAX_FILE_BYTES of them: a named pipe is never waited on,
    a device or a growing file never read without end.
    """
    try:
        # O_NONBLOCK: opening a named pipe returns at once instead of waiting for a writer; the
        # fstat below then refuses it. Checking the open file, not the name, leaves no race.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise DataError(_cannot_use(path, unreadable(path) or _failed(e))) from None
    try:
        why = _not_idx(os.fstat(fd))
        data = b"" if why else _read_at_most(fd, MAX_FILE_BYTES + 1)  # a bound: the file may grow
    except OSError as e:
        why = _failed(e)
    finally:
        os.close(fd)
    if why is None and len(data) > MAX_FILE_BYTES:
        why = _too_big(len(data))
    if why is not None:
        raise DataError(_cannot_use(path, why))
    return data


def _read_at_most(fd: int, limit: int) -> bytes:
    with open(fd, "rb", closefd=False) as f:
        return f.read(limit)


def unreadable(path: Path) -> str | None:
    """Why `path` cannot be a dataset file, as words to follow it ("is a directory, not an IDX
    file", "is a symbolic link that loops"); None for a regular file of a dataset file's size.
    Looks at it without opening it."""
    try:
        return _not_idx(path.stat())
    except OSError as e:
        return _failed(e, path)


def describe(path: Path) -> str:
    """What is at `path`, as words to follow it: "is a regular file", "is a named pipe (FIFO)",
    "is a symbolic link that loops", "does not exist"..."""
    try:
        return f"is {files.kind(path.stat().st_mode)}"
    except OSError as e:
        return _failed(e, path)


def _not_idx(st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return f"is {files.kind(st.st_mode)}, not an IDX file"
    return _too_big(st.st_size) if st.st_size > MAX_FILE_BYTES else None


def _too_big(size: int) -> str:
    return f"is {size:,} bytes or more, more than any dataset file ({MAX_FILE_BYTES:,} at most), so not an IDX file"


def _failed(e: OSError, path: Path | None = None) -> str:
    # stat and open fail through a link that loops or points nowhere; say which, not "missing"
    if e.errno == errno.ELOOP:
        return "is a symbolic link that loops"
    if e.errno == errno.ENOENT and path is not None and path.is_symlink():
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    if e.errno == errno.ENOENT:
        return "does not exist"
    return f"cannot be read ({e.strerror or e})"


def _cannot_use(path: Path, why: str) -> str:
    fix = "Check its permissions and the disk." if why.startswith("cannot be read") else (
        "Put the dataset's file there (or remove what is there), or point --data-dir / FEDBRIDGE_DATA "
        "at a folder holding the files."
    )
    return f"{path} {why}. {fix}"


def decompress(raw: bytes, path: Path | None = None) -> bytes:
    """Gunzip if the bytes are gzip (at most MAX_FILE_BYTES out); with `path`, errors become
    DataError naming it."""
    try:
        return _gunzip(raw) if raw[:2] == b"\x1f\x8b" else raw
    except Corrupt as e:
        if path is None:
            raise
        raise DataError(f"{path}: {e}. {_FIX_CORRUPT}") from None


def _gunzip(raw: bytes) -> bytes:
    out = bytearray()
    rest = raw
    while rest:  # one gzip member after another, as gzip.decompress reads them
        member = zlib.decompressobj(wbits=31)
        try:
            out += member.decompress(rest, MAX_FILE_BYTES + 1 - len(out))
        except zlib.error as e:
            raise Corrupt(f"not a valid gzip file ({e})") from None
        if len(out) > MAX_FILE_BYTES:
            raise Corrupt(f"decompresses to more than {MAX_FILE_BYTES:,} bytes, more than any dataset file")
        if not member.eof:
            raise Corrupt(_truncated(bytes(out)))
        rest = member.unused_data.lstrip(b"\0")  # gzip allows zero padding after the last member
    return bytes(out)


def _truncated(partial: bytes) -> str:
    # Parse what was decompressed, so the message can say how much is missing.
    try:
        _parse(partial)
    except Corrupt as e:
        if str(e).startswith("truncated: header says"):
            return f"truncated gzip stream ({e})"
    return "truncated gzip stream"


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
