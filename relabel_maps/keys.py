"""Sorted keys without a Python object per key.

A file's index stores its keys sorted by UTF-8 bytes as one blob plus a span per key (spec/FORMAT.md,
"Index"). Readers keep them that way: a lookup hashes the key asked for (CRC-32) and bisects a
sorted array of the keys' hashes, then compares the stored bytes; a ``str`` exists only for a key
handed out. A ``str`` or ``dict`` entry per key would cost ≈ 100-260 bytes each, and forked
worker processes would copy the pages holding them as soon as they read them (reference counts
live next to the data); the flat arrays here are never written after they are built, so forked
workers share them.

- :func:`check_sorted` checks a blob of keys (valid UTF-8, strictly increasing) with whole-array
  operations; :func:`key_hashes` hashes every key of a blob.
- :class:`HashIndex`: key bytes -> candidate positions, 8 bytes per key.
- :class:`KeyList`: a few keys (e.g. the first keys of a dataset's shards) as a blob.
- :class:`KeyRanges`: the ``(first, last)`` key range of every shard; which shards may hold a key.
- :func:`merge_keys`: keys of several sorted sources in one sorted stream, refusing a key twice.
- :func:`as_key`: what a lookup accepts (``str``, or an ``os.PathLike`` path); :func:`insertion_point`
  and :func:`missing_key_message`: the "did you mean" of a missing key, from the few keys next to
  where it would sit (computed only when the error is raised).
"""

from __future__ import annotations

import difflib
import heapq
import os
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import FormatError

__all__ = ["HashIndex", "KeyList", "KeyRanges", "as_key", "check_sorted", "insertion_point", "key_hashes",
           "merge_keys", "missing_key_message"]

_CRC_TABLE = np.array(
    [zlib.crc32(bytes([i])) ^ zlib.crc32(b"\0") for i in range(256)], dtype=np.uint32
)  # the reflected CRC-32 table: crc = table[(crc ^ byte) & 255] ^ (crc >> 8)
_LONG = 256  # keys longer than this are hashed one by one (the vectorised loop runs once per byte)


def _spans(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def key_hashes(blob: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``zlib.crc32`` of every key ``blob[starts[i]:starts[i] + lengths[i]]``, as uint32: one
    vectorised step per byte position over the keys at least that long."""
    starts, lengths = _spans(starts, lengths)
    data = np.frombuffer(blob, dtype=np.uint8)
    out = np.empty(len(starts), dtype=np.uint32)
    long = lengths > _LONG
    for i in np.flatnonzero(long).tolist():
        out[i] = zlib.crc32(blob[starts[i] : starts[i] + lengths[i]])
    short = np.flatnonzero(~long)
    order = short[np.argsort(-lengths[short], kind="stable")]  # longest first: the keys still going are a prefix
    at, size = starts[order], lengths[order]
    crc = np.full(len(order), 0xFFFFFFFF, dtype=np.uint32)
    going = np.searchsorted(-size, -np.arange(int(size[0]) if len(size) else 0), side="left")  # keys longer than j
    for j, n in enumerate(going.tolist()):
        c = crc[:n]
        crc[:n] = _CRC_TABLE[(c ^ data[at[:n] + j]) & 0xFF] ^ (c >> 8)
    out[order] = crc ^ 0xFFFFFFFF
    return out


#: _MASKS[j] keeps the first j bytes of a big-endian 8-byte word
_MASKS = np.array([((1 << 8 * j) - 1) << 8 * (8 - j) for j in range(9)], dtype=np.uint64)


def _words(words: np.ndarray, at: np.ndarray, left: np.ndarray) -> np.ndarray:
    """The 8 bytes at ``at`` as big-endian integers, bytes past ``left`` zeroed (``words``: the
    8-byte word starting at every byte of the blob)."""
    return words[at] & _MASKS[np.minimum(left, 8)]


def check_sorted(blob: bytes, starts: np.ndarray, lengths: np.ndarray) -> None:
    """:class:`FormatError` unless every key is valid UTF-8 and the keys strictly increase
    (compared as bytes, 8 at a time over the pairs not yet decided)."""
    starts, lengths = _spans(starts, lengths)
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("an index key is not valid UTF-8") from None
    data = np.frombuffer(blob, dtype=np.uint8)
    if bool(((data[starts[lengths > 0]] & 0xC0) == 0x80).any()):  # a key starting inside a character
        raise FormatError("an index key is not valid UTF-8")
    words = np.ndarray((len(blob) + 1,), dtype=">u8", buffer=blob + bytes(8), strides=(1,))  # overlapping
    pairs, depth = np.arange(len(starts) - 1), 0
    while len(pairs):
        left_a, left_b = lengths[pairs] - depth, lengths[pairs + 1] - depth
        a = _words(words, starts[pairs] + depth, left_a)
        b = _words(words, starts[pairs + 1] + depth, left_b)
        same = a == b
        ended = same & ((left_a <= 8) | (left_b <= 8))  # equal so far and one key ends here
        if bool((a > b).any()) or bool((ended & (left_a > left_b)).any()):
            raise FormatError("index keys are not sorted by UTF-8 bytes")
        if bool((ended & (left_a == left_b)).any()):
            raise FormatError("duplicate key in index")
        pairs, depth = pairs[same & ~ended], depth + 8


class HashIndex:
    """Positions of keys by their CRC-32: the sorted hashes and the position of each (8 bytes per
    key, in :mod:`array` buffers that forked processes share). :meth:`candidates` may return a
    position whose key merely shares the hash: the caller compares the key."""

    __slots__ = ("_hashes", "_positions")

    def __init__(self, hashes: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        self._hashes = array("I", np.ascontiguousarray(hashes[order], dtype=np.uint32).tobytes())
        self._positions = array("I", order.astype(np.uint32).tobytes())

    def candidates(self, key: bytes) -> list[int]:
        """Positions whose key hashes like ``key`` (usually one, or none)."""
        h, hashes = zlib.crc32(key), self._hashes
        i = j = bisect_left(hashes, h)
        while j < len(hashes) and hashes[j] == h:
            j += 1
        return self._positions[i:j].tolist()

    @property
    def nbytes(self) -> int:
        return (len(self._hashes) + len(self._positions)) * 4


class KeyList(Sequence[str]):
    """Keys as one UTF-8 blob and an :mod:`array` of offsets (no object per key)."""

    __slots__ = ("_blob", "_ends")

    def __init__(self, keys: Iterable[str]) -> None:
        encoded = [k.encode("utf-8") for k in keys]
        self._blob = b"".join(encoded)
        self._ends = array("q", np.cumsum([0] + [len(k) for k in encoded], dtype=np.int64).tobytes())

    def __len__(self) -> int:
        return len(self._ends) - 1

    def raw(self, i: int) -> bytes:
        """Key ``i`` as UTF-8 bytes."""
        return self._blob[self._ends[i] : self._ends[i + 1]]

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.raw(i % len(self)).decode("utf-8")


class KeyRanges:
    """The ``(first key, last key)`` of every shard (``None`` for an empty one), as two key blobs.

    ``ranges[s]`` gives shard ``s``'s range back; :meth:`candidates` lists the shards whose range
    may hold a key. Every range key starts with the ranges' common prefix (``train/n0`` ...); the
    8 bytes after it, as an integer per range key, order the ranges: a key is placed by bisection
    of these integers when the ranges are disjoint and in order (:attr:`disjoint`), else compared
    with every range's at once, and then with the few candidates' keys."""

    def __init__(self, ranges: Sequence[tuple[str, str] | None]) -> None:
        held = [s for s, r in enumerate(ranges) if r is not None]
        self._count = len(ranges)
        self._shards = array("q", held)
        self._slot = array("q", [-1] * len(ranges))
        for i, s in enumerate(held):
            self._slot[s] = i
        self._firsts = KeyList(r[0] for r in ranges if r is not None)
        self._lasts = KeyList(r[1] for r in ranges if r is not None)
        n = len(held)
        edges = [keys.raw(i) for keys in (self._firsts, self._lasts) for i in range(n)]
        self._common = edges[0][: len(os.path.commonprefix(edges))] if edges else b""
        self._low = array("Q", [self._word(self._firsts.raw(i)) for i in range(n)])
        self._high = array("Q", [self._word(self._lasts.raw(i)) for i in range(n)])
        self.disjoint = all(self._lasts.raw(i) < self._firsts.raw(i + 1) for i in range(n - 1))

    def _word(self, key: bytes) -> int:
        """The 8 bytes of ``key`` after the common prefix (zero-padded) as a big-endian integer: keys
        in byte order have non-decreasing words."""
        c = len(self._common)
        return int.from_bytes(key[c : c + 8].ljust(8, b"\0"), "big")

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, s: int) -> tuple[str, str] | None:
        i = self._slot[s]
        return None if i < 0 else (self._firsts[i], self._lasts[i])

    def candidates(self, key: str) -> list[int]:
        """Shards (in dataset order) whose range holds ``key`` (code-point order = UTF-8 byte order)."""
        try:
            kb = key.encode("utf-8")
        except UnicodeEncodeError:  # no stored key holds a lone surrogate
            return []
        if not kb.startswith(self._common):  # before or after every range
            return []
        w = self._word(kb)
        if self.disjoint:  # the last range whose first key is <= key
            i = bisect_right(self._low, w) - 1
            while i >= 0 and self._firsts.raw(i) > kb:  # words tie: compare the keys
                i -= 1
            return [self._shards[i]] if i >= 0 and kb <= self._lasts.raw(i) else []
        low, high = np.frombuffer(self._low, dtype=np.uint64), np.frombuffer(self._high, dtype=np.uint64)
        near = np.flatnonzero((low <= w) & (w <= high)).tolist()
        return [self._shards[i] for i in near if self._firsts.raw(i) <= kb <= self._lasts.raw(i)]

    def edges_near(self, key: str) -> list[str]:
        """The first and last keys of the (disjoint) ranges on either side of ``key``."""
        if not self.disjoint or not len(self._firsts):
            return []
        i = bisect_right(self._firsts, key)  # the ranges are in order: their first keys are sorted
        around = range(max(0, i - 1), min(len(self._firsts), i + 1))
        return [keys[j] for j in around for keys in (self._firsts, self._lasts)]


def merge_keys(sources: Sequence[Iterable[str]], where: Sequence[str]) -> Iterator[str]:
    """The keys of several sorted ``sources`` as one sorted stream; :class:`FormatError` naming
    ``where[i]`` when source ``i`` holds a key already seen."""
    last: str | None = None
    for key, i in heapq.merge(*(_tagged(src, i) for i, src in enumerate(sources))):
        if key == last:
            raise FormatError(f"key {key!r} appears in more than one shard ({where[i]})")
        last = key
        yield key


def _tagged(keys: Iterable[str], i: int) -> Iterator[tuple[str, int]]:
    return ((key, i) for key in keys)


def as_key(key: object) -> str:
    """``key`` as a stored key: a ``str`` as it is, an ``os.PathLike`` as its path with ``/``
    separators; :class:`TypeError` for anything else (keys are never numbers)."""
    if isinstance(key, str):
        return key
    if isinstance(key, os.PathLike):
        path = os.fspath(key)
        if isinstance(path, str):
            return path if os.sep == "/" else path.replace(os.sep, "/")
    raise TypeError(f"label-map keys are str (or os.PathLike paths), got {type(key).__name__} {key!r}")


def insertion_point(count: int, key: bytes, key_at: Callable[[int], bytes]) -> int:
    """Where ``key`` would sit among ``count`` keys in byte order (``key_at(i)``: key ``i``'s bytes)."""
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi) // 2
        if key_at(mid) < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def missing_key_message(key: str, where: str, near: Iterable[str]) -> str:
    """"key ... not found in WHERE", with up to three close keys among ``near`` (difflib) as a hint."""
    close = difflib.get_close_matches(key, list(dict.fromkeys(near)), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return f"key {key!r} not found in {where}{hint}"
