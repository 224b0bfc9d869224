"""The data cache: verified files stored uncompressed, so later loads skip the gunzip.

A cache entry is re-checked on every use; one that fails is reported, deleted and rebuilt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import platformdirs

from fedbridge.data.idx import Corrupt, read_bytes, unreadable, verify
from fedbridge.errors import DataError
from fedbridge.files import atomic_write

ENV_CACHE = "FEDBRIDGE_CACHE"


def cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("fedbridge"))


def load_cache(name: str, found: dict[str, Path]) -> dict[str, tuple[np.ndarray, bytes]]:
    """The entries that verify, as (array, bytes) by file name; the others are deleted."""
    good = {}
    for stem, path in found.items():
        try:
            data = read_bytes(path)
            good[stem] = (verify(name, stem, data), data)
        except (Corrupt, DataError) as e:
            _warn(f"cache entry {path} is bad ({e}); deleting it and rebuilding it from the source")
            path.unlink(missing_ok=True)
    return good


def store(folder: Path, stem: str, data: bytes) -> None:
    """Write verified, uncompressed bytes into the cache atomically (a crash never leaves half a file)."""
    target = folder / stem
    try:
        if os.path.lexists(target):
            why = unreadable(target)
            if why is None and read_bytes(target) == data:
                return
            if target.is_dir() and not target.is_symlink():
                # a folder is never ours to delete; the data is loaded all the same
                _warn(f"cache entry {target} is a directory, not an IDX file; remove it to let fedbridge cache the file")
                return
            # a named pipe, socket or dangling link is only a name: the atomic rename replaces it
            _warn(f"cache entry {target} {why or 'differs from the verified source'}; replacing it")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data)
    except (OSError, DataError) as e:
        # The cache only saves time; loading still succeeds without it.
        _warn(f"cannot write cache entry {target} ({e}); continuing without caching it")


def _warn(message: str) -> None:
    print(f"fedbridge: warning: {message}", file=sys.stderr)
