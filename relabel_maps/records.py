"""A stored record's bytes (spec/FORMAT.md, "Records") and the label map they hold.

:class:`RecordEncoder` turns a label map into a record (record header + zstd frame of the codec's
body), or a batch of label maps into records with a few numpy calls per batch and the zstd frames
compressed on several threads (:meth:`RecordEncoder.encode_many`, the same bytes as one by one);
:class:`RecordDecoder` checks a record against the reject rules R21-R25 before and while it
decodes it; :func:`check_decoded` adds the full label-map checks that ``verify()`` runs.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import numpy as np
import zstandard

from . import format as fmt
from .codecs import FLAG_COUNTS, FLAG_LSE, Bodies, Codec, RecordArrays, encode_many
from .errors import (
    CorruptRecordError,
    FormatError,
    InvalidArgumentError,
    InvalidLabelMapError,
    RelabelMapsError,
    WriterError,
)
from .frames import FrameCompressor
from .labelmap import LabelMap

__all__ = ["EncodedBatch", "RecordDecoder", "RecordEncoder", "check_decoded"]

_RECORD_HEADER = fmt.RECORD_HEADER_STRUCT
#: maps encoded at a time by :meth:`RecordEncoder.records_many` (their compression overlaps the next chunk's encoding)
CHUNK = 64
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


class EncodedBatch(NamedTuple):
    """Records of one shape before compression: their shared record header and their bodies."""

    header: bytes
    bodies: Bodies


class RecordEncoder:
    """Encodes label maps of one structure (``num_classes``, at most ``k`` entries per location,
    codec) into records: the codec's body in a zstd frame, compressed with the file's dictionary
    once :meth:`use_dictionary` has set it. ``threads``: how many threads compress a batch
    (default: :class:`~relabel_maps.frames.FrameCompressor`'s)."""

    def __init__(self, *, codec: Codec, num_classes: int, k: int, level: int, threads: int | None = None) -> None:
        self.codec, self.k, self.level, self.num_classes = codec, k, level, num_classes
        self._index_dtype = fmt.index_dtype_for(num_classes)
        self._index_itemsize = self._index_dtype.itemsize
        self._frames: FrameCompressor | None = None
        self.threads = threads  # None: FrameCompressor's default

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
        return self._frames is not None

    def use_dictionary(self, dictionary: bytes) -> None:
        """Compress from now on with ``dictionary`` (empty: none)."""
        self.close()
        self._frames = FrameCompressor(self.level, dictionary, self.threads)

    def close(self) -> None:
        """Stop the compression threads (a later batch starts them again)."""
        if self._frames is not None:
            self._frames.close()

    def compress(self, body: bytes) -> bytes:
        """The zstd frame of ``body``."""
        assert self._frames is not None, "use_dictionary() first"
        return self._frames.compress(body)

    # ------------------------------------------------------------------------------ batches
    def encode_many(
        self, keys: Sequence[str], indices: Any, scores: Any, counts: Any = None, lse: Any = None
    ) -> EncodedBatch:
        """The records of ``len(keys)`` label maps of one shape, uncompressed, exactly as :meth:`body`
        of each (``LabelMap.from_arrays`` casts, sorts and checks them the same way): ``indices``/
        ``scores`` stacked ``(N, k', H, W)``, ``counts``/``lse`` ``(N, H, W)``. A map that does not
        fit raises the error :meth:`body` gives for the first such map, naming its key."""
        ((header, bodies),) = self._chunks(keys, indices, scores, counts, lse, size=max(1, len(keys)))
        return EncodedBatch(header, bodies)

    def records_many(
        self, keys: Sequence[str], indices: Any, scores: Any, counts: Any = None, lse: Any = None
    ) -> list[bytes]:
        """The stored records (record header + zstd frame) of :meth:`encode_many`'s maps."""
        return list(self.stream_records(keys, indices, scores, counts, lse))

    def stream_records(
        self, keys: Sequence[str], indices: Any, scores: Any, counts: Any = None, lse: Any = None
    ) -> Iterator[bytes]:
        """:meth:`records_many` as they are ready: every map is checked and encoded (:data:`CHUNK`
        at a time, each chunk's compression starting on other threads as the next is encoded)
        before this returns, so a refused map raises here; the records then come in order while
        the later chunks are still being compressed."""
        assert self._frames is not None, "use_dictionary() first"
        jobs = [(head, self._frames.submit(bodies))
                for head, bodies in self._chunks(keys, indices, scores, counts, lse, size=CHUNK)]
        return (head + frame for head, frames in jobs for frame in frames())

    def _chunks(
        self, keys: Sequence[str], indices: Any, scores: Any, counts: Any, lse: Any, size: int
    ) -> Iterator[tuple[bytes, Bodies]]:
        """``(record header, bodies)`` of the maps, ``size`` at a time, all of them checked first."""
        try:
            arrays = self._prepare(len(keys), indices, scores, counts, lse)
            n, k, h, w = arrays.indices.shape
            header = fmt.pack_record_header(h, w, k, arrays.flags)
            bound = self.codec.max_body_size(k, h, w, arrays.flags, self._index_itemsize)
            for lo in range(0, max(n, 1), size):
                idx, sc, cnt, lse_part = (None if a is None else a[lo : lo + size] for a in arrays)
                assert idx is not None and sc is not None
                bodies = encode_many(self.codec, RecordArrays(idx, sc, cnt, lse_part))
                if len(bodies) and int(np.diff(bodies.offsets).max()) > bound:
                    raise WriterError(f"encoding {self.codec.name!r} produced a body above its declared bound")
                yield header, bodies
        except InvalidLabelMapError as exc:
            self._first_error(keys, indices, scores, counts, lse, exc)

    def _prepare(self, n: int, indices: Any, scores: Any, counts: Any, lse: Any) -> RecordArrays:
        """The batch as :meth:`body` would store each map: cast, checked, sorted, padding canonical."""
        idx, sc = np.asarray(indices), np.asarray(scores, dtype=np.float32)
        if idx.ndim != 4 or sc.shape != idx.shape or len(idx) != n:
            raise InvalidArgumentError(
                f"a batch of {n} maps has indices and scores of shape ({n}, k, H, W); got {idx.shape} and {sc.shape}"
            )
        _, k, h, w = idx.shape
        lim = fmt.LIMITS
        if not (0 < k <= self.k and 0 < h <= lim.max_height and 0 < w <= lim.max_width) or k * h * w > lim.max_entries:
            raise InvalidLabelMapError(f"label maps {k}x{h}x{w} do not fit this writer or the format's limits")
        if not np.issubdtype(idx.dtype, np.integer) or (n and (idx.min() < 0 or idx.max() >= self.num_classes)):
            raise InvalidLabelMapError(f"class indices must be integers in [0, {self.num_classes})")
        idx = idx.astype(self._index_dtype, copy=False)
        valid = cnt = None
        if counts is not None:
            c = np.asarray(counts)
            if c.shape != (n, h, w) or not np.issubdtype(c.dtype, np.integer) or (n and (c.min() < 1 or c.max() > k)):
                raise InvalidLabelMapError(f"counts must be integers in [1, {k}] of shape {(n, h, w)}")
            cnt = c.astype(np.uint8)
            valid = np.arange(k)[None, :, None, None] < cnt[:, None]
        keyed = -sc if valid is None else np.where(valid, -sc, np.inf)
        if not (keyed[:, 1:] >= keyed[:, :-1]).all():  # not already in descending order: sort as from_arrays
            order = np.argsort(keyed, axis=1, kind="stable")
            idx, sc = np.take_along_axis(idx, order, axis=1), np.take_along_axis(sc, order, axis=1)
        if not np.isfinite(sc).all():
            raise InvalidLabelMapError("scores must be finite (found NaN or inf)")
        lse_arr = None
        if lse is not None:
            lse_arr = np.asarray(lse, dtype=np.float32)
            if lse_arr.shape != (n, h, w) or not np.isfinite(lse_arr).all():
                raise InvalidLabelMapError(f"lse must be a finite float32 array of shape {(n, h, w)}")
        if valid is not None and not valid.all():  # padding is stored canonically: index 0, score 0
            idx, sc = np.where(valid, idx, 0).astype(idx.dtype), np.where(valid, sc, 0).astype(np.float32)
        return RecordArrays(np.ascontiguousarray(idx), np.ascontiguousarray(sc), cnt, lse_arr)

    def _first_error(
        self, keys: Sequence[str], indices: Any, scores: Any, counts: Any, lse: Any, error: Exception
    ) -> NoReturn:
        """Raise the error of the first map :meth:`body` refuses, naming its key (else ``error``)."""
        for i, key in enumerate(keys):
            try:
                lm = LabelMap.from_arrays(
                    np.asarray(indices)[i], np.asarray(scores)[i], num_classes=self.num_classes,
                    counts=None if counts is None else np.asarray(counts)[i], lse=None if lse is None else lse[i],
                )
                self.body(lm)
            except RelabelMapsError as exc:
                raise type(exc)(f"map {key!r}: {exc}") from None
        raise error

    def compress_many(self, bodies: Bodies) -> list[bytes]:
        """The zstd frames of ``bodies``, compressed on several threads (the same
        frames as :meth:`compress` of each)."""
        assert self._frames is not None, "use_dictionary() first"
        return self._frames.compress_many(bodies)
