"""A file's zstd dictionary: recognising one, and training one on the first record bodies written."""

from __future__ import annotations

from collections.abc import Sequence

import zstandard

from .errors import FormatError

__all__ = ["ZSTD_DICT_MAGIC", "DICT_SAMPLES", "DICT_SIZE", "check_dictionary", "train_dictionary"]

#: the first bytes of a zstd dictionary
ZSTD_DICT_MAGIC = b"\x37\xa4\x30\xec"
#: number of records a dictionary is trained on (the first ones added)
DICT_SAMPLES = 256
#: size in bytes of a trained dictionary
DICT_SIZE = 16384
_DICT_MIN_SAMPLES = 8


def check_dictionary(dictionary: bytes) -> None:
    """:class:`FormatError` unless ``dictionary`` is empty or starts like a zstd dictionary."""
    if dictionary and not dictionary.startswith(ZSTD_DICT_MAGIC):
        raise FormatError("dictionary section is not a zstd dictionary")


def train_dictionary(samples: Sequence[bytes], *, level: int, count_size: bool) -> bytes:
    """A dictionary trained on ``samples`` (record bodies), or ``b""`` when it does not make them
    smaller at zstd ``level``; ``count_size`` also charges the dictionary's own size against it
    (``dictionary="auto"``)."""
    if len(samples) < _DICT_MIN_SAMPLES:
        return b""
    try:
        trained = zstandard.train_dictionary(DICT_SIZE, list(samples), k=1024, d=8, steps=0, threads=0, level=level)
    except zstandard.ZstdError:
        return b""
    data = trained.as_bytes()
    if not data:
        return b""
    plain = zstandard.ZstdCompressor(level=level, write_content_size=True)
    base = sum(len(plain.compress(s)) for s in samples)
    cctx = zstandard.ZstdCompressor(level=level, dict_data=zstandard.ZstdCompressionDict(data))
    size = sum(len(cctx.compress(s)) for s in samples)
    return data if size + (len(data) if count_size else 0) < base else b""
