"""One ``invsolve evaluate`` at a time per output folder: an exclusive lock on ``OUT/invsolve.lock``.

The lock is the operating system's (``flock`` on POSIX, ``msvcrt.locking`` on
Windows), so it is released when the process ends however it ends, SIGKILL
included: it never goes stale.  The file itself stays and says who held it last.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LOCK_NAME = "invsolve.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


class OutputLock:
    """An exclusive, non-blocking lock on ``root/invsolve.lock``; a second holder gets a ``ValueError``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self) -> OutputLock:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(descriptor)
        except OSError:
            holder = _read(descriptor)
            os.close(descriptor)
            raise ValueError(
                f"{str(self.root)!r} is in use by another 'invsolve evaluate' ({holder or 'unknown process'}); "
                "wait for it to finish or use another --out"
            ) from None
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor drops the lock
            self._descriptor = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(descriptor: int) -> None:
    if fcntl is not None:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)


def _read(descriptor: int) -> str:
    try:
        os.lseek(descriptor, 0, os.SEEK_SET)
        return os.read(descriptor, 200).decode("utf-8", "replace").strip()
    except OSError:
        return ""
