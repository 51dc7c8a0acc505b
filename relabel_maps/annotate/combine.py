"""Joining the parts of a multi-part run over a stream source: duplicate keys across parts, then
the combined index.

Parts hold contiguous runs of the source's units, so a key's first sample in source order is the
one in the lowest part. Within a part the stream settles duplicates as it reads (:mod:`.sources`);
a key held by two parts can only be seen once both are finished. When the last part finishes,
:func:`combine_parts` merges the parts' sorted key lists, removes from each later part the keys an
earlier part holds (its ``.rlm`` file is rewritten by copying the other records' bytes; a part
written as shards gets its own index rewritten) and adds them to that part's failure report as
``duplicate-key``, then writes the combined index (:func:`.outputs.write_combined_index`). The whole
step runs under a lock of its own, so ranks finishing together do it one after the other: the second
finds nothing left to drop and an index newer than every part file, and leaves it as it is (the index
is written once). A re-run of any part repeats the check harmlessly.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputLockedError
from ..layout import combined_index_path, dataset_location, index_path, lock_path, part_output_path, shard_files
from ..lock import OutputLock
from ..merge import writer_settings
from ..publish import write_index
from ..reader import Reader
from ..writer import Writer
from .outputs import failures_path, finished_output, write_combined_index
from .sinks import failed_keys

__all__ = ["combine_parts", "cross_part_duplicates"]

_LOCK_POLL = 0.05  # seconds between tries for the combine lock


@contextlib.contextmanager
def _combine_lock(out: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``.NAME.combine.lock`` next to the combined index, waiting while another part holds it."""
    index = combined_index_path(out)
    index.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(index.parent, f"{index.name}.combine")
    while True:
        try:
            lock = OutputLock(path, index)
            break
        except OutputLockedError:
            time.sleep(_LOCK_POLL)
    try:
        yield
    finally:
        lock.release()


def _part_files(out: str | os.PathLike[str], parts: int, max_records: int | None) -> list[list[Path]] | None:
    """Each part's ``.rlm`` files, or ``None`` while a part is unfinished."""
    files = []
    for part in range(parts):
        target = part_output_path(out, part, parts, max_records)
        finished = finished_output(target, max_records)
        if finished is None:
            return None
        files.append([finished] if finished.is_file() else shard_files(*dataset_location(target, sharded=True)))
    return files


def cross_part_duplicates(files: list[list[Path]]) -> dict[Path, list[str]]:
    """For each file of a later part, the keys an earlier part (or an earlier file of the same key
    order) already holds: the copies to drop. One merge over the files' sorted keys."""
    with contextlib.ExitStack() as stack:
        readers = [(part, stack.enter_context(Reader(f)), f) for part, fs in enumerate(files) for f in fs]
        streams = [((key, part, n) for key in r) for n, (part, r, _) in enumerate(readers)]
        drop: dict[Path, list[str]] = {}
        previous: str | None = None
        for key, _part, n in heapq.merge(*streams):
            if key == previous:
                drop.setdefault(readers[n][2], []).append(key)
            previous = key
    return drop


def _rewrite_without(path: Path, keys: set[str]) -> None:
    """Rewrite the ``.rlm`` file ``path`` without ``keys``, copying every other record's bytes."""
    tmp = path.with_name(f".{path.stem}.dedupe-{uuid.uuid4().hex[:8]}.rlm")
    try:
        with Reader(path) as r, Writer(tmp, **writer_settings(dict(r.metadata))) as w:
            for key in r:
                if key not in keys:
                    w.add_raw(key, r.read_record(key), dictionary=r.dictionary)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def combine_parts(out: str | os.PathLike[str], parts: int, max_records: int | None = None,
                  failures: str | os.PathLike[str] | None = None) -> Path | None:
    """Once every part of ``out`` is finished: drop keys duplicated across parts from the later parts
    (reported in their failure reports), then write the combined index. ``None`` until then."""
    if parts <= 1 or _part_files(out, parts, max_records) is None:
        return None
    with _combine_lock(out):
        files = _part_files(out, parts, max_records)
        if files is None:  # a part was re-opened (overwrite) meanwhile
            return None
        drop = cross_part_duplicates(files)
        index = combined_index_path(out)
        newest = max((f.stat().st_mtime_ns for fs in files for f in fs), default=0)
        if not drop and index.is_file() and index.stat().st_mtime_ns >= newest:
            return index  # another part wrote it over these very files: written once
        for part, part_files in enumerate(files):
            hit = [f for f in part_files if f in drop]
            if not hit:
                continue
            target = part_output_path(out, part, parts, max_records)
            report = failures_path(target, failures, part, parts)
            listed = failed_keys(report)
            with open(report, "a", encoding="utf-8") as fh:  # reported first: a kill before the rewrite redoes it
                for f in hit:
                    for key in (k for k in drop[f] if k not in listed):
                        fh.write(json.dumps({"key": key, "path": str(f), "reason": "duplicate-key",
                                             "detail": "an earlier part of the source holds this key"},
                                            ensure_ascii=False) + "\n")
            for f in hit:
                _rewrite_without(f, set(drop[f]))
            if not (len(part_files) == 1 and part_files[0] == target):  # a part written as shards
                folder, name = dataset_location(target, sharded=True)
                write_index(part_files, index_path(folder, name))
        return write_combined_index(out, parts, max_records)
