"""How a dataset of shards appears on disk (spec/FORMAT.md §12.1): readers see the previous complete
dataset or the new complete one, never a part or a mix.

A publication moves finished shards in under names no earlier generation used, writes
``NAME.index.json`` last (a temporary file renamed over the old index), and only then deletes the
earlier generations' shards. :class:`Unchanged` is the reader's side: a dataset opened from an index
notices that the index was replaced before it opens a shard of the new generation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import format as fmt
from .errors import DatasetReplacedError, FormatError, InvalidArgumentError
from .layout import (
    INDEX_SUFFIX,
    SHARD_ENTRY_RE,
    generation_shard_name,
    index_path,
    next_generation,
    shard_files,
    shard_structure,
    temp_path,
)
from .reader import Reader

__all__ = ["Unchanged", "fsync_dir", "publish_shards", "sha256_file", "stamp", "write_index"]


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stamp(st: os.stat_result) -> tuple[int, ...]:
    """What identifies one version of a file: device, inode, size and modification time."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Unchanged:
    """Checks that the local files a dataset was opened from are still those files (picklable).

    ``index`` is ``(path, stamp)`` of the index it was opened from; ``files`` the stamp of each shard
    file opened without an index. Called with a shard file's path after that file was opened: a
    publication reuses no name, and deletes a generation only after replacing its index, so an
    unchanged index means the file opened belongs to the dataset's generation.
    """

    def __init__(self, index: tuple[str, tuple[int, ...]] | None, files: Mapping[str, tuple[int, ...]]) -> None:
        self.index = index
        self.files = dict(files)

    def __call__(self, shard: str) -> None:
        checks = [self.index] if self.index is not None else []
        if shard in self.files:
            checks.append((shard, self.files[shard]))
        for path, expected in checks:
            try:
                now: tuple[int, ...] | None = stamp(os.stat(path))
            except FileNotFoundError:
                now = None
            if now != expected:
                raise DatasetReplacedError(
                    f"{path} was replaced or deleted after the dataset was opened, so "
                    f"{os.path.basename(shard)} may belong to another dataset: open the dataset again"
                )


def write_index(
    paths: Sequence[str | os.PathLike[str]], out_path: str | os.PathLike[str], *, sha256: bool = True
) -> dict[str, Any]:
    """Write (atomically) ``out_path`` = ``NAME.index.json`` for shard files ``paths`` (in order).

    Every shard must lie in the index's folder or below and share num_classes, k, score_kind and
    encoding; the index's ``metadata`` is the first shard's. Each non-empty shard's entry lists its
    smallest and largest key (``first_key``, ``last_key``). Returns the index object. The temporary
    file is unique to the call (several ranks may write the same index) and removed on any failure.
    """
    out = Path(out_path)
    if not out.name.endswith(INDEX_SUFFIX):
        raise InvalidArgumentError(f"an index file name ends in {INDEX_SUFFIX}: {out}")
    folder = out.parent.resolve()
    entries = []
    metadata: dict[str, Any] | None = None
    for p in map(Path, paths):
        rel = os.path.relpath(p.resolve(), folder).replace(os.sep, "/")
        if not SHARD_ENTRY_RE.match(rel):
            raise InvalidArgumentError(f"shard {p} must be a .rlm file inside {folder}")
        with Reader(p) as r:
            if metadata is None:
                metadata = r.metadata
            elif shard_structure(r.metadata) != shard_structure(metadata):
                raise FormatError(f"{p.name} differs from the first shard in num_classes/k/score_kind/encoding")
            entry: dict[str, Any] = {"file": rel, "records": len(r), "bytes": p.stat().st_size}
            if r.key_range is not None:
                entry["first_key"], entry["last_key"] = r.key_range
        if sha256:
            entry["sha256"] = sha256_file(p)
        entries.append(entry)
    if metadata is None:
        raise InvalidArgumentError("write_index needs at least one shard")
    index = {
        "format_version": fmt.version_string(),
        "records": sum(e["records"] for e in entries),
        "shards": entries,
        "metadata": metadata,
    }
    text = json.dumps(index, sort_keys=True, ensure_ascii=False, indent=1) + "\n"
    tmp = temp_path(out)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return index


def publish_shards(folder: Path, name: str, files: Sequence[Path]) -> list[Path]:
    """Publish finished shard ``files`` (in order, in ``folder`` or on its file system) as dataset
    ``name`` in ``folder``: move them in under the next generation's names, write the index (last),
    then delete every earlier generation's shards. Returns the shards, then the index. If it fails
    before the index is in place, the files go back to their old names and the earlier dataset
    stays as it was. The caller holds the output's lock (:mod:`relabel_maps.lock`)."""
    generation = next_generation(folder, name)
    index = index_path(folder, name)
    moved: list[Path] = []
    try:
        for i, path in enumerate(files, start=1):
            final = folder / generation_shard_name(name, i, len(files), generation)
            if final.exists():  # pragma: no cover - a new generation's names are new
                raise FileExistsError(f"{final} exists")
            os.replace(path, final)
            moved.append(final)
        fsync_dir(folder)
        write_index(moved, index)
    except BaseException:  # no new index: the earlier dataset is intact; the shards go back
        for path, final in zip(files, moved, strict=False):
            with contextlib.suppress(OSError):
                os.replace(final, path)
        raise
    fsync_dir(folder)
    keep = set(moved)
    for old in shard_files(folder, name):
        if old not in keep:
            with contextlib.suppress(OSError):  # left for the next publication to delete
                old.unlink()
    return [*moved, index]
