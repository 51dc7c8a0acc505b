"""Building blocks of batch encoding: the byte-shuffled streams of many records at once, and their
assembly into back-to-back bodies (:class:`~relabel_maps.codecs.base.Bodies`).

A *stream* of a batch is ``(data, nbytes)``: the bytes of every record's stream back to back, and
how many belong to each record. Streams are built with whole-batch numpy operations; only
:func:`join_streams` visits the records one by one, to cut and join slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Bodies

__all__ = ["Stream", "byte_planes", "fixed_stream", "join_streams", "shuffled", "widths_of"]

#: a batch's stream: every record's bytes back to back, and the byte count of each record's part
Stream = tuple[np.ndarray, np.ndarray]


def widths_of(top: np.ndarray) -> np.ndarray:
    """Per record, the smallest of 1, 2, 4 bytes that holds ``top`` (its largest non-negative value)."""
    top = np.asarray(top, dtype=np.int64)
    return np.where(top < 2**8, 1, np.where(top < 2**16, 2, 4)).astype(np.int64)


def byte_planes(a: np.ndarray) -> np.ndarray:
    """``(N, itemsize * count)`` uint8: row ``i`` is record ``i``'s values of ``a`` (``(N, ...)``)
    as little-endian byte planes, lowest byte plane first (spec/ENCODINGS.md "byte shuffle")."""
    n = a.shape[0]
    le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).reshape(n, -1)
    size = le.dtype.itemsize
    if size == 1:
        return le.view(np.uint8)
    planes = le.view(np.uint8).reshape(n, -1, size).transpose(0, 2, 1)
    return np.ascontiguousarray(planes).reshape(n, -1)


def fixed_stream(rows: np.ndarray) -> Stream:
    """The stream of ``(N, L)`` uint8 rows (``L`` bytes per record)."""
    n, length = rows.shape
    return np.ascontiguousarray(rows).reshape(-1), np.full(n, length, dtype=np.int64)


def shuffled(values: np.ndarray, widths: np.ndarray, lengths: np.ndarray | None = None) -> Stream:
    """Record ``i``'s first ``lengths[i]`` values of row ``values[i]`` (all of them when ``lengths``
    is None), as ``widths[i]``-byte integers, byte-shuffled. ``values``: ``(N, L)`` non-negative,
    below 2**32."""
    n, cols = values.shape
    wmax = int(widths.max()) if n else 1
    dtype = np.dtype("<u1") if wmax == 1 else np.dtype("<u2") if wmax == 2 else np.dtype("<u4")
    planes = np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(n, cols, wmax)
    planes = np.ascontiguousarray(planes.transpose(0, 2, 1))  # (N, wmax, L)
    if lengths is None and bool((widths == wmax).all()):
        return planes.reshape(-1), np.full(n, wmax * cols, dtype=np.int64)
    keep = np.arange(wmax)[None, :, None] < widths[:, None, None]
    count = np.full(n, cols, dtype=np.int64) if lengths is None else lengths.astype(np.int64)
    if lengths is not None:
        keep = keep & (np.arange(cols)[None, None, :] < count[:, None, None])
    return planes[np.broadcast_to(keep, planes.shape)], widths * count


def ragged_rows(flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``(N, max(lengths))`` rows holding record ``i``'s ``lengths[i]`` values of ``flat`` (the
    records' values back to back), padded with zeros."""
    n = len(lengths)
    out = np.zeros((n, int(lengths.max()) if n else 0), dtype=flat.dtype)
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(n), lengths)
    out[row, np.arange(len(flat)) - starts[row]] = flat
    return out


def join_streams(streams: Sequence[Stream]) -> Bodies:
    """Bodies made of each record's part of every stream, in the order of ``streams``."""
    n = len(streams[0][1]) if streams else 0
    sizes = np.zeros(n, dtype=np.int64)
    cuts = []
    for _, nbytes in streams:
        sizes += nbytes
        cuts.append(np.concatenate(([0], np.cumsum(nbytes))).tolist())
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    views = [np.ascontiguousarray(data, dtype=np.uint8).data for data, _ in streams]
    parts = [view[c[i] : c[i + 1]] for i in range(n) for view, c in zip(views, cuts, strict=True)]
    return Bodies(b"".join(parts), offsets)
