"""Read one label-map file (spec/FORMAT.md) as a lazy, read-only mapping of key -> :class:`LabelMap`.

The header, trailer and footer (metadata, dictionary, index) are read and checked once when the
file is opened -- two small reads plus one read of the footer. A record is read and decoded only
when accessed. Works on a path (memory-mapped) or on any seekable binary file object (see
:mod:`relabel_maps.source`); a reader used in a forked child process reopens its file on first use
(a file object that can be neither reopened nor read positionally is refused there). Records are
decoded and checked by :mod:`relabel_maps.records`.

Keys are never held as Python objects (:mod:`relabel_maps.keys`): a file read by position (mapped,
or an OS file read with ``pread``) keeps its index on file -- a lookup reads one index row and one
key -- and any other source keeps the index bytes as one object; a key is found through an
8-byte-per-key hash index built on the first lookup, which forked workers share.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np

from . import format as fmt
from .codecs import codec_from_metadata
from .dictionary import ZSTD_DICT_MAGIC, check_dictionary
from .errors import CorruptRecordError, FormatError, InvalidArgumentError, MissingKeyError, RelabelMapsError
from .keys import HashIndex, as_key, insertion_point, key_hashes, missing_key_message
from .labelmap import LabelMap
from .records import RecordDecoder, check_decoded
from .source import ByteSource, Source

__all__ = [
    "LabelMaps",
    "Reader",
    "Problem",
    "Source",
    "RecordDecoder",
    "check_decoded",
    "open_file",
    "ZSTD_DICT_MAGIC",
]

_Self = TypeVar("_Self", bound="LabelMaps")
#: one index row: record offset, record length, record CRC32, key offset, key length (fmt.INDEX_DTYPE)
_ROW = struct.Struct("<QIIII")
assert _ROW.size == fmt.INDEX_ROW_SIZE
#: index rows read at a time when iterating or checking
_CHUNK = 16384
Row = tuple[int, int, int, int, int]


class Problem(NamedTuple):
    """One finding of :meth:`LabelMaps.check`."""

    #: the shard file it concerns ("" for the file, or the dataset as a whole)
    where: str
    #: what is wrong
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class LabelMaps(Mapping[str, LabelMap]):
    """Read-only ``Mapping[str, LabelMap]`` over a file or a dataset of shards; a context manager.

    Iteration yields keys in UTF-8 byte order; :meth:`at` addresses records by position.
    """

    metadata: dict[str, Any]

    def at(self, i: int) -> tuple[str, LabelMap]:  # pragma: no cover - abstract
        raise NotImplementedError

    def record_nbytes(self, key: str) -> int:  # pragma: no cover - abstract
        """Stored size of record ``key`` in bytes (record header + compressed frame)."""
        raise NotImplementedError

    def read_record(self, key: str) -> bytes:  # pragma: no cover - abstract
        """Stored bytes (record header + zstd frame) of record ``key``."""
        raise NotImplementedError

    def check(self, progress: Callable[[int], None] | None = None) -> list[Problem]:  # pragma: no cover - abstract
        """Every problem found by a full check (see :meth:`verify`); ``progress(1)`` after each file."""
        raise NotImplementedError

    def verify(self, strict: bool = False) -> list[str]:
        """Check every record (CRC32, decoding, full label-map validation, score order) and the layout.

        Returns the problems found as text (empty when sound); ``strict=True`` raises the first one
        as :class:`CorruptRecordError` instead. :meth:`check` gives them with the file they concern.
        """
        problems = [str(p) for p in self.check()]
        if strict and problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CorruptRecordError(self._describe(problems[0]) + more)
        return problems

    def _describe(self, problem: str) -> str:
        """``problem`` as the message of :meth:`verify`'s error."""
        return problem

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _position(self, i: int) -> int:
        n = len(self)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise InvalidArgumentError(f"position must be an integer, got {type(i).__name__}")
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise InvalidArgumentError(f"position {i} out of range for {n} records")
        return j


class Reader(LabelMaps):
    """One ``.rlm`` file as a lazy mapping.

    Args:
        source: a path, a seekable binary file object, or a zero-argument callable returning one
            (used again to reopen the file in a forked child).
        verify: check every record's CRC32 when it is read (``verify()`` checks all of them).
    """

    def __init__(self, source: Source, *, verify: bool = False, limits: fmt.Limits = fmt.LIMITS) -> None:
        self._src: ByteSource | None = None
        self._limits = limits
        self._verify_reads = bool(verify)
        self._hashes: HashIndex | None = None
        self._hit: tuple[object, tuple[int, Row] | None] = (None, None)  # the last key found
        src = ByteSource(source)
        self._src = src
        try:
            self._load_footer()
        except BaseException:
            src.close()
            raise

    # -------------------------------------------------------------------------- opening
    def _load_footer(self) -> None:
        src, lim = self._src, self._limits
        assert src is not None
        size = src.size
        if size < fmt.HEADER_SIZE + fmt.TRAILER_SIZE:
            fmt.parse_header(src.read(0, fmt.HEADER_SIZE))  # bad magic / version first
            raise FormatError(f"truncated file: {size} bytes, smaller than header + trailer")
        self.version = fmt.parse_header(src.read(0, fmt.HEADER_SIZE))
        t = fmt.parse_trailer(src.read(size - fmt.TRAILER_SIZE, fmt.TRAILER_SIZE), size, lim)
        if (t.major, t.minor) != self.version:
            raise FormatError(f"trailer version {t.major}.{t.minor} differs from header {self.version}")
        footer = src.read(t.footer_offset, t.footer_length)
        if len(footer) != t.footer_length:
            raise FormatError("truncated footer")
        mv = memoryview(footer)
        meta_b = mv[: t.metadata_length]
        dict_b = mv[t.metadata_length : t.metadata_length + t.dictionary_length]
        index_b = mv[t.metadata_length + t.dictionary_length :]
        if fmt.crc32(meta_b) != t.metadata_crc32:
            raise FormatError("metadata CRC32 mismatch")
        if fmt.crc32(dict_b) != t.dictionary_crc32:
            raise FormatError("dictionary CRC32 mismatch")
        if fmt.crc32(index_b) != t.index_crc32:
            raise FormatError("index CRC32 mismatch")
        meta = fmt.parse_metadata(bytes(meta_b))
        self.trailer = t
        self.metadata = meta
        self.num_classes = int(meta["num_classes"])
        self.k = int(meta["k"])
        self.score_kind = str(meta["score_kind"])
        try:
            self.codec = codec_from_metadata(meta["encoding"])
        except Exception as exc:  # unknown name, or parameters the codec refuses
            raise FormatError(f"unsupported record encoding {meta['encoding']!r}: {exc}") from None
        has_dict = meta["compression"].get("dictionary", False)
        if has_dict != (t.dictionary_length > 0):
            raise FormatError("metadata compression.dictionary disagrees with the dictionary section")
        self._dict_bytes = bytes(dict_b)
        check_dictionary(self._dict_bytes)
        rows, blob = fmt.parse_index(index_b, t.record_count, t.footer_offset, lim)
        fmt.check_keys(rows, blob)
        self._count = t.record_count
        self._index_at = t.footer_offset + t.metadata_length + t.dictionary_length  # in the file
        self._blob_at = t.record_count * fmt.INDEX_ROW_SIZE  # in the index
        # a file read by position (mapped or ``pread``) keeps its index on file; any other source, in one bytes object
        self._index_mem = None if src.positional else bytes(index_b)
        spans = [(int(rows["key_offset"][i]), int(rows["key_length"][i])) for i in (0, -1)] if len(rows) else []
        first_last = [blob[a : a + n].decode("utf-8") for a, n in spans]
        self._range = (first_last[0], first_last[1]) if first_last else None
        self._pid = os.getpid()
        self._decoder = RecordDecoder(
            num_classes=self.num_classes, k=self.k, score_kind=self.score_kind, codec=self.codec,
            dictionary=self._dict_bytes, metadata=meta, limits=lim,
        )

    # -------------------------------------------------------------------------- index
    def _source(self) -> ByteSource:
        """The open source, reopened first in a forked child (with fresh decompressors)."""
        src = self._src
        if src is None:
            raise InvalidArgumentError("reader is closed")
        if self._pid != os.getpid():
            src.check_fork()
            self._decoder.reset()
            self._pid = os.getpid()
        return src

    def _index_read(self, pos: int, n: int) -> bytes:
        """``n`` bytes at ``pos`` of the index (rows, then the key blob)."""
        mem = self._index_mem
        if mem is not None:
            return mem[pos : pos + n]
        data = self._source().read(self._index_at + pos, n)
        if len(data) != n:
            raise FormatError(f"{self.name}: the index is truncated")
        return data

    def _row(self, i: int) -> Row:
        """Index row ``i``: ``(offset, nbytes, crc32, key offset, key length)``."""
        return _ROW.unpack(self._index_read(i * fmt.INDEX_ROW_SIZE, fmt.INDEX_ROW_SIZE))

    def _key_of(self, row: Row) -> bytes:
        return self._index_read(self._blob_at + row[3], row[4])

    def _rows(self, start: int, stop: int) -> tuple[np.ndarray, bytes]:
        """Index rows ``start .. stop - 1`` and their keys' bytes (``key_offset`` relative to the blob)."""
        rows = np.frombuffer(self._index_read(start * fmt.INDEX_ROW_SIZE, (stop - start) * fmt.INDEX_ROW_SIZE),
                             dtype=fmt.INDEX_DTYPE)
        a = int(rows["key_offset"][0]) if len(rows) else 0
        b = int(rows["key_offset"][-1]) + int(rows["key_length"][-1]) if len(rows) else 0
        return rows, (b"" if a == b else self._index_read(self._blob_at + a, b - a))

    def key_slice(self, start: int, stop: int) -> list[str]:
        """Keys ``start .. stop - 1`` in key order (``0 <= start``; ``stop`` may pass the end)."""
        rows, blob = self._rows(start, min(stop, self._count))
        if not len(rows):
            return []
        cuts = (rows["key_offset"] - rows["key_offset"][0]).tolist()
        return [blob[a : a + n].decode("utf-8") for a, n in zip(cuts, rows["key_length"].tolist(), strict=True)]

    def _hash_index(self) -> HashIndex:
        """The hash index of the keys, built on first use (8 bytes per key)."""
        index = self._hashes
        if index is None:
            rows, blob = self._rows(0, self._count)  # the blob of every key starts at key offset 0
            index = self._hashes = HashIndex(key_hashes(blob, rows["key_offset"], rows["key_length"]))
        return index

    def _lookup(self, key: object) -> tuple[int, Row] | None:
        """``(position, index row)`` of ``key`` (a ``str`` or an ``os.PathLike``), or ``None``."""
        if not isinstance(key, str):
            if not isinstance(key, os.PathLike):
                return None
            key = as_key(key)
        if not self._count:
            return None
        hit = self._hit
        if hit[0] == key:  # e.g. a dataset's lookup, then the record of that key
            return hit[1]
        try:
            kb = key.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: never a stored key
            return None
        for i in self._hash_index().candidates(kb):
            row = self._row(i)
            if self._key_of(row) == kb:
                self._hit = (key, (i, row))
                return i, row
        return None

    def _find(self, key: str | int) -> tuple[str, Row]:
        """``(key, index row)`` of key ``key`` or of position ``key``; :class:`MissingKeyError` when absent."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            row = self._row(self._position(key))
            return self._key_of(row).decode("utf-8"), row
        key = as_key(key)
        found = self._lookup(key)
        if found is None:
            raise MissingKeyError(missing_key_message(key, self.name, self.near(key)))
        return key, found[1]

    # -------------------------------------------------------------------------- mapping API
    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for start in range(0, self._count, _CHUNK):
            yield from self.key_slice(start, start + _CHUNK)

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not None

    def position_of(self, key: object) -> int | None:
        """Position of ``key`` in key order (as :meth:`at` takes it), or ``None`` when absent."""
        found = self._lookup(key)
        return None if found is None else found[0]

    def __getitem__(self, key: str | os.PathLike[str]) -> LabelMap:
        return self._record(*self._find(as_key(key)))  # TypeError for a key that is neither str nor path

    def near(self, key: str, width: int = 8) -> list[str]:
        """The keys around where ``key`` would sit in key order (the "did you mean" of a missing key)."""
        kb = key.encode("utf-8", "surrogatepass")
        i = insertion_point(self._count, kb, lambda j: self._key_of(self._row(j)))
        return self.key_slice(max(0, i - width), i + width)

    def at(self, i: int) -> tuple[str, LabelMap]:
        """``(key, LabelMap)`` of the ``i``-th record in key order."""
        key, row = self._find(self._position(i))
        return key, self._record(key, row)

    def key_at(self, i: int) -> str:
        """The ``i``-th key in key order."""
        return self._find(self._position(i))[0]

    @property
    def key_range(self) -> tuple[str, str] | None:
        """``(first key, last key)`` in key order, or ``None`` for a file without records."""
        return self._range

    def record_nbytes(self, key: str | int) -> int:
        """Stored size in bytes (record header + compressed frame) of record ``key``, or of the
        ``key``-th record in key order when ``key`` is an ``int``."""
        return self._find(key)[1][1]

    def record_offset(self, key: str | int) -> int:
        """Where record ``key`` (or the ``key``-th record in key order) starts in the file."""
        return self._find(key)[1][0]

    @property
    def name(self) -> str:
        """The file's path or file object's name (for messages)."""
        return str(self._src.name) if self._src is not None else "<closed>"

    @property
    def path(self) -> str | None:
        """The file's path when it was opened from one (``None`` once closed)."""
        return self._src.path if self._src is not None else None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._src is None

    @property
    def dictionary(self) -> bytes:
        """The embedded zstd dictionary (empty when none)."""
        return self._dict_bytes

    # -------------------------------------------------------------------------- records
    def read_record(self, key: str | int) -> bytes:
        """Stored bytes (record header + zstd frame) of record ``key``, or of the ``key``-th record
        in key order when ``key`` is an ``int``. The frame uses this file's :attr:`dictionary`."""
        name, row = self._find(key)
        rec = self._read(name, row)
        if self._verify_reads:
            self._check_crc(name, row, rec)
        return rec

    def _read(self, key: str, row: Row) -> bytes:
        rec = self._source().read(row[0], row[1])
        if len(rec) != row[1]:
            raise CorruptRecordError(f"record of {key!r} is truncated")
        return rec

    def _check_crc(self, key: str, row: Row, rec: bytes) -> None:
        if fmt.crc32(rec) != row[2]:
            raise CorruptRecordError(f"CRC32 mismatch in record {key!r}")

    def _record(self, key: str, row: Row) -> LabelMap:
        rec = self._read(key, row)
        if self._verify_reads:
            self._check_crc(key, row, rec)
        return self._decoder.decode(rec, key)

    # -------------------------------------------------------------------------- integrity
    def check(self, progress: Callable[[int], None] | None = None) -> list[Problem]:
        """Every problem of the file (see :meth:`verify`); ``progress(1)`` once it is checked."""
        problems: list[str] = []
        rows, _ = self._rows(0, self._count)
        order = np.argsort(rows["offset"], kind="stable")
        start, size = rows["offset"][order].astype(np.int64), rows["nbytes"][order].astype(np.int64)
        expected = np.concatenate(([fmt.HEADER_SIZE], (start + size)[:-1]))
        for j in np.flatnonzero(start != expected).tolist():
            key = self._key_of(self._row(int(order[j]))).decode("utf-8")
            problems.append(f"gap or reordering before record {key!r} at offset {int(start[j])}")
        end = int(start[-1] + size[-1]) if len(start) else fmt.HEADER_SIZE
        if end != self.trailer.footer_offset:
            problems.append(f"records area ends at {end}, footer starts at {self.trailer.footer_offset}")
        del rows, order, start, size, expected
        for first in range(0, self._count, _CHUNK):
            for i, key in enumerate(self.key_slice(first, first + _CHUNK), start=first):
                try:
                    row = self._row(i)
                    rec = self._read(key, row)
                    self._check_crc(key, row, rec)
                    check_decoded(self._decoder.decode(rec, key))
                except RelabelMapsError as exc:
                    problems.append(str(exc))
        if progress is not None:
            progress(1)
        return [Problem("", p) for p in problems]

    def _describe(self, problem: str) -> str:
        return f"{self.name}: {problem}"

    def close(self) -> None:
        src, self._src = getattr(self, "_src", None), None
        if src is not None:
            src.close()

    def __reduce__(self) -> tuple[Any, ...]:
        path = self.path
        if path is None:
            raise InvalidArgumentError("only readers opened from a path can be pickled")
        return (_reopen, (path, self._verify_reads))

    def __repr__(self) -> str:
        return f"Reader({self.name!r}, records={len(self)}, k={self.k}, num_classes={self.num_classes})"


def _reopen(path: str, verify: bool) -> Reader:
    return Reader(path, verify=verify)


def open_file(source: Source, *, verify: bool = False) -> Reader:
    """Open one ``.rlm`` file (path, file object, or file-object factory)."""
    return Reader(source, verify=verify)
