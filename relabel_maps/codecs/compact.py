"""The size-optimised ``compact`` codec: a class palette plus quantised logits coded as rank gaps,
with a fixed step for the top ranks and twice that step for the lower ranks.

Body layout (spec/ENCODINGS.md, section "compact"), little-endian::

    header   u32 P, i32 top-1 base, i32 lse base, u8 palette width, u8 score width, u8 lse width, u8 0
    counts   H*W u8                                     (FLAG_COUNTS only)
    palette  P   differences of the sorted distinct classes (the first is the class itself)
    ids      V   palette position of every valid entry, rank-major (u8/u16/u32 by P)
    scores   V   round(score[0] / step) - top-1 base for every location, then the gaps of the valid
                 entries of rank >= 1, in units of their rank's step (step for ranks < fine_ranks,
                 2 * step below), quantised in closed loop against the decoded higher rank
    lse      H*W round((lse - score[0]) / step) - lse base  (FLAG_LSE only)

Multi-byte streams are byte-shuffled (all low bytes first) so zstd sees the near-constant high bytes
as runs. Decoding is a fixed sequence of vectorised numpy operations: a palette lookup and one small
matrix product that turns the byte planes of the score stream straight into scores (a lower-
triangular matrix of ``±step`` or ``-2 * step`` per plane, scaled by 256 per byte), exact in float64
and rounded once to float32. Nothing loops over entries or locations.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import DTypeLike

from ..errors import CorruptRecordError, InvalidArgumentError, InvalidLabelMapError
from .base import FLAG_COUNTS, FLAG_LSE, Bodies, RecordArrays
from .batch import Stream, fixed_stream, join_streams, ragged_rows, shuffled, widths_of
from .raw import shuffle_bytes

__all__ = ["CompactCodec", "DEFAULT_STEP", "DEFAULT_FINE_RANKS", "RECOMMENDED_STEP"]

#: the format's step when an ``encoding`` mapping gives none (spec/ENCODINGS.md section 3)
DEFAULT_STEP = 2.0**-7
#: the step writers use for ``encoding="compact"``: error <= 1/512, float16's worst case for logits
#: in [4, 8); at 1/128 the pooled error of some real teachers' maps exceeds float16's (section 4)
RECOMMENDED_STEP = 2.0**-8
#: ranks quantised with ``step``; lower ranks use ``2 * step`` (spec/ENCODINGS.md, section 4)
DEFAULT_FINE_RANKS = 2
_MAX_RANKS = 255
_HEADER = struct.Struct("<IiiBBBB")
_WIDTHS: dict[int, np.dtype] = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}
_QMAX = 2**30  # |round(x / step)| limit: every stream value then fits 32 bits
#: the body header of many records at once (the layout of ``_HEADER``)
_HEADER_ROWS = np.dtype(
    [("p", "<u4"), ("top", "<i4"), ("lse", "<i4"), ("wp", "u1"), ("ws", "u1"), ("wl", "u1"), ("zero", "u1")]
)
#: largest (records x classes) presence table of a batch palette; above it records are taken in chunks
_PRESENCE_CELLS = 1 << 18


def _width(values: np.ndarray) -> int:
    """Smallest of 1, 2, 4 bytes that holds every (non-negative) value."""
    top = int(values.max()) if values.size else 0
    return 1 if top < 2**8 else 2 if top < 2**16 else 4


def _put(values: np.ndarray, width: int) -> bytes:
    """``values`` as ``width``-byte little-endian integers, byte-shuffled (low byte plane first)."""
    return shuffle_bytes(np.asarray(values, dtype=_WIDTHS[width]))


def _planes(buf: np.ndarray, pos: int, count: int, width: int) -> tuple[np.ndarray, int]:
    """The ``(width, count)`` byte planes of a shuffled stream at ``pos``, and the next position."""
    end = pos + count * width
    return buf[pos:end].reshape(width, count), end


def _join(planes: np.ndarray) -> np.ndarray:
    """Unsigned integers from little-endian byte ``planes`` of shape ``(width, count)``."""
    if len(planes) == 1:
        return planes[0]
    out = planes[-1].astype(_WIDTHS[len(planes)])
    for plane in planes[-2::-1]:
        out <<= 8
        out |= plane
    return out


def _values(planes: np.ndarray, base: float = 0.0) -> np.ndarray:
    """float64 values of shuffled byte ``planes`` (exact: below 2**32 + |base|)."""
    out = np.add(planes[-1], base / 256.0 ** (len(planes) - 1))
    for plane in planes[-2::-1]:
        out *= 256.0
        out += plane
    return out


class CompactCodec:
    """Lossy codec: indices exact; top-1 scores (and lse) rounded to a multiple of ``step``, the
    scores of ranks ``1 .. fine_ranks - 1`` within ``step / 2``, lower ranks within ``step``."""

    name = "compact"
    lossless = False
    #: decoded scores and lse are integers times ``step`` below 2**42 steps: always finite
    finite = True
    #: parameters writers start from (see :func:`relabel_maps.codecs.get_codec`)
    recommended: ClassVar[Mapping[str, Any]] = {"step": RECOMMENDED_STEP, "fine_ranks": DEFAULT_FINE_RANKS}

    def __init__(self, step: float = DEFAULT_STEP, fine_ranks: int = DEFAULT_FINE_RANKS) -> None:
        try:
            e = math.log2(float(step))
        except (TypeError, ValueError):
            e = math.nan
        if not (e == e and e == round(e) and -24 <= e <= 0):
            raise InvalidArgumentError(f"compact step must be a power of two in [2**-24, 1], got {step!r}")
        if isinstance(fine_ranks, bool) or not isinstance(fine_ranks, int) or not 1 <= fine_ranks <= _MAX_RANKS:
            raise InvalidArgumentError(
                f"compact fine_ranks must be an integer in [1, {_MAX_RANKS}], got {fine_ranks!r}"
            )
        self.step = float(step)
        self.fine_ranks = fine_ranks
        self._rank_cache: dict[tuple[int, int], np.ndarray] = {}

    @property
    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "step": self.step, "fine_ranks": self.fine_ranks}

    def _multipliers(self, k: int) -> np.ndarray:
        """Step of each rank in units of ``step``: 1 for ranks < ``fine_ranks``, else 2."""
        return np.where(np.arange(k) < self.fine_ranks, 1, 2)

    def max_body_size(self, k: int, h: int, w: int, flags: int, index_itemsize: int) -> int:
        n, m = k * h * w, h * w
        # palette: <= n classes of the index width; ids and scores: <= 4 bytes per entry
        size = _HEADER.size + n * index_itemsize + n * 4 + n * 4
        if flags & FLAG_COUNTS:
            size += m
        if flags & FLAG_LSE:
            size += m * 4
        return size

    # ------------------------------------------------------------------ encode
    def _quantise(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise InvalidLabelMapError(f"{what} must be finite")
        q = np.rint(x / self.step)
        if q.size and np.abs(q).max() > _QMAX:
            raise InvalidLabelMapError(
                f"{what} up to {np.abs(x).max():.4g} exceed the compact range at step {self.step} "
                f"(|value| <= {_QMAX * self.step:.4g}); use a larger step or the f32 encoding"
            )
        return q.astype(np.int64)

    def encode(self, arrays: RecordArrays) -> bytes:
        idx, scores, counts, lse = arrays
        k, h, w = idx.shape
        m = h * w
        q = self._quantise(scores, "scores").reshape(k, m)
        if counts is None:
            valid = np.ones((k, m), dtype=bool)
        else:
            c = np.asarray(counts, dtype=np.uint8).reshape(m)
            if c.min() < 1 or c.max() > k:
                raise InvalidLabelMapError(f"counts must lie in [1, {k}]")
            valid = np.arange(k)[:, None] < c[None]
        x = np.asarray(scores, dtype=np.float64).reshape(k, m) / self.step  # exact: power-of-two step
        if ((x[:-1] - x[1:])[valid[1:]] < 0).any():
            raise InvalidLabelMapError("scores must be in descending order at every location")
        # closed loop: each gap is taken from the decoded value of the rank above, so errors do not add up
        mult = self._multipliers(k)
        g = np.zeros((k, m), dtype=np.int64)
        level = q[0]
        for r in range(1, k):
            g[r] = np.rint((level - x[r]) / mult[r])
            level = level - g[r] * mult[r]
        gaps = g[1:][valid[1:]]
        palette, ids = np.unique(idx.reshape(k, m)[valid].astype(np.int64), return_inverse=True)
        pal_d = np.diff(palette, prepend=0)
        top_base = int(q[0].min())
        values = np.concatenate([q[0] - top_base, gaps])
        wp, wi, ws = _width(pal_d), _width(np.array([len(palette) - 1])), _width(values)
        parts = [] if counts is None else [c.tobytes()]
        parts += [_put(pal_d, wp), _put(ids, wi), _put(values, ws)]
        wl, lse_base = 1, 0
        if lse is not None:
            ql = self._quantise(np.asarray(lse, dtype=np.float64).reshape(m) - q[0] * self.step, "lse - top-1 score")
            lse_base = int(ql.min())
            wl = _width(ql - lse_base)
            parts.append(_put(ql - lse_base, wl))
        return _HEADER.pack(len(palette), top_base, lse_base, wp, ws, wl, 0) + b"".join(parts)

    def encode_many(self, arrays: RecordArrays) -> Bodies:
        """:meth:`encode` of ``N`` records at once (``(N, k, H, W)`` arrays; spec/ENCODINGS.md 3.1-3.2):
        the same quantisation, streams and widths, computed for the whole batch per numpy call
        (integers are carried in float64, exact below 2**53)."""
        idx, scores, counts, lse = arrays
        n, k, h, w = idx.shape
        m = h * w
        x = self._scaled(scores, "scores").reshape(n, k, m)
        valid = None
        if counts is not None:
            c = np.asarray(counts, dtype=np.uint8).reshape(n, m)
            if n and (c.min() < 1 or c.max() > k):
                raise InvalidLabelMapError(f"counts must lie in [1, {k}]")
            valid = np.arange(k)[None, :, None] < c[:, None, :]
        falling = x[:, :-1] < x[:, 1:]
        if (falling if valid is None else falling & valid[:, 1:]).any():
            raise InvalidLabelMapError("scores must be in descending order at every location")
        g = np.empty((n, k, m))  # rank 0: the top-1 value against its base; ranks >= 1: the gaps
        top = np.rint(x[:, 0])
        level = top.copy()
        for r, mult in enumerate(self._multipliers(k)[1:].tolist(), start=1):  # closed loop (see encode)
            gap = np.rint((level - x[:, r]) / mult if mult != 1 else level - x[:, r], out=g[:, r])
            level -= gap * mult if mult != 1 else gap
        top_base = top.min(axis=1)
        np.subtract(top, top_base[:, None], out=g[:, 0])
        flat_valid = None if valid is None else valid.reshape(n, k * m)
        palette, npal, ids = _palettes(idx.reshape(n, k * m), flat_valid)
        starts = np.cumsum(npal) - npal
        pal_d = np.diff(palette, prepend=0)
        pal_d[starts] = palette[starts]
        values, nvalid = g.reshape(n, k * m), None
        if flat_valid is not None:  # the valid entries, rank-major, at the front of each row
            nvalid = flat_valid.sum(axis=1)
            ids, values = ragged_rows(ids[flat_valid], nvalid), ragged_rows(values[flat_valid], nvalid)
        head = np.zeros(n, dtype=_HEADER_ROWS)
        wp, wi, ws = widths_of(np.maximum.reduceat(pal_d, starts)), widths_of(npal - 1), widths_of(values.max(axis=1))
        head["p"], head["top"], head["wp"], head["ws"], head["wl"] = npal, top_base, wp, ws, 1
        tail = []
        if lse is not None:
            ql = np.rint(self._scaled(np.asarray(lse, dtype=np.float64).reshape(n, m) - top * self.step,
                                      "lse - top-1 score"))
            lse_base = ql.min(axis=1)
            ql -= lse_base[:, None]
            wl = widths_of(ql.max(axis=1))
            head["lse"], head["wl"] = lse_base, wl
            tail.append(shuffled(ql, wl))
        streams: list[Stream] = [fixed_stream(head.view(np.uint8).reshape(n, _HEADER.size))]
        if counts is not None:
            streams.append(fixed_stream(c))
        streams += [shuffled(ragged_rows(pal_d, npal), wp, npal), shuffled(ids, wi, nvalid)]
        return join_streams([*streams, shuffled(values, ws, nvalid), *tail])

    def _scaled(self, x: np.ndarray, what: str) -> np.ndarray:
        """``x / step`` in float64 with the checks of :meth:`_quantise` (finite, rounding within range)."""
        v = np.asarray(x, dtype=np.float64) / self.step
        if v.size and not (np.isfinite(v).all() and v.max() <= _QMAX + 0.5 and v.min() >= -_QMAX - 0.5):
            self._quantise(x, what)  # raises the precise error
        return v

    # ------------------------------------------------------------------ decode
    def _ranks(self, k: int, planes: int) -> np.ndarray:
        """``(k, planes*k)`` matrix turning the byte planes of (top-1, gap 1, ..., gap k-1) into scores.

        Its block for plane ``b`` is ``256**b`` times the ``(k, k)`` matrix with ``step`` in column 0
        and, on and below the diagonal, ``-step`` in columns ``1 .. fine_ranks - 1`` and ``-2 * step``
        in the others: score[r] = step * (top-1 - m_1 * gap 1 - ... - m_r * gap r).
        """
        mat = self._rank_cache.get((k, planes))
        if mat is None:
            one = np.tril(-self.step * self._multipliers(k)[None, :] * np.ones((k, 1)))
            one[:, 0] = self.step
            one[0, 1:] = 0.0
            mat = self._rank_cache[(k, planes)] = np.concatenate([one * 256.0**b for b in range(planes)], axis=1)
        return mat

    def decode(
        self, body: bytes | memoryview, k: int, h: int, w: int, flags: int, index_dtype: DTypeLike
    ) -> RecordArrays:
        index_dtype = np.dtype(index_dtype)
        m = h * w
        buf = np.frombuffer(body, dtype=np.uint8)
        size = buf.size
        if size < _HEADER.size:
            raise CorruptRecordError(f"compact body of {size} bytes is shorter than its header")
        npal, top_base, lse_base, wp, ws, wl, reserved = _HEADER.unpack_from(body, 0)
        if wp not in _WIDTHS or ws not in _WIDTHS or wl not in _WIDTHS or reserved:
            raise CorruptRecordError("compact body declares an invalid stream width")
        pos = _HEADER.size
        counts = valid = None
        nvalid = k * m
        if flags & FLAG_COUNTS:
            if size < pos + m:
                raise CorruptRecordError("compact body truncated inside counts")
            counts = buf[pos : pos + m].reshape(h, w).copy()
            pos += m
            if counts.min() < 1 or counts.max() > k:
                raise CorruptRecordError(f"compact counts outside [1, {k}]")
            valid = np.arange(k)[:, None] < counts.reshape(1, m)
            nvalid = int(counts.sum(dtype=np.int64))
        if not 1 <= npal <= nvalid:
            raise CorruptRecordError(f"compact palette size {npal} outside [1, {nvalid}]")
        wi = 1 if npal <= 2**8 else 2 if npal <= 2**16 else 4
        expected = pos + npal * wp + nvalid * (wi + ws) + (m * wl if flags & FLAG_LSE else 0)
        if size != expected:
            raise CorruptRecordError(f"compact body is {size} bytes, its header implies {expected}")
        pal_planes, pos = _planes(buf, pos, npal, wp)
        pal_d = _join(pal_planes)
        if not pal_d[1:].all():
            raise CorruptRecordError("compact palette is not strictly increasing")
        palette = np.cumsum(pal_d, dtype=np.int64)
        if int(palette[-1]) >> (8 * index_dtype.itemsize):
            raise CorruptRecordError("compact palette holds a class index wider than the index type")
        id_planes, pos = _planes(buf, pos, nvalid, wi)
        ids = _join(id_planes)
        if ids.max() >= npal:
            raise CorruptRecordError("compact palette id out of range")
        score_planes, pos = _planes(buf, pos, nvalid, ws)
        palette = palette.astype(index_dtype)
        # products and sums below are exact in float64 (|values| < 2**42 steps), then rounded once
        if valid is None:
            indices = palette.take(ids).reshape(k, h, w)
            res = self._ranks(k, ws) @ score_planes.reshape(ws * k, m).astype(np.float64)
        else:
            indices = np.zeros((k, m), dtype=index_dtype)
            indices[valid] = palette.take(ids)
            indices = indices.reshape(k, h, w)
            values = _values(score_planes)
            v = np.zeros((k, m))
            v[0] = values[:m]
            v[1:][valid[1:]] = values[m:]
            res = self._ranks(k, 1) @ v
        res += top_base * self.step
        scores = res.astype(np.float32)
        if valid is not None:
            scores[~valid] = 0.0
        lse = None
        if flags & FLAG_LSE:
            lse_planes, pos = _planes(buf, pos, m, wl)
            lv = _values(lse_planes, float(lse_base))
            lv *= self.step
            lv += res[0]
            lse = lv.astype(np.float32).reshape(h, w)
        return RecordArrays(indices, scores.reshape(k, h, w), counts, lse)


def _palettes(classes: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per record (row of ``classes``), the sorted distinct classes of its valid entries and each
    entry's position among them: ``(palettes back to back, palette sizes, (N, n) positions)``."""
    n, cols = classes.shape
    span = int(classes.max()) + 1 if classes.size else 1
    if span > _PRESENCE_CELLS:  # wide class indices: sort (record, class) pairs
        keyed = np.arange(n, dtype=np.int64)[:, None] * span + classes
        rec = np.repeat(np.arange(n), cols) if valid is None else np.nonzero(valid)[0]
        uniq, inverse = np.unique(keyed.reshape(-1) if valid is None else keyed[valid], return_inverse=True)
        npal = np.bincount(uniq // span, minlength=n).astype(np.int64)
        pos = inverse.reshape(-1) - (np.cumsum(npal) - npal)[rec]
        ids = np.zeros((n, cols), dtype=np.int64)
        ids[np.ones_like(classes, dtype=bool) if valid is None else valid] = pos
        return uniq % span, npal, ids
    pals, sizes, ids_parts = [], [], []
    step = max(1, _PRESENCE_CELLS // span)
    # ranks count in int16 when a palette cannot exceed 32767 classes (wrapping sums stay exact per row)
    rank_type = np.int16 if span < 2**15 else np.int32
    for lo in range(0, n, step):  # a presence table of (records x classes), a chunk of records at a time
        rows = min(n, lo + step) - lo
        keyed = np.arange(rows, dtype=np.int32 if rows * span < 2**31 else np.int64)[:, None] * span
        keyed = keyed + classes[lo : lo + rows]
        seen = np.zeros(rows * span, dtype=bool)
        seen[keyed if valid is None else keyed[valid[lo : lo + rows]]] = True
        rank = np.cumsum(seen, dtype=rank_type)
        rank -= 1
        before = np.empty(rows, dtype=rank_type)  # classes seen in the rows above
        before[0], before[1:] = 0, rank[span - 1 : -1 : span] + 1
        ids = np.take(rank, keyed)
        ids -= before[:, None]
        ids_parts.append(ids)
        sizes.append((rank[span - 1 :: span] + 1 - before).astype(np.int64))
        pals.append(np.flatnonzero(seen) % span)
    return np.concatenate(pals).astype(np.int64), np.concatenate(sizes).astype(np.int64), np.concatenate(ids_parts)
