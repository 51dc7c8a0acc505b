"""Read one label-map file (spec/FORMAT.md) as a lazy, read-only mapping of key -> :class:`LabelMap`.

The header, trailer and footer (metadata, dictionary, index) are read and checked once when the
file is opened -- two small reads plus one read of the footer. A record is read and decoded only
when accessed. Works on a path (memory-mapped) or on any seekable binary file object (see
:mod:`relabel_maps.source`); a reader used in a forked child process reopens its file on first use
(a file object that can be neither reopened nor read positionally is refused there). Records are
decoded and checked by :mod:`relabel_maps.records`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np

from . import format as fmt
from .codecs import codec_from_metadata
from .dictionary import ZSTD_DICT_MAGIC, check_dictionary
from .errors import CorruptRecordError, FormatError, InvalidArgumentError, MissingKeyError, RelabelMapsError
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
        self._lookup: dict[str, int] | None = None
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
        self._keys = fmt.decode_keys(rows, blob)
        self._offsets: list[int] = rows["offset"].tolist()
        self._nbytes: list[int] = rows["nbytes"].tolist()
        self._crcs: list[int] = rows["crc32"].tolist()
        self._pid = os.getpid()
        self._decoder = RecordDecoder(
            num_classes=self.num_classes, k=self.k, score_kind=self.score_kind, codec=self.codec,
            dictionary=self._dict_bytes, metadata=meta, limits=lim,
        )

    # -------------------------------------------------------------------------- mapping API
    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def _index(self) -> dict[str, int]:
        if self._lookup is None:
            self._lookup = {key: i for i, key in enumerate(self._keys)}
        return self._lookup

    def __contains__(self, key: object) -> bool:
        try:
            return key in (self._lookup if self._lookup is not None else self._index())
        except TypeError:  # unhashable
            return False

    def position_of(self, key: object) -> int | None:
        """Position of ``key`` in key order (as :meth:`at` takes it), or ``None`` when absent."""
        if not isinstance(key, str):
            return None
        return (self._lookup if self._lookup is not None else self._index()).get(key)

    def _find(self, key: str) -> int:
        """Position of ``key`` in key order; :class:`MissingKeyError` when absent."""
        try:
            return (self._lookup if self._lookup is not None else self._index())[key]
        except (KeyError, TypeError):
            raise MissingKeyError(f"key {key!r} not found in {self.name}") from None

    def __getitem__(self, key: str) -> LabelMap:
        return self._record(self._find(key), key)

    def at(self, i: int) -> tuple[str, LabelMap]:
        """``(key, LabelMap)`` of the ``i``-th record in key order."""
        j = self._position(i)
        key = self._keys[j]
        return key, self._record(j, key)

    def key_at(self, i: int) -> str:
        """The ``i``-th key in key order."""
        return self._keys[self._position(i)]

    @property
    def key_range(self) -> tuple[str, str] | None:
        """``(first key, last key)`` in key order, or ``None`` for a file without records."""
        return (self._keys[0], self._keys[-1]) if self._keys else None

    def record_nbytes(self, key: str | int) -> int:
        """Stored size in bytes (record header + compressed frame) of record ``key``, or of the
        ``key``-th record in key order when ``key`` is an ``int``."""
        return self._nbytes[self._find(key) if isinstance(key, str) else self._position(key)]

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
        i = self._find(key) if isinstance(key, str) else self._position(key)
        rec = self._read(i)
        if self._verify_reads:
            self._check_crc(i, rec)
        return rec

    def _read(self, i: int) -> bytes:
        src = self._src
        if src is None:
            raise InvalidArgumentError("reader is closed")
        if self._pid != os.getpid():  # forked: fresh file handle and decompressors in this process
            src.check_fork()
            self._decoder.reset()
            self._pid = os.getpid()
        n = self._nbytes[i]
        rec = src.read(self._offsets[i], n)
        if len(rec) != n:
            raise CorruptRecordError(f"record of {self._keys[i]!r} is truncated")
        return rec

    def _check_crc(self, i: int, rec: bytes) -> None:
        if fmt.crc32(rec) != self._crcs[i]:
            raise CorruptRecordError(f"CRC32 mismatch in record {self._keys[i]!r}")

    def _record(self, i: int, key: str) -> LabelMap:
        rec = self._read(i)
        if self._verify_reads:
            self._check_crc(i, rec)
        return self._decoder.decode(rec, key)

    # -------------------------------------------------------------------------- integrity
    def check(self, progress: Callable[[int], None] | None = None) -> list[Problem]:
        """Every problem of the file (see :meth:`verify`); ``progress(1)`` once it is checked."""
        problems: list[str] = []
        order = sorted(range(len(self._keys)), key=self._offsets.__getitem__)
        pos = fmt.HEADER_SIZE
        for i in order:
            if self._offsets[i] != pos:
                problems.append(f"gap or reordering before record {self._keys[i]!r} at offset {self._offsets[i]}")
            pos = self._offsets[i] + self._nbytes[i]
        if pos != self.trailer.footer_offset:
            problems.append(f"records area ends at {pos}, footer starts at {self.trailer.footer_offset}")
        for i, key in enumerate(self._keys):
            try:
                rec = self._read(i)
                self._check_crc(i, rec)
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
