"""A dataset of shard files (``NAME-00001-of-00012.rlm`` + ``NAME.index.json``) as one mapping.

The index JSON lists every shard with its record count, so the dataset's length and positional
access (:meth:`ShardedReader.at`, via a cumulative sum + ``searchsorted``) need no shard to be
opened. When it also lists each shard's key range (``first_key``, ``last_key``), ``key in maps`` and
``maps[key]`` open only the shards whose range holds the key (usually one); otherwise key lookup
opens every shard's index on first use. A shard's source is resolved (e.g. downloaded) only when
the shard is first opened. At most ``max_open`` shard files are open at once (least recently used
ones are closed).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import format as fmt
from .errors import FormatError, InvalidArgumentError, MissingKeyError, RelabelMapsError
from .labelmap import LabelMap
from .layout import INDEX_SUFFIX, MAX_INDEX_JSON_BYTES, SHARD_ENTRY_RE, folder_contents, read_index_json
from .reader import LabelMaps, Problem, Reader, Source

__all__ = [
    "ShardedReader",
    "folder_contents",
    "from_index",
    "open_folder",
    "open_index",
    "write_index",
    "read_index_json",
    "INDEX_SUFFIX",
]

STRUCTURAL_KEYS = ("num_classes", "k", "score_kind", "encoding")


def _structure(meta: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(json.dumps(meta.get(k), sort_keys=True) for k in STRUCTURAL_KEYS)


class ShardedReader(LabelMaps):
    """Several shard files as one read-only mapping.

    Args:
        shards: ``(name, source, records)`` per shard, in dataset order; ``source`` is a path, a
            file object factory, or anything :class:`Reader` accepts, or ``None`` to get it from
            ``resolve(name)`` when the shard is first opened.
        metadata: the dataset's common metadata (checked against every shard when it is opened).
        verify: check record CRC32s on every read.
        max_open: how many shard files stay open.
        sha256: optional expected SHA-256 per shard name (checked by :meth:`verify`).
        key_ranges: optional ``(first_key, last_key)`` per shard (``None`` for an empty shard); key
            lookup then opens only the shards whose range holds the key.
        resolve: gives the source of a shard listed with source ``None``.
    """

    def __init__(
        self,
        shards: Sequence[tuple[str, Source | None, int]],
        metadata: Mapping[str, Any],
        *,
        verify: bool = False,
        max_open: int = 64,
        sha256: Mapping[str, str] | None = None,
        key_ranges: Sequence[tuple[str, str] | None] | None = None,
        resolve: Callable[[str], Source] | None = None,
    ) -> None:
        self._names = [s[0] for s in shards]
        self._sources: list[Source | None] = [s[1] for s in shards]
        self._resolve = resolve
        if resolve is None and any(src is None for src in self._sources):
            raise InvalidArgumentError("a shard without a source needs resolve")
        counts = [s[2] for s in shards]
        most = fmt.LIMITS.max_records
        if any(not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= most for c in counts):
            raise FormatError(f"shard record counts must be integers in [0, {most}]")
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
        self._set_ranges(key_ranges)

    def _set_ranges(self, key_ranges: Sequence[tuple[str, str] | None] | None) -> None:
        """Keep the key ranges, and whether they are sorted and disjoint (binary search)."""
        self._ranges: list[tuple[str, str] | None] | None = None
        self._range_shards: list[int] = []  # non-empty shards, for binary search when disjoint
        self._bounds: list[tuple[str, str]] = []  # their ranges
        self._range_firsts: list[str] = []
        self._disjoint = False
        if key_ranges is None:
            return
        ranges = list(key_ranges)
        if len(ranges) != len(self._names):
            raise FormatError("key_ranges must list one range (or None) per shard")
        for s, r in enumerate(ranges):
            if (r is None) != (self._counts[s] == 0):
                raise FormatError(f"shard {self._names[s]}: a key range is given exactly for non-empty shards")
            if r is not None and not (isinstance(r[0], str) and isinstance(r[1], str) and r[0] <= r[1]):
                raise FormatError(f"shard {self._names[s]}: bad key range {r!r}")
        self._ranges = ranges
        self._range_shards = [s for s, r in enumerate(ranges) if r is not None]
        self._bounds = [r for r in ranges if r is not None]
        self._range_firsts = [first for first, _ in self._bounds]
        self._disjoint = all(a[1] < b[0] for a, b in itertools.pairwise(self._bounds))

    # ------------------------------------------------------------------------------ shards
    @property
    def shard_names(self) -> list[str]:
        return list(self._names)

    def shard(self, s: int) -> Reader:
        """The open :class:`Reader` of shard ``s`` (0-based), opening it if needed."""
        with self._lock:
            r = self._open.get(s)
            if r is not None and not r.closed:
                self._open.move_to_end(s)
                return r
        r = Reader(self._source(s), verify=self._verify)
        try:
            if s not in self._checked:
                if len(r) != self._counts[s]:
                    raise FormatError(f"shard {self._names[s]} has {len(r)} records, the index says {self._counts[s]}")
                if _structure(r.metadata) != self._structure:
                    raise FormatError(
                        f"shard {self._names[s]} differs from the dataset in num_classes/k/score_kind/encoding"
                    )
                held = r.key_range
                if self._ranges is not None and held is not None and self._ranges[s] != held:
                    raise FormatError(
                        f"shard {self._names[s]} holds keys {held[0]!r}..{held[1]!r}, "
                        f"the index says {self._ranges[s]!r}"
                    )
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

    def _source(self, s: int) -> Source:
        src = self._sources[s]
        if src is None:
            assert self._resolve is not None
            src = self._sources[s] = self._resolve(self._names[s])
        return src

    # ------------------------------------------------------------------------------ mapping
    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _start(self, s: int) -> int:
        """Dataset position of shard ``s``'s first record."""
        return int(self._ends[s - 1]) if s else 0

    def _locate(self, pos: int) -> tuple[int, int]:
        s = int(np.searchsorted(self._ends, pos, side="right"))
        return s, pos - self._start(s)

    def _build_lookup(self, shards: Sequence[int]) -> dict[str, int]:
        """Key -> dataset position over ``shards``; :class:`FormatError` on a key held twice."""
        lookup: dict[str, int] = {}
        for s in shards:
            base = self._start(s)
            for j, key in enumerate(self.shard(s)):
                if lookup.setdefault(key, base + j) != base + j:
                    raise FormatError(f"key {key!r} appears in more than one shard ({self._names[s]})")
        return lookup

    def _index(self) -> dict[str, int]:
        if self._lookup is None:
            self._lookup = self._build_lookup(range(len(self._names)))
        return self._lookup

    def _candidates(self, key: str) -> list[int]:
        """Shards whose key range holds ``key`` (code-point order of ``str`` = UTF-8 byte order)."""
        if self._disjoint:
            c = bisect.bisect_right(self._range_firsts, key) - 1
            return [self._range_shards[c]] if c >= 0 and key <= self._bounds[c][1] else []
        return [s for s, (first, last) in zip(self._range_shards, self._bounds, strict=True) if first <= key <= last]

    def _find(self, key: object) -> tuple[int, int] | None:
        """``(shard, position in the shard)`` of ``key``, or ``None``."""
        if not isinstance(key, str):  # keys are strings
            return None
        if self._lookup is None and self._ranges is not None:
            found = None
            for s in self._candidates(key):  # disjoint ranges: at most one; else every candidate,
                j = self.shard(s).position_of(key)  # so that a key held twice is still rejected
                if j is not None:
                    if found is not None:
                        raise FormatError(f"key {key!r} appears in more than one shard ({self._names[s]})")
                    found = s, j
            return found
        pos = self._index().get(key)
        return None if pos is None else self._locate(pos)

    def __iter__(self) -> Iterator[str]:
        if self._sorted is None:
            self._sorted = sorted(self._index())
        return iter(self._sorted)

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not None

    def _where(self, key: str) -> tuple[int, int]:
        found = self._find(key)
        if found is None:
            raise MissingKeyError(f"key {key!r} not found in the dataset")
        return found

    def __getitem__(self, key: str) -> LabelMap:
        s, j = self._where(key)
        return self.shard(s).at(j)[1]

    def read_record(self, key: str) -> bytes:
        """Stored bytes of record ``key`` (see :meth:`Reader.read_record`); the frame uses
        ``self.shard(self.shard_of(key)).dictionary``."""
        s, j = self._where(key)
        return self.shard(s).read_record(j)

    def shard_of(self, key: str) -> int:
        """Index (0-based) of the shard holding ``key``."""
        return self._where(key)[0]

    def at(self, i: int) -> tuple[str, LabelMap]:
        """``(key, LabelMap)`` at position ``i``: shard by shard, each shard in key order."""
        s, j = self._locate(self._position(i))
        return self.shard(s).at(j)

    def record_nbytes(self, key: str) -> int:
        s, j = self._where(key)
        return self.shard(s).record_nbytes(j)

    # ------------------------------------------------------------------------------ integrity
    def check(self, progress: Callable[[int], None] | None = None) -> list[Problem]:
        """Check each shard file on its own (SHA-256 when listed, layout, every record), then as a
        member of the dataset (record count, shared structure, key range), each problem naming its
        shard and ``progress(1)`` after each; then that no key appears twice (a problem of the
        dataset as a whole). A missing or unreadable shard file is reported, not raised."""
        problems: list[Problem] = []
        members = []
        for s, name in enumerate(self._names):
            try:
                expected = self._sha256.get(name)
                src = self._source(s)
                replaced = bool(expected) and isinstance(src, (str, os.PathLike)) and _sha256_file(src) != expected
                if replaced:  # still checked, but its keys are not the ones the index describes
                    problems.append(Problem(name, "SHA-256 differs from the one in the index"))
                with Reader(src) as alone:
                    problems.extend(Problem(name, p.message) for p in alone.check())
                self.shard(s)
                if not replaced:
                    members.append(s)
            except RelabelMapsError as exc:
                problems.append(Problem(name, str(exc)))
            except FileNotFoundError:
                problems.append(Problem(name, "cannot read the shard file: it is missing"))
            except OSError as exc:  # unreadable, or failed to download
                problems.append(Problem(name, f"cannot read the shard file: {exc}"))
            if progress is not None:
                progress(1)
        try:
            lookup = self._build_lookup(members)
            if len(members) == len(self._names):
                self._lookup = lookup
        except RelabelMapsError as exc:
            problems.append(Problem("", str(exc)))
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
        sources = [self._source(s) for s in range(len(self._names))]
        if not all(isinstance(s, (str, os.PathLike)) for s in sources):
            raise InvalidArgumentError("only datasets opened from paths can be pickled")
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        state["_resolve"] = None
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


def from_index(
    index: Mapping[str, Any], resolve: Callable[[str], Source], *, verify: bool = False, max_open: int = 64
) -> ShardedReader:
    """A :class:`ShardedReader` for a parsed index; ``resolve(file)`` gives a shard's source (a
    local path, or a file-object factory for remote storage) and is called only when that shard is
    first opened. Key ranges are used when every non-empty shard lists one."""
    entries = index["shards"]
    shards: list[tuple[str, Source | None, int]] = [(e["file"], None, e["records"]) for e in entries]
    sha = {e["file"]: e["sha256"] for e in entries if e.get("sha256")}
    listed: list[tuple[str, str] | None] = [
        (e["first_key"], e["last_key"]) if e.get("first_key") is not None else None for e in entries
    ]
    # an index without ranges (or with some missing): open every shard to look up
    complete = all(r is not None or e["records"] == 0 for r, e in zip(listed, entries, strict=True))
    return ShardedReader(
        shards, index["metadata"], verify=verify, max_open=max_open, sha256=sha,
        key_ranges=listed if complete else None, resolve=resolve,
    )


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
    index, files = folder_contents(folder)
    if index is not None:
        return open_index(index, verify=verify)
    shards = []
    ranges: list[tuple[str, str] | None] = []
    metadata: dict[str, Any] | None = None
    for f in files:
        with Reader(f) as r:
            if metadata is None:
                metadata = r.metadata
            elif _structure(r.metadata) != _structure(metadata):
                raise FormatError(f"{f.name} differs from {files[0].name} in num_classes/k/score_kind/encoding")
            shards.append((f.name, str(f), len(r)))
            ranges.append(r.key_range)
    assert metadata is not None
    return ShardedReader(shards, metadata, verify=verify, key_ranges=ranges)


def write_index(
    paths: Sequence[str | os.PathLike[str]], out_path: str | os.PathLike[str], *, sha256: bool = True
) -> dict[str, Any]:
    """Write (atomically) ``out_path`` = ``NAME.index.json`` for shard files ``paths`` (in order).

    Every shard must lie in the index's folder or below and share num_classes, k, score_kind and
    encoding; the index's ``metadata`` is the first shard's. Each non-empty shard's entry lists its
    smallest and largest key (``first_key``, ``last_key``). Returns the index object.
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
            elif _structure(r.metadata) != _structure(metadata):
                raise FormatError(f"{p.name} differs from the first shard in num_classes/k/score_kind/encoding")
            entry: dict[str, Any] = {"file": rel, "records": len(r), "bytes": p.stat().st_size}
            if r.key_range is not None:
                entry["first_key"], entry["last_key"] = r.key_range
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
