"""A lock on a run folder, so that two processes never write one run at once.

The lock is ``flock`` on the file ``.natgrad-lock`` inside the run folder, held for the
life of the process that writes the run. The file records the holder's pid and host, so
a second process refuses with one line naming them. The kernel drops the lock when its
holder exits in any way (kill -9 included): a lock file left by a dead process is simply
taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".natgrad-lock"


class RunFolderLocked(RuntimeError):
    """Another live process holds the lock of a run folder."""


def holder_description(path: Path) -> str:
    """ "pid N on host H" as recorded in a lock file (or a note that it is unreadable)."""
    try:
        holder = json.loads(path.read_text())
        return f"pid {int(holder['pid'])} on host {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its lock file records no pid)"


def locked_message(folder: Path, path: Path) -> str:
    return (
        f"{folder} is in use by {holder_description(path)}: wait for that run to end "
        "(or stop it), or pass another --out"
    )


def check_unlocked(folder: Path) -> None:
    """RunFolderLocked if a live process holds ``folder``'s lock (creates no file)."""
    path = Path(folder) / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFolderLocked(locked_message(Path(folder), path)) from None
    finally:
        os.close(descriptor)


class RunFolderLock:
    """The exclusive lock of one run folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise RunFolderLocked naming the pid and host holding it."""
        while self._descriptor is None:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise RunFolderLocked(locked_message(self.folder, self.path)) from None
            if self._still_linked(descriptor):
                self._descriptor = descriptor
            else:  # its holder removed the file as it released it: lock the new one
                os.close(descriptor)
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        try:
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, holder.encode() + b"\n", 0)
        except BaseException:  # a full disk, say: leave no lock behind
            self.release()
            raise

    def _still_linked(self, descriptor: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(descriptor)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._descriptor is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
