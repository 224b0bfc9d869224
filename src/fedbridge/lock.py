"""One writer per run or sweep directory: an exclusive OS lock (flock) on its `.lock` file, held
while a command writes there. The kernel drops it when the process ends, however it ends (kill -9
too), so a lock is never stale: the file left behind only names the pid that held it last. POSIX only (fcntl)."""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedbridge.errors import FedbridgeError, WriteError

LOCK = ".lock"  # a dot file, which readers of run and sweep directories never look for

# the directories this process holds: taking one again is free (deploy holds its run directory
# from before its Flower processes start, and the study inside takes it again)
_held: set[Path] = set()


@contextmanager
def hold(directory: Path, then: str) -> Iterator[None]:
    """Hold `directory`'s lock for the block, or refuse at once if another process holds it; `then`
    says what to do once that one has ended, e.g. the command that continues the run."""
    key = directory.resolve()
    if key in _held:
        yield
        return
    path = directory / LOCK
    try:
        # no O_TRUNC: the holder's pid must outlive a refused opener
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise WriteError(path, e.errno) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f"fedbridge process {holder}" if holder.isdigit() else "another fedbridge process"
            stop = f"stop it (kill {holder})" if holder.isdigit() else "stop it"
            raise FedbridgeError(
                f"{directory} is in use: {who} is writing to it, and only one process may at a time. "
                f"Wait for it to end, or {stop}; then {then}"
            ) from None
        except OSError as e:  # e.g. a network filesystem without locks
            raise FedbridgeError(f"cannot lock {path}: {e.strerror}; write to a local folder instead") from None
        pid = f"{os.getpid()}\n".encode()
        try:
            os.pwrite(fd, pid, 0)
            os.ftruncate(fd, len(pid))
        except OSError:  # a full disk: an empty file, so a refused writer names no pid rather than an old one
            os.ftruncate(fd, 0)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
    finally:
        os.close(fd)  # releases the lock
