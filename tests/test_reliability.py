"""Failure modes: a full disk while writing, stale working files, readers shared with forked workers."""

from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing as mp
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import relabel_maps as rm
from relabel_maps import journal, publish
from relabel_maps.errors import InvalidArgumentError, WriterError

C, K = 50, 3


def sample(i: int, h: int = 4, w: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    idx = np.stack([rng.choice(C, K, replace=False) for _ in range(h * w)], 1).reshape(K, h, w)
    sc = -np.sort(-rng.normal(size=(K, h, w)).astype(np.float32), axis=0)
    return idx.astype(np.uint16), sc


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------ item 3: disk full
class _FullDisk(io.RawIOBase):
    """A real file on a disk with ``room[0]`` bytes free: writes beyond it fail with ENOSPC."""

    def __init__(self, path: str, room: list[int]) -> None:
        self._f = io.FileIO(path, "wb")
        self._room = room

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)[: self._room[0]]
        if not data:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self._f.write(data) or 0
        self._room[0] -= n
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        return self._f.truncate(size)

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()
        super().close()


def _fill_disk_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """Partial files opened by the writer share ``room`` bytes of disk space (buffered like ``open``)."""
    real_open = open
    free = [room]

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(file).endswith(".partial") and mode == "wb":
            return io.BufferedWriter(_FullDisk(os.fspath(file), free))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(journal, "open", fake_open, raising=False)


def _output_size(tmp_path: Path, n: int) -> int:
    ref = tmp_path / "ref.rlm"
    with rm.Writer(ref, num_classes=C, k=K, encoding="f32", level=1) as w:
        for i in range(n):
            w.add(f"k{i:03d}", *sample(i))
    return ref.stat().st_size


def _index_write_fails(paths: Any, out: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["add", "close", "sharded", "index"])
def test_item3_enospc_without_resume_leaves_no_partial(tmp_path, monkeypatch, where):
    """ENOSPC while adding (inside ``with``), while closing or while writing the index of shards
    removes every file the writer created."""
    n = 40
    room = _output_size(tmp_path, n) - 8 if where == "close" else 9_000  # "close": only the trailer misses
    out = tmp_path / "out"
    path = out / ("maps" if where in ("sharded", "index") else "maps.rlm")
    kw: dict[str, Any] = {"max_records": 9} if where in ("sharded", "index") else {}
    if where == "index":
        monkeypatch.setattr(publish, "write_index", _index_write_fails)
    else:
        _fill_disk_after(monkeypatch, room)
    with pytest.raises(OSError) as info:
        with rm.Writer(path, num_classes=C, k=K, encoding="f32", level=1, **kw) as w:
            for i in range(10 * n if where in ("add", "sharded") else n):
                w.add(f"k{i:03d}", *sample(i))
    assert info.value.errno == errno.ENOSPC
    assert [p for p in out.rglob("*") if not p.is_dir()] == []  # folders it made may stay (empty)
    assert w.close() == []  # closed for good


@pytest.mark.parametrize("where", ["add", "index"])
def test_item3_enospc_with_resume_keeps_a_recoverable_state(tmp_path, monkeypatch, where):
    """With ``resume`` the working files stay; once there is space again the run completes."""
    path = tmp_path / "out" / ("maps.rlm" if where == "add" else "maps")
    kw: dict[str, Any] = dict(num_classes=C, k=K, encoding="f32", level=1)
    if where == "index":
        kw["max_records"] = 9
        monkeypatch.setattr(publish, "write_index", _index_write_fails)
    else:
        _fill_disk_after(monkeypatch, 9_000)
    with pytest.raises(OSError) as info:
        with rm.Writer(path, resume=True, **kw) as w:
            for i in range(40):
                w.add(f"k{i:03d}", *sample(i))
                if i % 5 == 4:
                    w.flush()
    assert info.value.errno == errno.ENOSPC
    if where == "add":
        assert listing(path.parent) == [".maps.rlm.journal", ".maps.rlm.partial"]
    else:  # every shard finished, none published
        assert listing(path) == [f".maps-{i:05d}.rlm.done" for i in range(1, 6)]
    monkeypatch.undo()  # space freed: the run continues where it stopped
    with rm.Writer(path, resume=True, **kw) as w:
        assert 0 < len(w) <= 40
        for i in range(40):
            if f"k{i:03d}" not in w:
                w.add(f"k{i:03d}", *sample(i))
    with rm.open(path) as maps:
        assert len(maps) == 40 and maps.verify() == []
    assert not [p for p in path.parent.rglob(".*") if p.is_file()]


@pytest.mark.parametrize("resume", [True, False])
def test_item3_stale_journal_is_cleaned(tmp_path, resume):
    """A kill between renaming the finished file into place and deleting its journal leaves a stale
    journal (and the lock file, no longer held: the kernel released its flock); the next run,
    resumed or not, deletes both."""
    path = tmp_path / "maps.rlm"
    kw: dict[str, Any] = dict(num_classes=C, k=K, encoding="f32", level=1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child dies right after the rename
        try:
            journal.fsync_dir = lambda folder: os.kill(os.getpid(), signal.SIGKILL)
            with rm.Writer(path, resume=True, **kw) as w:
                for i in range(5):
                    w.add(f"k{i}", *sample(i))
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert listing(tmp_path) == [".maps.rlm.journal", ".maps.rlm.lock", "maps.rlm"]
    if resume:
        with rm.Writer(path, resume=True, **kw) as w:
            assert w.keys() == [f"k{i}" for i in range(5)]
    else:
        with pytest.raises(WriterError, match="exists"):
            rm.Writer(path, **kw)
    assert listing(tmp_path) == ["maps.rlm"]
    with rm.open(path) as maps:
        assert len(maps) == 5 and maps.verify() == []


# ------------------------------------------------------------------------------ item 6: fork
class _Delegate:
    """A file object without ``fileno``: read/seek/tell go to a real file (like many wrappers)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.name = f"wrapper of {f.name}"

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


_MAPS: Any = None  # the mapping the forked workers inherit
_KEYS = [f"k{i:03d}" for i in range(48)]


def _digest(lm: rm.LabelMap) -> str:
    return hashlib.sha256(lm.indices.tobytes() + lm.scores.tobytes()).hexdigest()


def _read_everything(worker: int) -> tuple[str, Any]:
    keys = list(_KEYS) * 6
    random.Random(worker).shuffle(keys)
    try:
        return "ok", {k: _digest(_MAPS[k]) for k in keys}
    except Exception as exc:  # reported to the parent
        return type(exc).__name__, str(exc)


KINDS = ["path", "folder", "bytesio", "fileobj", "unbuffered", "factory", "wrapper", "wrapper-callable"]


def write_sources(folder: Path, n: int = len(_KEYS), offset: int = 0) -> None:
    """``folder/one.rlm`` and the sharded ``folder/shards`` holding ``n`` of the keys (samples shifted
    by ``offset``, to tell versions apart)."""
    kw: dict[str, Any] = dict(num_classes=C, k=K, encoding="f32", level=1, overwrite=True)
    with rm.Writer(folder / "one.rlm", **kw) as w:
        for i, key in enumerate(_KEYS[:n]):
            w.add(key, *sample(i + offset, 16, 24))
    with rm.Writer(folder / "shards", max_records=7, **kw) as w:
        for i, key in enumerate(_KEYS[:n]):
            w.add(key, *sample(i + offset, 16, 24))


def source_of_kind(kind: str, folder: Path, files: list[Any]) -> Any:
    """What ``rm.open`` gets for source ``kind`` over :func:`write_sources`' outputs (file objects it
    opens are appended to ``files``)."""
    one = folder / "one.rlm"
    if kind == "path":
        return one
    if kind == "folder":
        return folder / "shards"
    if kind == "bytesio":
        return io.BytesIO(one.read_bytes())
    if kind in ("fileobj", "unbuffered", "wrapper"):
        files.append(open(one, "rb", buffering=-1 if kind == "fileobj" else 0))
        return _Delegate(files[-1]) if kind == "wrapper" else files[-1]
    if kind == "factory":
        return lambda: open(one, "rb")
    return lambda: _Delegate(open(one, "rb", buffering=0))  # the remedy the refusal names


def fork_read(maps: Any, workers: int = 4) -> list[tuple[str, Any]]:
    """What each of ``workers`` forked processes reads from ``maps`` (every key, 6 times, shuffled):
    ``("ok", {key: digest})`` or ``(error class name, message)``."""
    global _MAPS
    _MAPS = maps
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            return pool.map(_read_everything, range(workers), chunksize=1)
    finally:
        _MAPS = None


def digests(maps: Any) -> dict[str, str]:
    return {k: _digest(maps[k]) for k in _KEYS if k in maps}


@pytest.mark.parametrize("kind", KINDS)
def test_item6_forked_workers_read_identical_records_from_every_source_kind(tmp_path, kind):
    write_sources(tmp_path)
    files: list[Any] = []
    maps = rm.open(source_of_kind(kind, tmp_path, files))
    try:
        expected = digests(maps)  # the parent reads before forking
        results = fork_read(maps)
        if kind == "wrapper":  # shares the OS file offset with the parent: refused, not corrupted
            assert [r[0] for r in results] == [InvalidArgumentError.__name__] * 4
            assert "fork" in results[0][1] and "callable" in results[0][1]
        else:
            assert results == [("ok", expected)] * 4
        assert digests(maps) == expected  # the parent is unaffected
    finally:
        maps.close()
        for f in files:
            f.close()


def test_item3_a_failed_index_write_leaves_no_temp_file(tmp_path, monkeypatch):
    with rm.Writer(tmp_path / "ds", num_classes=C, k=K, encoding="f32", level=1, max_records=2) as w:
        for i in range(5):
            w.add(f"k{i}", *sample(i))
    shards = sorted((tmp_path / "ds").glob("ds-*.rlm"))

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError) as info:
        publish.write_index(shards, tmp_path / "ds" / "all.index.json")
    assert info.value.errno == errno.ENOSPC
    assert listing(tmp_path / "ds") == [p.name for p in shards] + ["ds.index.json"]
