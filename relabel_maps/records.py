"""A stored record's bytes (spec/FORMAT.md, "Records") and the label map they hold.

:class:`RecordEncoder` turns a label map into a record (record header + zstd frame of the codec's
body); :class:`RecordDecoder` checks a record against the reject rules R21-R25 before and while it
decodes it; :func:`check_decoded` adds the full label-map checks that ``verify()`` runs.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import zstandard

from . import format as fmt
from .codecs import FLAG_COUNTS, FLAG_LSE, Codec, RecordArrays
from .errors import CorruptRecordError, FormatError, InvalidLabelMapError, RelabelMapsError, WriterError
from .labelmap import LabelMap

__all__ = ["RecordDecoder", "RecordEncoder", "check_decoded"]

_RECORD_HEADER = fmt.RECORD_HEADER_STRUCT
_F32 = np.dtype(np.float32)
#: the magic number of a zstd frame, little-endian (RFC 8878 §3.1.1)
_ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")
_SKIPPABLE_MAGICS = range(0x184D2A50, 0x184D2A60)  # RFC 8878 §3.1.2: 0x184D2A5?, little-endian


def _is_skippable(magic: bytes) -> bool:
    """Whether ``magic`` (a frame's first 4 bytes) opens a zstd skippable frame."""
    return len(magic) == 4 and int.from_bytes(magic, "little") in _SKIPPABLE_MAGICS


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
        codec: Codec,
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
        # a codec whose decoded scores and lse are finite by construction (``finite``, e.g.
        # integer-coded values) needs no finiteness scan per record
        self._check_finite = not codec.finite
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
            dctx = zstandard.ZstdDecompressor(dict_data=self._zdict)  # None: no dictionary
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
        """The body of a record's zstd frame, its magic and declared sizes checked before
        decompressing (R22, R22a, R22b) and the frame required to be exactly one complete frame (R23)."""
        frame = memoryview(rec)[fmt.RECORD_HEADER_SIZE :]
        magic = bytes(frame[:4])
        if magic != _ZSTD_MAGIC:  # a skippable frame's size field is not a content size: never decompress one
            what = "is a zstd skippable frame" if _is_skippable(magic) else "does not start a zstd frame (bad magic)"
            raise CorruptRecordError(f"record {key!r} {what}; a record holds one zstd frame")
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
        try:  # one-shot: refuses truncated frames and any bytes after the first frame; a max_output_size
            # of 0 would mean "no limit", so a frame declaring 0 bytes may produce at most 1
            body = dctx.decompress(frame, max_output_size=max(declared, 1), allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CorruptRecordError(f"record {key!r} is not exactly one complete zstd frame: {exc}") from None
        if len(body) != declared:
            raise CorruptRecordError(f"record {key!r} decompresses to {len(body)} bytes, its frame declares {declared}")
        return body

    def decompress(self, rec: bytes | memoryview, key: str) -> tuple[int, int, int, int, bytes]:
        """``(h, w, k, flags, body)`` of a record, every declared size checked before decompressing."""
        h, w, k, flags, bound = self._check_header(rec, key)
        return h, w, k, flags, self._frame(rec, bound, key)

    def checked_body(self, rec: bytes | memoryview, key: str) -> tuple[bytes, bytes]:
        """``(canonical record header, body)`` of a record that passes every check of ``verify()``
        (the header's reserved field is written as 0)."""
        h, w, k, flags, body = self.decompress(rec, key)
        check_decoded(self.decode_body(h, w, k, flags, body, key))
        return fmt.pack_record_header(h, w, k, flags), body

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
        lm.validate()
    except InvalidLabelMapError as exc:
        raise CorruptRecordError(f"record {lm.key!r}: {exc}") from None
    valid = lm.valid()
    if lm.k > 1 and bool(((lm.scores[1:] > lm.scores[:-1]) & valid[1:]).any()):
        raise CorruptRecordError(f"record {lm.key!r} is not sorted by descending score")


class RecordEncoder:
    """Encodes label maps of one structure (``num_classes``, at most ``k`` entries per location,
    codec) into records: the codec's body in a zstd frame, compressed with the file's dictionary
    once :meth:`use_dictionary` has set it."""

    def __init__(self, *, codec: Codec, num_classes: int, k: int, level: int) -> None:
        self.codec, self.k, self.level = codec, k, level
        self._index_itemsize = fmt.index_dtype_for(num_classes).itemsize
        self._cctx: zstandard.ZstdCompressor | None = None

    def body(self, lm: LabelMap) -> tuple[bytes, bytes]:
        """``(record header, uncompressed body)`` of ``lm``, padding written canonically (index 0,
        score 0; spec/FORMAT.md section 4); :class:`InvalidLabelMapError` when ``lm`` does not fit."""
        k, h, w = lm.shape
        lim = fmt.LIMITS
        if k > self.k:
            raise InvalidLabelMapError(f"label map has k={k} entries per location; the writer stores at most {self.k}")
        if h > lim.max_height or w > lim.max_width or k * h * w > lim.max_entries:
            raise InvalidLabelMapError(f"label map {k}x{h}x{w} exceeds the format's limits")
        indices, scores = lm.indices, lm.scores
        if lm.counts is not None:
            pad = ~lm.valid()
            if pad.any():
                indices = np.where(pad, 0, indices).astype(indices.dtype)
                scores = np.where(pad, 0, scores).astype(np.float32)
        arrays = RecordArrays(indices, scores, lm.counts, lm.lse)
        body = self.codec.encode(arrays)
        if len(body) > self.codec.max_body_size(k, h, w, arrays.flags, self._index_itemsize):
            raise WriterError(f"encoding {self.codec.name!r} produced a body above its declared bound")
        return fmt.pack_record_header(h, w, k, arrays.flags), body

    @property
    def ready(self) -> bool:
        """Whether the dictionary is settled and records can be compressed."""
        return self._cctx is not None

    def use_dictionary(self, dictionary: bytes) -> None:
        """Compress from now on with ``dictionary`` (empty: none)."""
        params: dict[str, Any] = {"level": self.level, "write_content_size": True, "write_checksum": False}
        if dictionary:
            params["dict_data"] = zstandard.ZstdCompressionDict(dictionary)
        self._cctx = zstandard.ZstdCompressor(**params)

    def compress(self, body: bytes) -> bytes:
        """The zstd frame of ``body``."""
        assert self._cctx is not None, "use_dictionary() first"
        return self._cctx.compress(body)
