"""Record body encodings ("codecs") of spec/ENCODINGS.md.

A codec turns one label map's arrays into an uncompressed record *body* and back. Compression,
checksums and the record header are the container's job (:mod:`relabel_maps.format`). Every codec
declares, before any decoding, the largest body it can produce for a given ``(k, H, W)`` so that a
reader never allocates more than that bound.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["RecordArrays", "Codec", "get_codec", "register_codec", "CODECS", "FLAG_COUNTS", "FLAG_LSE"]

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
    """Interface of a record-body encoding."""

    name: str
    lossless: bool
    #: optional (default False): decoded scores and lse are finite by construction, so a reader
    #: may skip its per-record finiteness scan
    finite: bool

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description stored under the file metadata's ``"encoding"`` key."""

    def encode(self, arrays: RecordArrays) -> bytes:
        """Encode one record's arrays into an uncompressed body."""

    def decode(self, body: bytes | memoryview, k: int, h: int, w: int, flags: int, index_dtype: np.dtype) -> RecordArrays:
        """Decode a body; raise :class:`~relabel_maps.errors.CorruptRecordError` on any inconsistency."""

    def max_body_size(self, k: int, h: int, w: int, flags: int, index_itemsize: int) -> int:
        """Upper bound of the body size in bytes for these dimensions."""


CODECS: dict[str, Any] = {}


def register_codec(name: str, factory: Any) -> None:
    """Register ``factory(**params) -> Codec`` under ``name``; the factory's optional ``recommended``
    mapping holds the parameters that the bare name selects (see :func:`get_codec`)."""
    CODECS[name] = factory


def get_codec(spec: str | Mapping[str, Any]) -> Codec:
    """Return the codec named by ``spec``: a bare name gives the codec's recommended settings for
    writing (its ``recommended`` parameters, e.g. step 1/256 for ``"compact"``); a mapping (the
    metadata's ``"encoding"``) gives exactly its parameters, the format's defaults for any missing."""
    if isinstance(spec, str):
        name, params = spec, None
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        params = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        raise InvalidArgumentError(f"an encoding is a name or a mapping with a 'name'; got {spec!r}")
    _load_builtin()
    if name not in CODECS:
        raise InvalidArgumentError(f"unknown encoding {name!r}; known: {', '.join(sorted(CODECS))}")
    if params is None:
        params = dict(getattr(CODECS[name], "recommended", {}))
    try:
        return CODECS[name](**params)
    except TypeError as exc:
        raise InvalidArgumentError(f"bad parameters for encoding {name!r}: {exc}") from None


def _load_builtin() -> None:
    if "f32" not in CODECS or "compact" not in CODECS:
        from . import compact, raw  # noqa: F401  (importing registers f32, f16 and compact)
