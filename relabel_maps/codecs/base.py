"""What every record codec is: the arrays it handles, the record flags, and the typed interfaces
of a codec (:class:`Codec`) and of its registered factory (:class:`CodecFactory`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["FLAG_COUNTS", "FLAG_LSE", "RecordArrays", "Codec", "CodecFactory"]

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
