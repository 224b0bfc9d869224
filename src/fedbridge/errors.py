"""Errors a user can cause and fix. The CLI prints their message and exits with their code;
anything else reaching the user as a traceback is a bug."""

import errno
import os
import signal


class FedbridgeError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""

    exit_code = 1


class ConfigError(FedbridgeError):
    """A config file, --set override or flag is wrong; raised before any training starts."""

    exit_code = 2


class DataError(FedbridgeError):
    """A dataset file is missing, truncated, corrupt or fails its checksum."""

    exit_code = 1


class WriteError(FedbridgeError, OSError):
    """A file could not be written: the disk is full, the filesystem read-only, permission denied.
    An OSError too, so code that treats a failed write as optional (the data cache) still does."""

    exit_code = 1

    def __init__(self, path: str | os.PathLike, code: int, reason: str | None = None) -> None:
        known = _REASONS.get(code, f"{os.strerror(code)} ({errno.errorcode.get(code, code)})")
        super().__init__(code, reason or known, str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


_REASONS = {
    errno.ENOSPC: "the disk is full (ENOSPC); free some space on it",
    errno.EDQUOT: "the disk quota is used up (EDQUOT); free some space on it",
    errno.EROFS: "the filesystem is read-only (EROFS); make it writable again, e.g. remount it",
    errno.EACCES: "permission denied (EACCES); give this user write access to its folder",
    errno.EPERM: "operation not permitted (EPERM); give this user write access to its folder",
}


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so the same clean stop runs; the
    command then exits 128 + the signal's number, as a shell reports a process killed by it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum
