"""A run's files on disk: its part's output and failure report, whether that output is finished,
reopening a finished output that a later run extends, and the index joining the parts of a
multi-part run (names from :mod:`relabel_maps.layout`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..layout import (
    INDEX_SUFFIX,
    combined_index_path,
    dataset_location,
    index_path,
    is_sharded,
    local_dataset_files,
    part_output_path,
    shard_files,
)
from ..opener import open as open_maps
from ..reader import Reader
from ..shards import write_index
from ..writer import Writer

__all__ = ["FinishedOutput", "check_finished", "dataset_path", "failures_path", "finished_output", "remove_finished",
           "reopen_finished", "write_combined_index"]


@dataclass(frozen=True)
class FinishedOutput:
    """A finished dataset: its ``.rlm`` files, their total size and its record count."""

    files: list[str]
    nbytes: int
    records: int


def failures_path(target: Path, failures: str | os.PathLike[str] | None, part: int, parts: int) -> Path:
    """The failure report of the part written at ``target``: ``failures`` (tagged with the part when
    there are several), else ``TARGET.failures.jsonl``."""
    if failures is None:
        return Path(str(target).rstrip("/\\") + ".failures.jsonl")
    p = Path(failures)
    # the part's tag goes before the suffix, as for a part's .rlm file: x.failures.part00001of00002.jsonl
    return part_output_path(p.with_suffix(".rlm"), part, parts).with_suffix(p.suffix) if parts > 1 else p


def finished_output(target: Path, max_records: int | None) -> Path | None:
    """The finished dataset at ``target`` (the file, or the folder holding its index), if there is one."""
    if not is_sharded(target, max_records=max_records):
        return target if target.is_file() else None
    folder, name = dataset_location(target, sharded=True)
    return folder if index_path(folder, name).is_file() else None


def remove_finished(target: Path, max_records: int | None) -> None:
    """Delete the finished dataset at ``target``, its index first (so it no longer reads as finished)."""
    finished = finished_output(target, max_records)
    if finished is None:
        return
    if finished.is_file():
        finished.unlink()
        return
    folder, name = dataset_location(target, sharded=True)
    for p in [index_path(folder, name), *shard_files(folder, name)]:
        p.unlink()


def check_finished(finished: Path, keys: Sequence[str], failed: Collection[str]) -> FinishedOutput | None:
    """The finished dataset, when it holds every key of ``keys`` that did not fail before; ``None``
    when keys are missing (a trial run with ``limit``, or the source gained images): the run then
    extends it (:func:`reopen_finished`)."""
    with open_maps(finished) as maps:
        stored = set(maps.keys())
        if any(key not in stored and key not in failed for key in keys):
            return None
        records = len(maps)
    files = sorted(str(p) for p in (finished.glob("*.rlm") if finished.is_dir() else [finished]))
    return FinishedOutput(files, sum(os.path.getsize(p) for p in files), records)


def reopen_finished(target: Path, finished: Path, writer_kwargs: Mapping[str, Any]) -> Writer:
    """A resumable writer of ``target`` that holds the records of the ``finished`` dataset there,
    so that a run adds the keys it lacks (a trial run with ``limit`` extended by the same command).

    The records are copied as stored (never decoded and re-encoded) into the writer's working files
    and the finished output stays in place until the writer publishes the extended one; a run killed
    meanwhile resumes from the working files. A finished output written with other arguments (another
    teacher, encoding, ...) is refused as a plain resume would (:class:`WriterError`).
    """
    # WriterError when written with other arguments; a killed extension's working files are resumed
    writer = Writer(target, **writer_kwargs, resume=True, extend=True)
    try:
        for _, local in local_dataset_files(finished):
            if not local.endswith(".rlm"):
                continue
            with Reader(local) as r:
                for key in r:
                    if key not in writer:
                        writer.add_raw(key, r.read_record(key), dictionary=r.dictionary)
        writer.flush()
    except BaseException:
        writer.abort()
        raise
    return writer


def dataset_path(target: Path, max_records: int | None, index: Path | None) -> str | None:
    """What to open for a run's results: the index joining every part once there is one, else the
    part's own finished output (its file, or the index in its folder)."""
    if index is not None:
        return str(index)
    finished = finished_output(target, max_records)
    if finished is None:
        return None
    return str(finished if finished.is_file() else index_path(*dataset_location(target, sharded=True)))


def write_combined_index(out: str | os.PathLike[str], parts: int, max_records: int | None = None) -> Path | None:
    """Once every part of a multi-part run has finished, write one index over all their files.

    Safe to call from every rank: it does nothing until all parts are finished, and the index is
    written atomically with the same content by whichever part finishes last. Each caller writes
    through a hidden file of its own (ranks finishing together would collide on one temporary
    name) and renames it into place. Parts hold contiguous ranges of the sorted keys, so the
    joined dataset keeps the global key order.
    """
    if parts <= 1:
        return None
    files: list[Path] = []
    for part in range(parts):
        target = part_output_path(out, part, parts, max_records)
        finished = finished_output(target, max_records)
        if finished is None:
            return None
        if finished.is_file():
            files.append(finished)
        else:  # the shards the part's index names: a publication cut short can leave another generation
            listed = local_dataset_files(index_path(*dataset_location(target, sharded=True)))
            files += [Path(local) for _, local in listed[1:]]
    index = combined_index_path(out)
    own = index.with_name(f".{index.name[: -len(INDEX_SUFFIX)]}.{uuid.uuid4().hex}{INDEX_SUFFIX}")
    try:
        write_index(files, own)
        os.replace(own, index)
    finally:
        own.unlink(missing_ok=True)
    return index
