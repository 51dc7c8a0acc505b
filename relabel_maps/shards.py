"""A dataset of shard files (``NAME-00001-of-00012.rlm`` + ``NAME.index.json``) as one mapping.

The index JSON lists every shard with its record count, so the dataset's length and positional
access (:meth:`ShardedReader.at`, via a cumulative sum + ``searchsorted``) need no shard to be
opened. Key lookup opens the shards' indices on first use. At most ``max_open`` shard files are
open at once (least recently used ones are closed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import format as fmt
from .errors import FormatError, InvalidArgumentError, MissingKeyError, RelabelMapsError
from .labelmap import LabelMap
from .reader import LabelMaps, Reader, Source

__all__ = ["ShardedReader", "open_folder", "open_index", "write_index", "read_index_json", "INDEX_SUFFIX"]

INDEX_SUFFIX = ".index.json"
STRUCTURAL_KEYS = ("num_classes", "k", "score_kind", "encoding")
MAX_INDEX_JSON_BYTES = 64 << 20
_FILE_RE = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[^\\\x00]+\.rlm$")


def _structure(meta: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(json.dumps(meta.get(k), sort_keys=True) for k in STRUCTURAL_KEYS)


class ShardedReader(LabelMaps):
    """Several shard files as one read-only mapping.

    Args:
        shards: ``(name, source, records)`` per shard, in dataset order; ``source`` is a path, a
            file object factory, or anything :class:`Reader` accepts.
        metadata: the dataset's common metadata (checked against every shard when it is opened).
        verify: check record CRC32s on every read.
        max_open: how many shard files stay open.
        sha256: optional expected SHA-256 per shard name (checked by :meth:`verify`).
    """

    def __init__(
        self,
        shards: Sequence[tuple[str, Source, int]],
        metadata: Mapping[str, Any],
        *,
        verify: bool = False,
        max_open: int = 64,
        sha256: Mapping[str, str] | None = None,
    ) -> None:
        self._names = [s[0] for s in shards]
        self._sources = [s[1] for s in shards]
        counts = [s[2] for s in shards]
        if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in counts):
            raise FormatError("shard record counts must be non-negative integers")
        self._counts = counts
        self._ends = np.cumsum(np.asarray(counts, dtype=np.int64)) if counts else np.zeros(0, np.int64)
        self.metadata = dict(metadata)
        fmt.check_metadata(self.metadata)
        self._structure = _structure(self.metadata)
        self._verify = verify
        self._max_open = max(1, int(max_open))
        self._sha256 = dict(sha256 or {})
        self._open: OrderedDict[int, Reader] = OrderedDict()
        self._lock = threading.Lock()
        self._lookup: dict[str, int] | None = None
        self._sorted: list[str] | None = None
        self._checked: set[int] = set()

    # ------------------------------------------------------------------------------ shards
    @property
    def shard_names(self) -> list[str]:
        return list(self._names)

    def shard(self, s: int) -> Reader:
        """The open :class:`Reader` of shard ``s`` (0-based), opening it if needed."""
        with self._lock:
            r = self._open.get(s)
            if r is not None and r._src is not None:
                self._open.move_to_end(s)
                return r
        r = Reader(self._sources[s], verify=self._verify)
        try:
            if s not in self._checked:
                if len(r) != self._counts[s]:
                    raise FormatError(f"shard {self._names[s]} has {len(r)} records, the index says {self._counts[s]}")
                if _structure(r.metadata) != self._structure:
                    raise FormatError(f"shard {self._names[s]} differs from the dataset in num_classes/k/score_kind/encoding")
                self._checked.add(s)
        except BaseException:
            r.close()
            raise
        with self._lock:
            self._open[s] = r
            while len(self._open) > self._max_open:
                _, old = self._open.popitem(last=False)
                old.close()
        return r

    # ------------------------------------------------------------------------------ mapping
    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _locate(self, pos: int) -> tuple[int, int]:
        s = int(np.searchsorted(self._ends, pos, side="right"))
        start = int(self._ends[s - 1]) if s else 0
        return s, pos - start

    def _index(self) -> dict[str, int]:
        if self._lookup is None:
            lookup: dict[str, int] = {}
            for s in range(len(self._names)):
                base = int(self._ends[s - 1]) if s else 0
                keys = self.shard(s)._keys
                for j, key in enumerate(keys):
                    if lookup.setdefault(key, base + j) != base + j:
                        raise FormatError(f"key {key!r} appears in more than one shard ({self._names[s]})")
            self._lookup = lookup
        return self._lookup

    def __iter__(self) -> Iterator[str]:
        if self._sorted is None:
            self._sorted = sorted(self._index())
        return iter(self._sorted)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._index()
        except TypeError:  # unhashable
            return False

    def __getitem__(self, key: str) -> LabelMap:
        try:
            pos = self._index()[key]
        except (KeyError, TypeError):
            raise MissingKeyError(f"key {key!r} not found in the dataset") from None
        s, j = self._locate(pos)
        return self.shard(s).at(j)[1]

    def at(self, i: int) -> tuple[str, LabelMap]:
        """``(key, LabelMap)`` at position ``i``: shard by shard, each shard in key order."""
        s, j = self._locate(self._position(i))
        return self.shard(s).at(j)

    def record_nbytes(self, key: str) -> int:
        try:
            pos = self._index()[key]
        except (KeyError, TypeError):
            raise MissingKeyError(f"key {key!r} not found in the dataset") from None
        s, j = self._locate(pos)
        r = self.shard(s)
        return r._nbytes[j]

    # ------------------------------------------------------------------------------ integrity
    def verify(self, strict: bool = False) -> list[str]:
        """Check every shard (counts, shared structure, SHA-256 when listed, every record) and
        that no key appears twice."""
        problems: list[str] = []
        for s, name in enumerate(self._names):
            try:
                expected = self._sha256.get(name)
                src = self._sources[s]
                if expected and isinstance(src, (str, os.PathLike)):
                    if _sha256_file(src) != expected:
                        problems.append(f"{name}: SHA-256 differs from the index")
                        continue
                problems.extend(f"{name}: {p}" for p in self.shard(s).verify())
            except RelabelMapsError as exc:
                problems.append(f"{name}: {exc}")
        try:
            self._index()
        except RelabelMapsError as exc:
            problems.append(str(exc))
        if strict and problems:
            from .errors import CorruptRecordError

            raise CorruptRecordError(problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        return problems

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            readers = list(self._open.values())
            self._open.clear()
        for r in readers:
            r.close()

    def __getstate__(self) -> dict[str, Any]:
        if not all(isinstance(s, (str, os.PathLike)) for s in self._sources):
            raise InvalidArgumentError("only datasets opened from paths can be pickled")
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ShardedReader(shards={len(self._names)}, records={len(self)})"


# ---------------------------------------------------------------------------------- index json
def _sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_index_json(data: bytes | str) -> dict[str, Any]:
    """Parse and validate the text of a ``NAME.index.json``."""
    if len(data) > MAX_INDEX_JSON_BYTES:
        raise FormatError("shard index JSON is too large")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"shard index is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("shards"), list) or not isinstance(obj.get("metadata"), dict):
        raise FormatError("shard index must be an object with 'shards' (list) and 'metadata' (object)")
    fv = obj.get("format_version")
    m = re.fullmatch(r"(\d+)\.(\d+)", fv) if isinstance(fv, str) else None
    if m is None:
        raise FormatError(f"shard index format_version must be 'MAJOR.MINOR', got {fv!r}")
    fmt.check_major(int(m.group(1)), "shard index")
    seen = set()
    for entry in obj["shards"]:
        if not isinstance(entry, dict):
            raise FormatError("each shard entry must be an object")
        f, n = entry.get("file"), entry.get("records")
        if not isinstance(f, str) or not _FILE_RE.match(f):
            raise FormatError(f"bad shard file name {f!r}: a relative path ending in .rlm without '..'")
        if f in seen:
            raise FormatError(f"shard {f!r} is listed twice")
        seen.add(f)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise FormatError(f"shard {f!r} has a bad record count {n!r}")
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise FormatError(f"shard {f!r} has a bad sha256 {sha!r}")
    fmt.check_metadata(obj["metadata"])
    return obj


def from_index(
    index: Mapping[str, Any], resolve: Callable[[str], Source], *, verify: bool = False, max_open: int = 64
) -> ShardedReader:
    """A :class:`ShardedReader` for a parsed index; ``resolve(file)`` gives each shard's source
    (a local path, or a file-object factory for remote storage)."""
    shards = [(e["file"], resolve(e["file"]), e["records"]) for e in index["shards"]]
    sha = {e["file"]: e["sha256"] for e in index["shards"] if e.get("sha256")}
    return ShardedReader(shards, index["metadata"], verify=verify, max_open=max_open, sha256=sha)


def open_index(path: str | os.PathLike[str], *, verify: bool = False) -> ShardedReader:
    """Open the dataset described by a ``NAME.index.json`` (shard paths are relative to it)."""
    p = Path(path)
    if p.stat().st_size > MAX_INDEX_JSON_BYTES:
        raise FormatError(f"{p} is too large for a shard index")
    index = read_index_json(p.read_bytes())
    folder = p.parent
    return from_index(index, lambda f: str(folder / f), verify=verify)


def open_folder(path: str | os.PathLike[str], *, verify: bool = False) -> LabelMaps:
    """Open a folder: its single ``*.index.json``, or else every ``*.rlm`` in it (sorted by name)."""
    folder = Path(path)
    indices = sorted(p for p in folder.iterdir() if p.name.endswith(INDEX_SUFFIX) and not p.name.startswith("."))
    if len(indices) > 1:
        raise FormatError(f"{folder} holds several datasets ({', '.join(p.name for p in indices)}); open one index")
    if indices:
        return open_index(indices[0], verify=verify)
    files = sorted(p for p in folder.iterdir() if p.suffix == ".rlm" and not p.name.startswith(".") and p.is_file())
    if not files:
        raise FormatError(f"{folder} holds no .rlm files and no {INDEX_SUFFIX}")
    shards = []
    metadata: dict[str, Any] | None = None
    for f in files:
        with Reader(f) as r:
            if metadata is None:
                metadata = r.metadata
            elif _structure(r.metadata) != _structure(metadata):
                raise FormatError(f"{f.name} differs from {files[0].name} in num_classes/k/score_kind/encoding")
            shards.append((f.name, str(f), len(r)))
    assert metadata is not None
    return ShardedReader(shards, metadata, verify=verify)


def write_index(
    paths: Sequence[str | os.PathLike[str]], out_path: str | os.PathLike[str], *, sha256: bool = True
) -> dict[str, Any]:
    """Write (atomically) ``out_path`` = ``NAME.index.json`` for shard files ``paths`` (in order).

    Every shard must lie in the index's folder or below and share num_classes, k, score_kind and
    encoding; the index's ``metadata`` is the first shard's. Returns the index object.
    """
    out = Path(out_path)
    if not out.name.endswith(INDEX_SUFFIX):
        raise InvalidArgumentError(f"an index file name ends in {INDEX_SUFFIX}: {out}")
    folder = out.parent.resolve()
    entries = []
    metadata: dict[str, Any] | None = None
    for p in map(Path, paths):
        rel = os.path.relpath(p.resolve(), folder).replace(os.sep, "/")
        if not _FILE_RE.match(rel):
            raise InvalidArgumentError(f"shard {p} must be a .rlm file inside {folder}")
        with Reader(p) as r:
            if metadata is None:
                metadata = r.metadata
            elif _structure(r.metadata) != _structure(metadata):
                raise FormatError(f"{p.name} differs from the first shard in num_classes/k/score_kind/encoding")
            entry: dict[str, Any] = {"file": rel, "records": len(r), "bytes": p.stat().st_size}
        if sha256:
            entry["sha256"] = _sha256_file(p)
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
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return index
