"""Read one label-map file (spec/FORMAT.md) as a lazy, read-only mapping of key -> :class:`LabelMap`.

The header, trailer and footer (metadata, dictionary, index) are read and checked once when the
file is opened -- two small reads plus one read of the footer. A record is read and decoded only
when accessed. Works on a path (memory-mapped) or on any seekable binary file object; a reader
used in a forked child process reopens its file handle on first use.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import threading
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO, Callable, Union

import numpy as np
import zstandard

from . import format as fmt
from .codecs import FLAG_COUNTS, FLAG_LSE, get_codec
from .errors import (
    CorruptRecordError,
    FormatError,
    InvalidArgumentError,
    InvalidLabelMapError,
    MissingKeyError,
    RelabelMapsError,
)
from .labelmap import LabelMap

__all__ = ["LabelMaps", "Reader", "RecordDecoder", "check_decoded", "open_file", "ZSTD_DICT_MAGIC"]

ZSTD_DICT_MAGIC = b"\x37\xa4\x30\xec"
_RECORD_HEADER = fmt.RECORD_HEADER_STRUCT
_F32 = np.dtype(np.float32)
Source = Union[str, "os.PathLike[str]", BinaryIO, Callable[[], BinaryIO]]


class LabelMaps(Mapping):
    """Read-only ``Mapping[str, LabelMap]`` over a file or a dataset of shards; a context manager.

    Iteration yields keys in UTF-8 byte order; :meth:`at` addresses records by position.
    """

    metadata: dict[str, Any]

    def at(self, i: int) -> tuple[str, LabelMap]:  # pragma: no cover - abstract
        raise NotImplementedError

    def record_nbytes(self, key: str) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def verify(self, strict: bool = False) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self) -> "LabelMaps":
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


# ------------------------------------------------------------------------------------ byte access
class _ByteSource:
    """Positional reads from a path (mmap) or a file object; reopened after ``fork``."""

    def __init__(self, source: Source) -> None:
        self._path: str | None = None
        self._factory: Callable[[], BinaryIO] | None = None
        self._file: BinaryIO | None = None
        self._owns_file = False
        if isinstance(source, (str, os.PathLike)):
            self._path = os.fspath(source)
        elif callable(source) and not hasattr(source, "read"):
            self._factory = source
        elif hasattr(source, "read") and hasattr(source, "seek"):
            self._file = source  # type: ignore[assignment]
        else:
            raise InvalidArgumentError(f"cannot read label maps from {type(source).__name__}")
        self.name = self._path or getattr(source, "name", None) or type(source).__name__
        self._open()

    def _open(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._mm: mmap.mmap | None = None
        self._fd: int | None = None
        if self._path is not None:
            try:
                with io.open(self._path, "rb") as f:
                    self.size = os.fstat(f.fileno()).st_size
                    if self.size:
                        self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except IsADirectoryError:
                raise InvalidArgumentError(f"{self._path} is a folder; use relabel_maps.open() for datasets") from None
            return
        if self._factory is not None:
            self._file = self._factory()
            self._owns_file = True
        f = self._file
        assert f is not None
        try:  # a real OS file: positional reads need no lock and survive fork
            fd = f.fileno()
            if hasattr(os, "pread") and _is_regular(fd):
                self._fd = fd
        except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
            self._fd = None
        try:
            self.size = f.seek(0, io.SEEK_END)
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"file object is not seekable: {exc}") from None

    def check_fork(self) -> None:
        if self._pid != os.getpid():
            if self._path is not None:
                if self._mm is not None:  # the inherited mapping: unmapped in this process only
                    self._mm.close()
                self._open()
            elif self._factory is not None:
                self._file = None
                self._open()
            else:  # a plain file object: the child has its own copy (BytesIO) or uses pread
                self._pid = os.getpid()
                self._lock = threading.Lock()

    def read(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (fewer only when the file is shorter)."""
        if self._mm is not None:
            return self._mm[offset : offset + n]
        if self._path is not None:  # empty file
            return b""
        if self._fd is not None:
            return os.pread(self._fd, n, offset)
        with self._lock:
            f = self._file
            assert f is not None
            f.seek(offset)
            parts = []
            while n > 0:  # some file objects (network, raw) return short reads
                data = f.read(n)
                if not data:
                    break
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise InvalidArgumentError("label maps must be read from a binary file object")
                parts.append(bytes(data))
                n -= len(data)
            return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._owns_file and self._file is not None:
            self._file.close()
        self._file = None
        self._fd = None

    @property
    def path(self) -> str | None:
        return self._path


def _is_regular(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------------------------- record decoding
class RecordDecoder:
    """Checks and decodes stored records (record header + zstd frame) of one structure: ``k``,
    ``num_classes``, ``score_kind``, encoding and zstd dictionary. Enforces the reject rules
    R21-R25 of spec/FORMAT.md; used by :class:`Reader` and to validate records copied by
    :meth:`relabel_maps.Writer.add_raw`."""

    def __init__(
        self,
        *,
        num_classes: int,
        k: int,
        score_kind: str,
        codec: Any,
        dictionary: bytes = b"",
        metadata: Mapping[str, Any] | None = None,
        limits: fmt.Limits = fmt.LIMITS,
    ) -> None:
        self.num_classes, self.k, self.score_kind, self.codec = num_classes, k, score_kind, codec
        self.metadata = metadata
        self._limits = limits
        self._index_dtype = fmt.index_dtype_for(num_classes)
        self._index_itemsize = self._index_dtype.itemsize
        self._check_range = num_classes < (1 << (8 * self._index_itemsize))
        self._bounds: dict[tuple[int, int, int, int], int] = {}  # (k, h, w, flags) -> max body size
        # a codec whose decoded scores and lse are finite by construction (class attribute
        # ``finite = True``, e.g. integer-coded values) needs no finiteness scan per record
        self._check_finite = not getattr(codec, "finite", False)
        try:
            self._zdict = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
            self.reset()
            self._decompressor()
        except zstandard.ZstdError as exc:
            raise FormatError(f"invalid zstd dictionary: {exc}") from None

    def reset(self) -> None:
        """Drop the per-thread decompressors (after ``fork``)."""
        self._tls = threading.local()

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        """This thread's decompressor (zstd contexts must not be shared between threads)."""
        dctx = getattr(self._tls, "dctx", None)
        if dctx is None:
            dctx = zstandard.ZstdDecompressor(dict_data=self._zdict) if self._zdict is not None else zstandard.ZstdDecompressor()
            self._tls.dctx = dctx
        return dctx

    def _check_header(self, rec: bytes | memoryview, key: str) -> tuple[int, int, int, int, int]:
        """``(h, w, k, flags, bound)`` of a record header (R21), ``bound`` the body size limit."""
        try:
            h, w, k, flags, _ = _RECORD_HEADER.unpack_from(rec)
        except struct.error:
            raise CorruptRecordError(f"record {key!r} is shorter than its header") from None
        bound = self._bounds.get((k, h, w, flags))
        if bound is None:
            lim = self._limits
            if not (
                0 < h <= lim.max_height and 0 < w <= lim.max_width and 0 < k <= self.k
                and k * h * w <= lim.max_entries and not flags & ~fmt.KNOWN_RECORD_FLAGS
            ):
                fmt.parse_record_header(rec, self.k, lim)  # raises with the precise reason
            bound = self.codec.max_body_size(k, h, w, flags, self._index_itemsize)
            if len(self._bounds) < 4096:  # a constant per record shape
                self._bounds[(k, h, w, flags)] = bound
        return h, w, k, flags, bound

    def _frame(self, rec: bytes | memoryview, bound: int, key: str) -> bytes:
        """The body of a record's zstd frame, its declared sizes checked before decompressing
        (R22, R22a) and the frame required to be exactly one complete frame (R23)."""
        frame = memoryview(rec)[fmt.RECORD_HEADER_SIZE :]
        try:
            declared = zstandard.frame_content_size(frame)
        except zstandard.ZstdError as exc:
            raise CorruptRecordError(f"record {key!r} does not start a zstd frame: {exc}") from None
        if declared < 0 or declared > bound:  # -1: the frame does not declare its size
            raise CorruptRecordError(f"record {key!r} declares {declared} bytes; a frame must declare at most {bound}")
        lim = self._limits
        if declared > lim.expansion_floor + lim.max_expansion * len(frame):
            raise CorruptRecordError(
                f"record {key!r} declares {declared} bytes from a {len(frame)}-byte frame "
                f"(more than {lim.max_expansion}x expansion)"
            )
        dctx = self._decompressor()
        try:  # one-shot: refuses truncated frames and any bytes after the first frame
            body = dctx.decompress(frame, max_output_size=declared, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CorruptRecordError(f"record {key!r} is not exactly one complete zstd frame: {exc}") from None
        if len(body) != declared:
            raise CorruptRecordError(f"record {key!r} decompresses to {len(body)} bytes, its frame declares {declared}")
        return body

    def decompress(self, rec: bytes | memoryview, key: str) -> tuple[int, int, int, int, bytes]:
        """``(h, w, k, flags, body)`` of a record, every declared size checked before decompressing."""
        h, w, k, flags, bound = self._check_header(rec, key)
        return h, w, k, flags, self._frame(rec, bound, key)

    def decode(self, rec: bytes | memoryview, key: str) -> LabelMap:
        """The :class:`LabelMap` of a record; :class:`CorruptRecordError` when it breaks a rule."""
        h, w, k, flags, bound = self._check_header(rec, key)
        return self.decode_body(h, w, k, flags, self._frame(rec, bound, key), key)

    def decode_body(self, h: int, w: int, k: int, flags: int, body: bytes, key: str) -> LabelMap:
        """The :class:`LabelMap` of a decompressed record body (see :meth:`decompress`), checked
        against R24-R25: shapes and dtypes, class indices, finite scores and lse, counts."""
        try:
            idx, sc, counts, lse = self.codec.decode(body, k, h, w, flags, self._index_dtype)
        except RelabelMapsError as exc:
            raise CorruptRecordError(f"record {key!r}: {exc}") from None
        except Exception as exc:  # a codec must not let low-level errors escape
            raise CorruptRecordError(f"record {key!r} does not decode: {exc}") from None
        shape = (k, h, w)
        if idx.shape != shape or sc.shape != shape or idx.dtype != self._index_dtype or sc.dtype != _F32:
            raise CorruptRecordError(f"record {key!r} decodes to the wrong shape or dtype")
        if self._check_range and int(idx.max()) >= self.num_classes:
            raise CorruptRecordError(f"record {key!r} has a class index >= {self.num_classes}")
        if self._check_finite and not np.isfinite(sc).all():
            raise CorruptRecordError(f"record {key!r} has non-finite scores")
        if flags & FLAG_COUNTS:
            if counts is None or counts.shape != (h, w) or counts.dtype != np.uint8:
                raise CorruptRecordError(f"record {key!r} has malformed counts")
            if int(counts.min()) < 1 or int(counts.max()) > k:
                raise CorruptRecordError(f"record {key!r} has counts outside [1, {k}]")
        elif counts is not None:
            raise CorruptRecordError(f"record {key!r} decodes counts without the flag")
        if flags & FLAG_LSE:
            if lse is None or lse.shape != (h, w) or lse.dtype != _F32:
                raise CorruptRecordError(f"record {key!r} has a malformed lse")
            if self._check_finite and not np.isfinite(lse).all():
                raise CorruptRecordError(f"record {key!r} has a non-finite lse")
        elif lse is not None:
            raise CorruptRecordError(f"record {key!r} decodes an lse without the flag")
        return LabelMap(
            idx,
            sc,
            num_classes=self.num_classes,
            score_kind=self.score_kind,
            lse=lse,
            counts=counts,
            key=key,
            metadata=self.metadata,
            validate=False,
        )


def check_decoded(lm: LabelMap) -> None:
    """Full label-map validation of a decoded record plus descending score order (as ``verify()``)."""
    try:
        lm._validate()
    except InvalidLabelMapError as exc:
        raise CorruptRecordError(f"record {lm.key!r}: {exc}") from None
    valid = lm.valid()
    if lm.k > 1 and bool(((lm.scores[1:] > lm.scores[:-1]) & valid[1:]).any()):
        raise CorruptRecordError(f"record {lm.key!r} is not sorted by descending score")


# ----------------------------------------------------------------------------------------- reader
class Reader(LabelMaps):
    """One ``.rlm`` file as a lazy mapping.

    Args:
        source: a path, a seekable binary file object, or a zero-argument callable returning one
            (used again to reopen the file in a forked child).
        verify: check every record's CRC32 when it is read (``verify()`` checks all of them).
    """

    def __init__(self, source: Source, *, verify: bool = False, limits: fmt.Limits = fmt.LIMITS) -> None:
        self._src = None
        self._limits = limits
        self._verify_reads = bool(verify)
        self._lookup: dict[str, int] | None = None
        src = _ByteSource(source)
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
        meta = fmt.parse_metadata(meta_b)
        self.trailer = t
        self.metadata = meta
        self.num_classes = int(meta["num_classes"])
        self.k = int(meta["k"])
        self.score_kind = str(meta["score_kind"])
        try:
            self.codec = get_codec(meta["encoding"])
        except Exception as exc:  # unknown name, or parameters the codec refuses
            raise FormatError(f"unsupported record encoding {meta['encoding']!r}: {exc}") from None
        has_dict = meta["compression"].get("dictionary", False)
        if has_dict != (t.dictionary_length > 0):
            raise FormatError("metadata compression.dictionary disagrees with the dictionary section")
        self._dict_bytes = bytes(dict_b)
        if self._dict_bytes and not self._dict_bytes.startswith(ZSTD_DICT_MAGIC):
            raise FormatError("dictionary section is not a zstd dictionary")
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
        return self._keys[self._position(i)]

    def record_nbytes(self, key: str) -> int:
        """Stored size of a record in bytes (record header + compressed frame)."""
        return self._nbytes[self._find(key)]

    @property
    def name(self) -> str:
        return str(self._src.name) if self._src is not None else "<closed>"

    @property
    def path(self) -> str | None:
        return self._src.path if self._src is not None else None

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
        offset, n = self._offsets[i], self._nbytes[i]
        mm = src._mm
        rec = mm[offset : offset + n] if mm is not None else src.read(offset, n)
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
    def verify(self, strict: bool = False) -> list[str]:
        """Check every record (CRC32, decoding, full label-map validation, score order) and the layout.

        Returns the problems found (empty when the file is sound); ``strict=True`` raises the first
        one as :class:`CorruptRecordError` instead.
        """
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
        if strict and problems:
            raise CorruptRecordError(f"{self.name}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        return problems

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
