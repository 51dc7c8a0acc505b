"""Where a file's bytes come from: positional reads from a path (mmap), an OS file (``pread``) or any
seekable binary file object, safe to use again in a child process after ``fork``."""

from __future__ import annotations

import io
import mmap
import os
import stat
import threading
from collections.abc import Callable
from typing import BinaryIO, Union, cast

from .errors import InvalidArgumentError

__all__ = ["Source", "ByteSource"]

#: what a reader reads from: a path, a seekable binary file object, or a zero-argument callable
#: returning one (called again to reopen the file in a forked child)
Source = Union[str, "os.PathLike[str]", BinaryIO, Callable[[], BinaryIO]]


class ByteSource:
    """Positional reads from a path (mmap) or a file object; reopened after ``fork``.

    ``size`` is the file's length in bytes; ``name`` describes it in messages.
    """

    def __init__(self, source: Source) -> None:
        self._path: str | None = None
        self._factory: Callable[[], BinaryIO] | None = None
        self._file: BinaryIO | None = None
        self._owns_file = False
        if isinstance(source, (str, os.PathLike)):
            self._path = os.fspath(source)
        elif callable(source) and not hasattr(source, "read"):
            self._factory = source
        elif hasattr(source, "read") and hasattr(source, "seek"):
            self._file = cast(BinaryIO, source)
        else:
            raise InvalidArgumentError(f"cannot read label maps from {type(source).__name__}")
        self.name = self._path or getattr(source, "name", None) or type(source).__name__
        self._open()

    def _open(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._mm: mmap.mmap | None = None
        self._fd: int | None = None
        if self._path is not None:
            try:
                with open(self._path, "rb") as fh:
                    self.size = os.fstat(fh.fileno()).st_size
                    if self.size:
                        self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except IsADirectoryError:
                raise InvalidArgumentError(f"{self._path} is a folder; use relabel_maps.open() for datasets") from None
            return
        if self._factory is not None:
            self._file = self._factory()
            self._owns_file = True
        f = self._file
        assert f is not None
        try:  # a real OS file: positional reads need no lock and survive fork
            fd = f.fileno()
            if hasattr(os, "pread") and _is_regular(fd):
                self._fd = fd
        except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
            self._fd = None
        try:
            self.size = f.seek(0, io.SEEK_END)
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"file object is not seekable: {exc}") from None

    def check_fork(self) -> None:
        """Reopen what a forked child cannot share (the mapping, a factory's file object)."""
        if self._pid != os.getpid():
            if self._path is not None:
                if self._mm is not None:  # the inherited mapping: unmapped in this process only
                    self._mm.close()
                self._open()
            elif self._factory is not None:
                self._file = None
                self._open()
            else:  # a plain file object: the child has its own copy (BytesIO) or uses pread
                self._pid = os.getpid()
                self._lock = threading.Lock()

    def read(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (fewer only when the file is shorter)."""
        if self._mm is not None:
            return self._mm[offset : offset + n]
        if self._path is not None:  # empty file
            return b""
        if self._fd is not None:
            return os.pread(self._fd, n, offset)
        with self._lock:
            f = self._file
            assert f is not None
            f.seek(offset)
            parts = []
            while n > 0:  # some file objects (network, raw) return short reads
                data = f.read(n)
                if not data:
                    break
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise InvalidArgumentError("label maps must be read from a binary file object")
                parts.append(bytes(data))
                n -= len(data)
            return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._owns_file and self._file is not None:
            self._file.close()
        self._file = None
        self._fd = None

    @property
    def path(self) -> str | None:
        """The file's path when it was opened from one."""
        return self._path


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False
