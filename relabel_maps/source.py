"""Where a file's bytes come from: positional reads (``pread``) from a path or an OS file, or any
seekable binary file object; never corrupted by ``fork``.

Paths are read with ``pread`` rather than memory-mapped: the pages a forked DataLoader worker reads
then stay in the shared page cache instead of counting as that worker's own memory (a mapped file's
touched pages do), and a random lookup costs one system call. After ``fork`` a path's descriptor is
read as inherited (the parent's file, even if the path was replaced since), a callable is called
again for a fresh file object, an OS file is read with ``pread`` (its shared file position is never
used) and an ``io.BytesIO`` is the child's own copy.
Any other file object may share a file position with the parent (a wrapper around an OS file that
hides ``fileno``, a network connection), so reading it in a forked child raises
:class:`InvalidArgumentError` naming the remedy: a callable that opens it.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
import threading
from collections.abc import Callable
from typing import BinaryIO, Union, cast

from .errors import DatasetReplacedError, InvalidArgumentError

__all__ = ["Source", "ByteSource"]

#: file objects whose whole state is copied into a forked child (seek + read there is private)
_PER_PROCESS = (io.BytesIO,)

#: what a reader reads from: a path, a seekable binary file object, or a zero-argument callable
#: returning one (called again to reopen the file in a forked child)
Source = Union[str, "os.PathLike[str]", BinaryIO, Callable[[], BinaryIO]]


class ByteSource:
    """Positional reads from a path or a file object; reopened after ``fork`` where needed.

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
        self._identity = (self.size, _file_id(self._fd))  # what a factory must open again after fork

    def _open(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._mm: mmap.mmap | None = None
        self._fd: int | None = None
        if self._path is not None:
            self._open_path(self._path)
            return
        if self._factory is not None:
            self._file = self._factory()
            self._owns_file = True
        f = self._file
        assert f is not None
        try:
            self.size = f.seek(0, io.SEEK_END)
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"file object is not seekable: {exc}") from None
        self._fd = _positional_fd(f, self.size)

    def _open_path(self, path: str) -> None:
        try:
            fh = open(path, "rb", buffering=0)  # closed with the source, or when garbage-collected
        except IsADirectoryError:
            raise InvalidArgumentError(f"{path} is a folder; use relabel_maps.open() for datasets") from None
        self.size = os.fstat(fh.fileno()).st_size
        if hasattr(os, "pread"):
            self._file, self._owns_file, self._fd = fh, True, fh.fileno()
            return
        with fh:  # pragma: no cover - platforms without pread: a read-only mapping
            if self.size:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def check_fork(self) -> None:
        """Reopen what a forked child cannot share (a factory's file object); refuse a file object
        that may share its file position with the parent. A path's descriptor is kept: it reads the
        file the parent opened even when the path now names another (an overwrite)."""
        if self._pid != os.getpid():
            if self._factory is not None:
                self._file = None
                self._open()
                if (self.size, _file_id(self._fd)) != self._identity:
                    self.close()
                    self._pid = -1  # refused again on every use in this process
                    raise DatasetReplacedError(
                        f"{self.name}: the callable opened another file in this forked process than in the "
                        "parent (was the file replaced?); open the dataset again"
                    )
            elif self._path is None and self._fd is None and not isinstance(self._file, _PER_PROCESS):
                raise InvalidArgumentError(
                    f"{self.name}: this file object cannot be read in a forked process: it has no file "
                    "descriptor for positional reads and may share its file position with the parent; "
                    "open a path, or pass a callable that returns the file object (called again after fork)"
                )
            else:  # pread on the inherited descriptor, or the child's own copy of an in-memory object
                self._pid = os.getpid()
                self._lock = threading.Lock()

    def read(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (fewer only when the file is shorter)."""
        if self._fd is not None:
            return os.pread(self._fd, n, offset)
        if self._mm is not None:
            return self._mm[offset : offset + n]
        if self._path is not None:  # an empty file without pread
            return b""
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

    @property
    def positional(self) -> bool:
        """Whether reads are positional (``pread`` or a mapping): cheap to repeat, no shared position."""
        return self._path is not None or self._fd is not None


def _file_id(fd: int | None) -> tuple[int, int] | None:
    """Device and inode of an OS file (``None`` without one)."""
    if fd is None:
        return None
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _positional_fd(f: BinaryIO, size: int) -> int | None:
    """The descriptor of a regular OS file holding exactly ``f``'s bytes, for ``pread``; ``None``
    when there is none (or ``fileno`` may describe other bytes, e.g. a member of an archive)."""
    if not hasattr(os, "pread"):  # pragma: no cover - platforms without pread
        return None
    try:
        fd = f.fileno()
        st = os.fstat(fd)
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    raw = getattr(f, "raw", f) if isinstance(f, (io.BufferedReader, io.BufferedRandom)) else f
    return fd if isinstance(raw, io.FileIO) or st.st_size == size else None
