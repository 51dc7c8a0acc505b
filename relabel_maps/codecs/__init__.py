"""Record body encodings ("codecs") of spec/ENCODINGS.md and their registry.

A codec turns one label map's arrays into an uncompressed record *body* and back. Compression,
checksums and the record header are the container's job (:mod:`relabel_maps.format`). Every codec
declares, before any decoding, the largest body it can produce for a given ``(k, H, W)`` so that a
reader never allocates more than that bound.

Two ways to name a codec, for two jobs:

- :func:`get_codec` (writers): a name or a mapping; it starts from the codec's ``recommended``
  parameters and applies any given in the mapping, so ``"compact"`` and ``{"name": "compact"}``
  are the same codec.
- :func:`codec_from_metadata` (readers): a file's stored ``"encoding"`` object, where a missing
  parameter means the format's default (spec/ENCODINGS.md). Files written by :class:`~relabel_maps.Writer`
  spell out every parameter, so both functions agree on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from ..errors import FormatError, InvalidArgumentError
from .base import FLAG_COUNTS, FLAG_LSE, BatchCodec, Bodies, Codec, CodecFactory, RecordArrays
from .compact import CompactCodec
from .raw import F16Codec, F32Codec

__all__ = [
    "RecordArrays",
    "Bodies",
    "Codec",
    "BatchCodec",
    "encode_many",
    "CodecFactory",
    "CODECS",
    "get_codec",
    "codec_from_metadata",
    "register_codec",
    "FLAG_COUNTS",
    "FLAG_LSE",
]

#: registered codecs by name: the built-in ones of spec/ENCODINGS.md, plus any :func:`register_codec` adds
CODECS: dict[str, CodecFactory] = {"f32": F32Codec, "f16": F16Codec, "compact": CompactCodec}


def register_codec(name: str, factory: CodecFactory) -> None:
    """Register ``factory(**params) -> Codec`` under ``name`` (its ``recommended`` mapping holds the
    parameters writers start from)."""
    CODECS[name] = factory


def _split(encoding: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, parameters)`` of a name or a mapping with a ``"name"``."""
    if isinstance(encoding, str):
        return encoding, {}
    if isinstance(encoding, Mapping) and isinstance(encoding.get("name"), str):
        return encoding["name"], {k: v for k, v in encoding.items() if k != "name"}
    raise InvalidArgumentError(f"an encoding is a name or a mapping with a 'name'; got {encoding!r}")


def _factory(name: str) -> CodecFactory:
    try:
        return CODECS[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown encoding {name!r}; known: {', '.join(sorted(CODECS))}") from None


def _build(name: str, factory: CodecFactory, params: Mapping[str, Any]) -> Codec:
    try:
        return factory(**params)
    except TypeError as exc:  # a parameter the codec does not take
        raise InvalidArgumentError(f"bad parameters for encoding {name!r}: {exc}") from None


def get_codec(encoding: str | Mapping[str, Any]) -> Codec:
    """The codec a writer asks for: ``encoding`` is a name (``"compact"``) or a mapping
    (``{"name": "compact", "step": 2**-7}``); parameters start from the codec's ``recommended``
    ones (e.g. step 1/256 for ``compact``), overridden by any the mapping gives.
    :class:`InvalidArgumentError` for an unknown name or a refused parameter."""
    name, params = _split(encoding)
    factory = _factory(name)
    return _build(name, factory, {**factory.recommended, **params})


def codec_from_metadata(encoding: Any) -> Codec:
    """The codec of a file's stored metadata ``"encoding"`` object (``{"name": ..., params}``); a
    missing parameter means the format's default (spec/ENCODINGS.md, e.g. step 1/128 for
    ``compact``). :class:`FormatError` for anything else than such an object, an unknown name or a
    refused parameter."""
    try:
        if not isinstance(encoding, Mapping):
            raise InvalidArgumentError(f"a stored encoding is an object with a 'name', got {encoding!r}")
        name, params = _split(encoding)
        return _build(name, _factory(name), params)
    except InvalidArgumentError as exc:
        raise FormatError(str(exc)) from None


def encode_many(codec: Codec, arrays: RecordArrays) -> Bodies:
    """The bodies of ``N`` records (``(N, k, H, W)`` arrays, see :meth:`BatchCodec.encode_many`):
    in one batch when the codec can, else record by record; the same bytes either way."""
    batch = getattr(codec, "encode_many", None)
    if not len(arrays.indices):
        return Bodies(b"", np.zeros(1, dtype=np.int64))
    if batch is not None:
        return cast(BatchCodec, codec).encode_many(arrays)
    idx, sc, counts, lse = arrays
    bodies = [
        codec.encode(RecordArrays(idx[i], sc[i], *(None if a is None else a[i] for a in (counts, lse))))
        for i in range(len(idx))
    ]
    return Bodies(b"".join(bodies), np.cumsum([0] + [len(b) for b in bodies], dtype=np.int64))
