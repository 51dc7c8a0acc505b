"""What every record codec is: the arrays it handles, the record flags, and the typed interfaces
of a codec (:class:`Codec`) and of its registered factory (:class:`CodecFactory`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["FLAG_COUNTS", "FLAG_LSE", "RecordArrays", "Bodies", "Codec", "BatchCodec", "CodecFactory"]

#: record-header flag bits (spec/FORMAT.md, "Record header")
FLAG_COUNTS = 0x01  # a (H, W) uint8 count of valid entries per location follows
FLAG_LSE = 0x02  # a (H, W) log-sum-exp over all classes follows


class RecordArrays(NamedTuple):
    """The arrays of one record, as a codec sees them."""

    indices: np.ndarray  # (k, H, W) uint16 | uint32, descending score per location
    scores: np.ndarray  # (k, H, W) float32
    counts: np.ndarray | None  # (H, W) uint8 or None
    lse: np.ndarray | None  # (H, W) float32 or None

    @property
    def flags(self) -> int:
        return (FLAG_COUNTS if self.counts is not None else 0) | (FLAG_LSE if self.lse is not None else 0)


class Bodies:
    """The uncompressed bodies of a batch of records, back to back: body ``i`` is
    ``data[offsets[i]:offsets[i + 1]]`` (``offsets``: ``(N + 1,)`` int64, starting at 0)."""

    __slots__ = ("data", "offsets")

    def __init__(self, data: bytes, offsets: np.ndarray) -> None:
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __iter__(self) -> Iterator[bytes]:
        cuts = self.offsets.tolist()
        return (self.data[cuts[i] : cuts[i + 1]] for i in range(len(cuts) - 1))

    def body(self, i: int) -> bytes:
        """Body ``i`` as bytes."""
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]


class Codec(Protocol):
    """Interface of a record-body encoding. Every codec declares every attribute below."""

    #: the name it is registered under (spec/ENCODINGS.md)
    name: str
    #: decoded arrays equal the encoded ones exactly
    lossless: bool
    #: decoded scores and lse are finite by construction, so a reader may skip its per-record
    #: finiteness scan
    finite: bool

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description stored under the file metadata's ``"encoding"`` key, every
        parameter spelled out."""
        ...

    def encode(self, arrays: RecordArrays) -> bytes:
        """Encode one record's arrays into an uncompressed body."""
        ...

    def decode(
        self, body: bytes | memoryview, k: int, h: int, w: int, flags: int, index_dtype: DTypeLike
    ) -> RecordArrays:
        """Decode a body; raise :class:`~relabel_maps.errors.CorruptRecordError` on any inconsistency."""
        ...

    def max_body_size(self, k: int, h: int, w: int, flags: int, index_itemsize: int) -> int:
        """Upper bound of the body size in bytes for these dimensions."""
        ...


class BatchCodec(Codec, Protocol):
    """A codec that also encodes a whole batch in a few vectorised operations (optional: a codec
    without :meth:`encode_many` is encoded record by record)."""

    def encode_many(self, arrays: RecordArrays) -> Bodies:
        """Encode ``N`` records of one shape at once: ``arrays`` hold ``(N, k, H, W)`` indices and
        scores and ``(N, H, W)`` counts and lse. Body ``i`` is exactly ``encode`` of record ``i``."""
        ...


class CodecFactory(Protocol):
    """What the registry holds under a codec's name: ``factory(**params) -> Codec`` (a codec class
    is one), where a missing parameter means the format's default for that codec."""

    @property
    def recommended(self) -> Mapping[str, Any]:
        """Parameters writers start from (a bare name selects them; a mapping overrides them)."""
        ...

    def __call__(self, *args: Any, **params: Any) -> Codec:
        """A codec with these parameters; :class:`~relabel_maps.errors.InvalidArgumentError` or
        :class:`TypeError` for values or names it refuses."""
        ...
