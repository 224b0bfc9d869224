"""Writing a file whole or not at all (temp file + rename), so a crash never leaves half of one; a
write that fails (disk full, read-only filesystem, no permission) ends as a WriteError naming the file."""

import errno
import os
import re
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fedbridge.errors import WriteError

# how torch.save says a write failed: it loses the errno, e.g. on a full disk
# "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|write failed|failed writing", re.IGNORECASE)
_FULL = 1 << 20  # free bytes below which a failed torch.save is put down to a full disk


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFREG: "a regular file",
}


def kind(mode: int) -> str:
    """What a file of this st_mode is, in words ("a directory", "a named pipe (FIFO)"): where a config
    or a data file should be, a message says what stands there instead."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write of `path` in the block into a WriteError that names it and why."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, e.errno or errno.EIO, None if e.errno else str(e)) from None
    except RuntimeError as e:
        if not _TORCH_WRITE_FAILED.search(str(e)):
            raise
        # torch's writer keeps the temp file open, and so a full disk full after the file is removed,
        # for as long as its frames live on in the tracebacks of this error and the one before it
        cause: BaseException | None = e
        while cause is not None:
            traceback.clear_frames(cause.__traceback__)
            cause = cause.__context__
        disk = os.statvfs(path.parent)
        if disk.f_bavail * disk.f_frsize < _FULL:
            raise WriteError(path, errno.ENOSPC) from None
        raise WriteError(path, errno.EIO, f"torch.save failed ({e})") from None


def atomic_write(path: Path, data: bytes | str | Callable[[str], None]) -> None:
    """Write `path` whole or not at all; `data` may be a function that writes to the temp path."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # inside the clean-up: a full disk must be seen full before the temp file is removed
        with writing(path):
            with os.fdopen(fd, "wb") as f:
                if callable(data):
                    data(tmp)
                else:
                    f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            # mkstemp makes 0600 files; run directories and the data cache are meant to be read by others as usual
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
