"""The raw codecs ``f32`` (lossless) and ``f16``: arrays stored byte-shuffled, rank-major.

Body layout (spec/ENCODINGS.md): ``indices`` (k*H*W values of the index width), ``scores``
(k*H*W float32 or float16), then ``counts`` (H*W uint8) when FLAG_COUNTS, then ``lse``
(H*W float32) when FLAG_LSE. Every multi-byte array is byte-shuffled: all least-significant bytes
first, then the next byte plane, ..., which lets zstd see the smooth high bytes as runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import DTypeLike

from ..errors import CorruptRecordError
from .base import FLAG_COUNTS, FLAG_LSE, Bodies, RecordArrays
from .batch import byte_planes

__all__ = ["RawCodec", "F32Codec", "F16Codec", "shuffle_bytes", "unshuffle_bytes"]


def shuffle_bytes(a: np.ndarray) -> bytes:
    """Little-endian byte planes of ``a`` (plane 0 = least significant bytes)."""
    le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return le.view(np.uint8).reshape(-1, le.itemsize).T.tobytes()


def unshuffle_bytes(buf: bytes | memoryview | np.ndarray, dtype: DTypeLike, count: int) -> np.ndarray:
    """Inverse of :func:`shuffle_bytes` for ``count`` values of ``dtype``."""
    dt = np.dtype(dtype)
    size = dt.itemsize
    planes = np.frombuffer(buf, dtype=np.uint8, count=count * size)
    if size == 1:
        return planes.view(dt).copy()
    if size == 2:  # two byte planes: combining them beats a strided byte transpose
        out = planes[count:].astype(np.uint16)
        out <<= 8
        out |= planes[:count]
        return out.view(dt.newbyteorder("="))
    le = dt.newbyteorder("<")
    out = np.ascontiguousarray(planes.reshape(size, count).T).view(le).reshape(count)
    return out if le.isnative else out.astype(dt.newbyteorder("="))


class RawCodec:
    """Byte-shuffled raw arrays with scores of :attr:`score_dtype` (the base of ``f32`` and ``f16``)."""

    name = "raw"
    score_dtype: np.dtype = np.dtype(np.float32)
    lossless = False
    #: stored float bits may be NaN or inf: a reader scans decoded values
    finite = False
    #: no parameters
    recommended: ClassVar[Mapping[str, Any]] = {}

    @property
    def spec(self) -> dict[str, Any]:
        return {"name": self.name}

    def max_body_size(self, k: int, h: int, w: int, flags: int, index_itemsize: int) -> int:
        n = k * h * w
        size = n * (index_itemsize + self.score_dtype.itemsize)
        if flags & FLAG_COUNTS:
            size += h * w
        if flags & FLAG_LSE:
            size += 4 * h * w
        return size

    def encode(self, arrays: RecordArrays) -> bytes:
        parts = [shuffle_bytes(arrays.indices), shuffle_bytes(arrays.scores.astype(self.score_dtype))]
        if arrays.counts is not None:
            parts.append(np.ascontiguousarray(arrays.counts, dtype=np.uint8).tobytes())
        if arrays.lse is not None:
            parts.append(shuffle_bytes(arrays.lse.astype(np.float32)))
        return b"".join(parts)

    def encode_many(self, arrays: RecordArrays) -> Bodies:
        """:meth:`encode` of ``N`` records at once (``(N, k, H, W)`` arrays): every body has the same
        length, so the batch is one ``(N, length)`` array of byte planes."""
        n = arrays.indices.shape[0]
        parts = [byte_planes(arrays.indices), byte_planes(arrays.scores.astype(self.score_dtype))]
        if arrays.counts is not None:
            parts.append(np.asarray(arrays.counts, dtype=np.uint8).reshape(n, -1))
        if arrays.lse is not None:
            parts.append(byte_planes(arrays.lse.astype(np.float32)))
        rows = np.concatenate(parts, axis=1)
        return Bodies(rows.tobytes(), np.arange(n + 1, dtype=np.int64) * rows.shape[1])

    def decode(
        self, body: bytes | memoryview, k: int, h: int, w: int, flags: int, index_dtype: DTypeLike
    ) -> RecordArrays:
        index_dtype = np.dtype(index_dtype)
        isize, ssize = index_dtype.itemsize, self.score_dtype.itemsize
        n, m = k * h * w, h * w
        expected = self.max_body_size(k, h, w, flags, isize)  # exact for raw bodies
        if len(body) != expected:
            raise CorruptRecordError(f"{self.name} body is {len(body)} bytes, expected {expected}")
        buf = np.frombuffer(body, dtype=np.uint8)
        if isize == ssize == 2:  # uint16 indices + float16 scores: four byte planes of n values
            planes = buf[: 4 * n].reshape(2, 2, n)  # (indices | scores, low | high byte, value)
            hi = planes[:, 1].astype(np.uint16)
            hi <<= 8
            hi |= planes[:, 0]
            indices = hi[0].reshape(k, h, w)
            scores = hi[1].view(np.float16).astype(np.float32).reshape(k, h, w)
        else:
            indices = unshuffle_bytes(buf[: n * isize], index_dtype, n).reshape(k, h, w)
            scores = unshuffle_bytes(buf[n * isize : n * (isize + ssize)], self.score_dtype, n)
            scores = scores.astype(np.float32, copy=False).reshape(k, h, w)
        pos = n * (isize + ssize)
        counts = lse = None
        if flags & FLAG_COUNTS:
            counts = buf[pos : pos + m].reshape(h, w).copy()
            pos += m
        if flags & FLAG_LSE:
            lse = unshuffle_bytes(buf[pos : pos + 4 * m], np.float32, m).reshape(h, w)
        return RecordArrays(indices, scores, counts, lse)


class F32Codec(RawCodec):
    """``f32``: lossless."""

    name = "f32"
    score_dtype = np.dtype(np.float32)
    lossless = True


class F16Codec(RawCodec):
    """``f16``: scores rounded to float16 (indices, counts and lse stay exact)."""

    name = "f16"
    score_dtype = np.dtype(np.float16)
