"""A dataset of shard files (``NAME-00001-of-00012.rlm`` + ``NAME.index.json``) as one mapping.

The index JSON lists every shard with its record count, so the dataset's length and positional
access (:meth:`ShardedReader.at`, via a cumulative sum + ``searchsorted``) need no shard to be
opened. When it also lists each shard's key range (``first_key``, ``last_key``), ``key in maps`` and
``maps[key]`` open only the shards whose range holds the key (usually one); otherwise key lookup
opens every shard's index on first use. A shard's source is resolved (e.g. downloaded) only when
the shard is first opened. At most ``max_open`` shard files are open at once (least recently used
ones are closed).

Across an overwrite (spec/FORMAT.md §12.1) a dataset opened from local files keeps reading the
generation it opened: the shard files it holds open stay readable (also in forked workers), and when
it must open a shard file after the index (or, without an index, that shard file) was replaced it
raises :class:`DatasetReplacedError` instead of reading the other generation's records.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import format as fmt
from .errors import DatasetReplacedError, FormatError, InvalidArgumentError, MissingKeyError, RelabelMapsError
from .keys import KeyRanges, as_key, merge_keys, missing_key_message
from .labelmap import LabelMap
from .layout import INDEX_SUFFIX, MAX_INDEX_JSON_BYTES, STRUCTURAL_KEYS, folder_contents, read_index_json
from .layout import shard_structure as _structure
from .publish import Unchanged, sha256_file, stamp, write_index
from .reader import LabelMaps, Problem, Reader, Source

__all__ = [
    "ShardedReader",
    "Unchanged",
    "folder_contents",
    "from_index",
    "open_folder",
    "open_index",
    "write_index",
    "read_index_json",
    "INDEX_SUFFIX",
    "STRUCTURAL_KEYS",
]

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
        self._checked: set[int] = set()
        self._set_ranges(key_ranges)

    def _set_ranges(self, key_ranges: Sequence[tuple[str, str] | None] | None) -> None:
        """Keep the key ranges as key blobs (:class:`KeyRanges`, no object per shard)."""
        self._ranges: KeyRanges | None = None
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
        self._ranges = KeyRanges(ranges)

    @property
    def _disjoint(self) -> bool:
        """Whether the key ranges are disjoint and in dataset order (a key is looked up by bisection)."""
        return self._ranges is not None and self._ranges.disjoint

    def _key_ranges(self) -> KeyRanges:
        """The shards' key ranges; when the index lists none, read from every shard (opened once)."""
        if self._ranges is None:
            self._set_ranges([self.shard(s).key_range for s in range(len(self._names))])
        assert self._ranges is not None
        return self._ranges

    def _shard_keys(self, s: int, chunk: int) -> Iterator[str]:
        """Shard ``s``'s keys in order, ``chunk`` at a time (the shard is reopened if it was closed)."""
        for start in range(0, self._counts[s], chunk):
            yield from self.shard(s).key_slice(start, start + chunk)

    def _keys_of(self, shards: Sequence[int], merge: bool = False) -> Iterator[str]:
        """The keys of ``shards`` in key order; :class:`FormatError` on a key held by two of them.
        Unless ``merge``, disjoint key ranges (in dataset order) are trusted: shard after shard."""
        if not merge and self._key_ranges().disjoint:
            return itertools.chain.from_iterable(self._shard_keys(s, 1 << 14) for s in shards)
        chunk = max(64, (1 << 16) // max(1, len(shards)))
        return merge_keys([self._shard_keys(s, chunk) for s in shards], [self._names[s] for s in shards])

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
        r = self._open_reader(s)
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

    #: checks that the local files the dataset was opened from are unchanged (set by the openers)
    _unchanged: Unchanged | None = None

    def _open_reader(self, s: int) -> Reader:
        """Open shard ``s``'s file; :class:`DatasetReplacedError` instead when the dataset was replaced
        on disk since it was opened (the file may then hold another generation's records)."""
        src = self._source(s)
        path = os.fspath(src) if isinstance(src, (str, os.PathLike)) else None
        try:
            r = Reader(src, verify=self._verify)
        except FileNotFoundError:
            if self._unchanged is not None and path is not None:
                self._unchanged(path)
            raise
        try:
            if self._unchanged is not None and path is not None:
                self._unchanged(path)  # after opening: a name is reused only once the index changed
        except BaseException:
            r.close()
            raise
        return r

    def _missing(self, s: int) -> str:
        """Why shard ``s``'s file is missing: the dataset was replaced since it was opened, or not."""
        src = self._sources[s]
        if self._unchanged is not None and isinstance(src, (str, os.PathLike)):
            try:
                self._unchanged(os.fspath(src))
            except DatasetReplacedError as exc:
                return str(exc)
        return "cannot read the shard file: it is missing"

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

    def _find(self, key: object) -> tuple[int, int] | None:
        """``(shard, position in the shard)`` of ``key`` (a ``str`` or an ``os.PathLike``), or ``None``."""
        if not isinstance(key, str):  # keys are strings
            if not isinstance(key, os.PathLike):
                return None
            key = as_key(key)
        found = None
        for s in self._key_ranges().candidates(key):  # disjoint ranges: at most one; else every
            j = self.shard(s).position_of(key)  # candidate, so that a key held twice is still rejected
            if j is not None:
                if found is not None:
                    raise FormatError(f"key {key!r} appears in more than one shard ({self._names[s]})")
                found = s, j
        return found

    def __iter__(self) -> Iterator[str]:
        return self._keys_of([s for s, count in enumerate(self._counts) if count])

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not None

    def _where(self, key: str) -> tuple[int, int]:
        key = as_key(key)
        found = self._find(key)
        if found is None:
            raise MissingKeyError(missing_key_message(key, "the dataset", self.near(key)))
        return found

    def near(self, key: str) -> list[str]:
        """Keys near where ``key`` would sit: around it in the shards whose range holds it (opened by
        the lookup already), else the edges of the ranges beside it (the "did you mean" of a missing key)."""
        ranges = self._key_ranges()
        return [k for s in ranges.candidates(key) for k in self.shard(s).near(key)] + ranges.edges_near(key)

    def __getitem__(self, key: str | os.PathLike[str]) -> LabelMap:
        key = as_key(key)  # TypeError for a key that is neither str nor path
        only = self._key_ranges().candidates(key)
        if len(only) == 1:  # one shard may hold it: its reader looks the key up once
            try:
                return self.shard(only[0])[key]
            except MissingKeyError:
                raise MissingKeyError(missing_key_message(key, "the dataset", self.near(key))) from None
        return self.shard(self._where(key)[0])[key]

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
                replaced = bool(expected) and isinstance(src, (str, os.PathLike)) and sha256_file(src) != expected
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
                problems.append(Problem(name, self._missing(s)))
            except OSError as exc:  # unreadable, or failed to download
                problems.append(Problem(name, f"cannot read the shard file: {exc}"))
            if progress is not None:
                progress(1)
        try:
            for _ in self._keys_of(members, merge=True):  # no key held by two shards
                pass
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
    with open(p, "rb") as fh:  # read once: its stamp and text come from the same file
        st = os.fstat(fh.fileno())
        if st.st_size > MAX_INDEX_JSON_BYTES:
            raise FormatError(f"{p} is too large for a shard index")
        data = fh.read(MAX_INDEX_JSON_BYTES + 1)
    index = read_index_json(data)
    folder = p.parent
    maps = from_index(index, lambda f: str(folder / f), verify=verify)
    maps._unchanged = Unchanged((str(p), stamp(st)), {})
    return maps


def open_folder(path: str | os.PathLike[str], *, verify: bool = False) -> LabelMaps:
    """Open a folder: its single ``*.index.json``, or else its ``.rlm`` files when they are one
    complete set or loose files (:func:`relabel_maps.layout.folder_contents`)."""
    folder = Path(path)
    index, files = folder_contents(folder)
    if index is not None:
        return open_index(index, verify=verify)
    shards = []
    ranges: list[tuple[str, str] | None] = []
    stamps = {}
    metadata: dict[str, Any] | None = None
    for f in files:
        try:
            before = stamp(f.stat())
            r = Reader(f)
        except FileNotFoundError:
            raise DatasetReplacedError(f"{f} was deleted while {folder} was being opened") from None
        with r:
            if metadata is None:
                metadata = r.metadata
            elif _structure(r.metadata) != _structure(metadata):
                raise FormatError(f"{f.name} differs from {files[0].name} in num_classes/k/score_kind/encoding")
            shards.append((f.name, str(f), len(r)))
            ranges.append(r.key_range)
        stamps[str(f)] = before
        Unchanged(None, {str(f): before})(str(f))  # not replaced while it was read
    assert metadata is not None
    maps = ShardedReader(shards, metadata, verify=verify, key_ranges=ranges)
    maps._unchanged = Unchanged(None, stamps)
    return maps
