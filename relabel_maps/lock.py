"""The exclusive writer lock of an output: one writer per output, across processes and hosts that
share the file system's ``flock``.

The lock is an advisory ``flock`` on a hidden lock file next to the output (``.NAME.lock``, named by
:func:`relabel_maps.layout.lock_path`) holding the owner's pid, host and start time as JSON. The
kernel drops an ``flock`` when its process ends, however it ends, so a lock file left behind by a
killed process is not held: the next writer takes it. A writer deletes its lock file when it lets
go. On platforms without ``fcntl`` outputs are not locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from types import ModuleType

from .errors import OutputLockedError

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["OutputLock"]


class OutputLock:
    """Hold the lock file ``path`` of ``output`` (``output`` names it in messages).

    Raises:
        OutputLockedError: another open lock (another process, or another writer of this one)
            holds it; the message names the owner and how to tell a stale lock file.
    """

    def __init__(self, path: Path, output: Path) -> None:
        self.path = path
        self._pid = os.getpid()
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover - not POSIX
            return
        while True:  # the lock file may be deleted (released) between our open and our flock
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise OutputLockedError(_locked_message(output, path, owner)) from None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, path):
                break
            os.close(fd)  # we locked a file its owner had just deleted: take the new one
        self._fd = fd
        owner_info = {"pid": self._pid, "host": socket.gethostname(), "started": time.time()}
        with contextlib.suppress(OSError):  # a full disk: the lock holds without its description
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner_info).encode("utf-8") + b"\n", 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let go (idempotent): delete the lock file, then close it. In a forked child that inherited
        the lock, only the child's copy of the descriptor is closed (the parent keeps the lock)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.getpid() == self._pid:
            with contextlib.suppress(OSError):
                if _same_file(fd, self.path):
                    os.unlink(self.path)
        os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read_owner(fd: int) -> dict[str, object]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _locked_message(output: Path, path: Path, owner: dict[str, object]) -> str:
    who = "another writer"
    if isinstance(owner.get("pid"), int):
        who = f"process {owner['pid']}"
        if owner.get("host"):
            who += f" on {owner['host']}"
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            who = "another writer in this process"
    started = owner.get("started")
    if isinstance(started, (int, float)):
        who += f" (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))})"
    return (
        f"{output} is being written by {who}: one writer per output; wait for it to finish or write "
        f"elsewhere. The lock is an flock on {path}, released when its process ends however it ends, "
        "so a lock file left by a process that is gone is not held and needs no removal; delete it only "
        "if the file system does not support flock across hosts and its owner is gone"
    )
