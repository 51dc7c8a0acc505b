"""RoIAlign geometry in plain numpy: crop-box checks, sample points and bilinear weights.

Everything here follows spec/POOLING.md. The one geometric primitive is :func:`box_weights`, the
``(Sh*Sw, H*W)`` matrix of RoIAlign's bilinear sampling weights for one box; it is separable into
one ``(S, H)`` and one ``(S, W)`` factor (:func:`separable_weights`), which is how it is computed.
:func:`roi_align` applies it to a dense ``(C, H, W)`` array and matches ``torchvision.ops.roi_align``;
:func:`single_bin_weights` is the fast path for a 1x1 output of a box inside the frame.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .errors import InvalidArgumentError, InvalidBoxError

__all__ = [
    "MAX_SAMPLES",
    "Box",
    "as_box",
    "check_box",
    "check_boxes",
    "check_output_size",
    "check_sampling_ratio",
    "separable_weights",
    "grid_weights",
    "single_bin_weights",
    "box_weights",
    "roi_align",
]

#: upper bound on the sample points (both axes together) of one box; larger requests are refused
MAX_SAMPLES = 1 << 20

#: a box ``(x0, y0, x1, y1)``
Box = tuple[float, float, float, float]

_F32 = np.float32
_ONE = _F32(1.0)
_HALF = _F32(0.5)
_F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------- checks
def as_box(box: Sequence[float]) -> Box:
    """``box`` as 4 finite floats in any order (RoIAlign accepts empty and inverted boxes), else
    :class:`InvalidBoxError`."""
    try:
        x0, y0, x1, y1 = map(float, box)
    except (TypeError, ValueError) as exc:
        raise InvalidBoxError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}") from exc
    if not math.isfinite(x0 + y0 + x1 + y1):  # NaN/inf (or sums beyond float range) anywhere
        raise InvalidBoxError(f"box coordinates must be finite, got {(x0, y0, x1, y1)}")
    return x0, y0, x1, y1


def check_box(box: Sequence[float]) -> Box:
    """A crop box as 4 finite floats ``(x0, y0, x1, y1)`` with ``x0 < x1`` and ``y0 < y1``, else
    :class:`InvalidBoxError`."""
    x0, y0, x1, y1 = as_box(box)
    if not (x0 < x1 and y0 < y1):
        raise InvalidBoxError(f"box must satisfy x0 < x1 and y0 < y1, got {(x0, y0, x1, y1)}")
    return x0, y0, x1, y1


def check_boxes(boxes: np.ndarray) -> np.ndarray:
    """A ``(B, 4)`` batch of crop boxes as float64, every row following :func:`check_box`'s rules,
    else :class:`InvalidBoxError` naming the first bad row."""
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidBoxError(f"boxes must be a (B, 4) array of numbers: {exc}") from exc
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InvalidBoxError(f"boxes must have shape (B, 4), got {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise InvalidBoxError(f"boxes contain NaN or inf: box {i} is {tuple(arr[i].tolist())}")
    ordered = (arr[:, 0] < arr[:, 2]) & (arr[:, 1] < arr[:, 3])
    if not ordered.all():
        i = int(np.flatnonzero(~ordered)[0])
        raise InvalidBoxError(
            f"boxes must satisfy x0 < x1 and y0 < y1: box {i} is {tuple(arr[i].tolist())} (empty or inverted)"
        )
    return arr


def check_output_size(output_size: int | Sequence[int]) -> tuple[int, int]:
    """``(Sh, Sw)`` from a positive int or a pair of them, else :class:`InvalidArgumentError`."""
    size = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size):
        raise InvalidArgumentError(f"output size must be a positive int or a pair of them, got {output_size!r}")
    return int(size[0]), int(size[1])


def check_sampling_ratio(sampling_ratio: int) -> int:
    """``sampling_ratio`` as an int (``<= 0``: adaptive), else :class:`InvalidArgumentError`."""
    if not isinstance(sampling_ratio, (int, np.integer)) or isinstance(sampling_ratio, bool):
        raise InvalidArgumentError(f"sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio!r}")
    return int(sampling_ratio)


# ---------------------------------------------------------------------------------------------- sampling
@lru_cache(maxsize=1024)
def _template(sy: int, gy: int, h: int, sx: int, gx: int, w: int) -> tuple[np.ndarray, ...]:
    """Box-independent arrays of the sample points of a (sy x sx) output with (gy x gx) samples
    per bin on an (h x w) grid: the y samples first, then the x samples."""
    ny, nx = sy * gy, sx * gx
    cat = np.concatenate
    axis = cat([np.zeros(ny, np.intp), np.ones(nx, np.intp)])
    p = cat([np.repeat(np.arange(sy), gy), np.repeat(np.arange(sx), gx)]).astype(_F32)
    half = cat([np.tile(np.arange(gy) + 0.5, sy), np.tile(np.arange(gx) + 0.5, sx)]).astype(_F32)
    grid = cat([np.full(ny, gy), np.full(nx, gx)]).astype(_F32)
    lim = cat([np.full(ny, h), np.full(nx, w)]).astype(_F32)
    last = lim - _ONE
    off = cat([np.repeat(np.arange(sy) * h, gy), sy * h + np.repeat(np.arange(sx) * w, gx)]).astype(np.int64)
    arrays = (axis, p, half, grid, lim, last, off)
    for a in arrays:
        a.setflags(write=False)
    return arrays


@lru_cache(maxsize=256)
def _bins(sy: int, sx: int) -> np.ndarray:
    out = np.array((sy, sx), dtype=_F32)
    out.setflags(write=False)
    return out


def _sample_axes(
    y0: float, y1: float, sy: int, h: int, x0: float, x1: float, sx: int, w: int, sampling_ratio: int, aligned: bool
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Both axes of RoIAlign's sampling in one vectorised pass: ``(A_y, A_x, n_y, n_x)``, with
    ``A_y`` (sy, h) and ``A_x`` (sx, w) the sums, over each bin's ``n`` sample points along that axis,
    of the 1-D bilinear weights (a 2-D bin's weights are the outer product of its two rows divided by
    ``max(n_y * n_x, 1)``).

    Bounds are in grid coordinates; the arithmetic follows torchvision's CPU kernel in float32,
    operation for operation, so that sample positions (and the -1 / size cut-offs) round alike.
    """
    if max(abs(y0), abs(y1), abs(x0), abs(x1)) > _F32_MAX:
        raise InvalidBoxError(f"grid box {(x0, y0, x1, y1)} overflows float32")
    b = np.array((y0, x0, y1, x1), dtype=_F32)
    if aligned:
        b -= _HALF
    lo = b[:2]
    size = b[2:] - lo
    if not aligned:
        size = np.maximum(size, _ONE)
    step = size / _bins(sy, sx)
    qy, qx = step.tolist()
    if not (math.isfinite(qy) and math.isfinite(qx)):
        raise InvalidBoxError(f"grid box {(x0, y0, x1, y1)} overflows float32")
    if sampling_ratio > 0:
        gy = gx = sampling_ratio
    else:  # adaptive: ceil(roi_size / bins) per axis, from the float32 quotient
        gy, gx = math.ceil(qy), math.ceil(qx)
    if sy * gy + sx * gx > MAX_SAMPLES:
        raise InvalidBoxError(
            f"grid box {(x0, y0, x1, y1)} needs {sy * gy} x {sx * gx} sample points "
            f"(more than {MAX_SAMPLES} per call): "
            "it is far larger than the grid, or the sampling ratio is too large"
        )
    if gy <= 0 or gx <= 0:  # an empty or inverted box with adaptive sampling: no sample points
        return np.zeros((sy, h)), np.zeros((sx, w)), max(gy, 0), max(gx, 0)
    axis, p, half, grid, lim, last, off = _template(sy, gy, h, sx, gx, w)
    st = step[axis]
    if sy == sx == 1:  # bin index 0: start + 0 * step == start exactly
        pos = lo[axis] + (half * st) / grid
    else:
        pos = (lo[axis] + p * st) + (half * st) / grid
    ny = sy * gy
    a, z, c, d = pos[[0, ny - 1, ny, -1]].tolist()  # each axis is monotonic: its ends bound it
    if min(a, z) >= 0 and max(a, z) < h - 1 and min(c, d) >= 0 and max(c, d) < w - 1:
        low = pos.astype(np.int64)  # the common case: no border or out-of-range rule applies
        frac = pos - low
        below = 1.0 - frac
    else:
        valid = (pos >= -1.0) & (pos <= lim)  # samples outside [-1, size] contribute 0
        pos = np.minimum(np.maximum(pos, _F32(0.0)), last)  # then clamp onto the grid
        low = pos.astype(np.int64)
        frac = np.where(valid, pos - low, 0.0)
        below = np.where(valid, 1.0 - (pos - low), 0.0)
    idx = off + low
    n = sy * h + sx * w
    flat = np.bincount(idx, below, minlength=n + 1)
    flat += np.bincount(idx + 1, frac, minlength=n + 1)
    return flat[: sy * h].reshape(sy, h), flat[sy * h : n].reshape(sx, w), gy, gx


@lru_cache(maxsize=1024)
def separable_weights(
    box: Box,
    height: int,
    width: int,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``(A_y / count, A_x)``: the ``(Sh, H)`` and ``(Sw, W)`` factors of :func:`box_weights` for an
    already checked ``box`` in input-grid coordinates (cached, read-only)."""
    x0, y0, x1, y1 = box
    if spatial_scale != 1.0:
        scale = _F32(spatial_scale)
        x0, y0, x1, y1 = (float(_F32(v) * scale) for v in box)
    sy, sx = output_size
    wy, wx, gy, gx = _sample_axes(y0, y1, sy, height, x0, x1, sx, width, sampling_ratio, aligned)
    wy = wy / max(gy * gx, 1)
    wy.setflags(write=False)
    wx.setflags(write=False)
    return wy, wx


def grid_weights(box: Box, height: int, width: int, size: int, sampling_ratio: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`separable_weights` of a box normalised to the frame, on an ``height x width`` grid
    (``x * W``, ``y * H``, ``aligned=True``) with a ``size x size`` output."""
    x0, y0, x1, y1 = box
    grid_box = (x0 * width, y0 * height, x1 * width, y1 * height)
    return separable_weights(grid_box, height, width, (size, size), 1.0, sampling_ratio, True)


# ---------------------------------------------------------------------------------------------- 1x1 fast path
class _S1Template(NamedTuple):
    """Box-independent arrays for a 1x1 output sampled ``gy`` x ``gx`` times on an ``h x w`` grid:
    the y samples first, then the x samples (see :func:`single_bin_weights`)."""

    take: np.ndarray  # (2, n) positions in [lo_y, lo_x, size_y, size_x] of each sample's start, size
    half: np.ndarray  # (n,) f32 sample offsets iy + 0.5
    grid: np.ndarray  # (n,) f32 samples per bin along the sample's axis
    last: np.ndarray  # (n,) f32 last grid coordinate along the sample's axis
    sums: np.ndarray  # (2, n) per-axis sums, the y row scaled by 1 / (gy * gx)


@lru_cache(maxsize=1024)
def _s1_template(gy: int, gx: int, h: int, w: int) -> _S1Template:
    y, x = np.zeros(gy, np.intp), np.ones(gx, np.intp)
    sums = np.zeros((2, gy + gx))
    sums[0, :gy] = 1.0 / (gy * gx)
    sums[1, gy:] = 1.0
    arrays = _S1Template(
        np.stack([np.concatenate([y, x]), np.concatenate([y, x]) + 2]),
        np.concatenate([np.arange(gy) + 0.5, np.arange(gx) + 0.5]).astype(_F32),
        np.concatenate([np.full(gy, gy), np.full(gx, gx)]).astype(_F32),
        np.concatenate([np.full(gy, h - 1), np.full(gx, w - 1)]).astype(_F32),
        sums,
    )
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _f32(values: tuple[float, ...]) -> array[float]:
    """``values`` rounded to float32 (round to nearest even)."""
    return array("f", values)


@lru_cache(maxsize=64)
def _coords(n: int) -> np.ndarray:
    """``arange(n)`` as float64, read-only."""
    out = np.arange(n, dtype=np.float64)
    out.setflags(write=False)
    return out


def single_bin_weights(box: Box, h: int, w: int, sampling_ratio: int) -> np.ndarray | None:
    """``(H, W)`` float64 RoIAlign weights of a 1x1 output for a normalised ``box`` lying inside the
    frame (``0 <= x0 < x1 <= 1``, same for y), or ``None`` when another rule applies (a box reaching
    outside, an empty box): then :func:`grid_weights` handles it.

    Same sample points as :func:`grid_weights` (float32, operation for operation). Inside the frame
    every sample lies in ``[-0.5, size - 0.5]``, so only the clamp onto ``[0, size - 1]`` applies, and
    each sample's bilinear weights are the tent ``max(0, 1 - |p - j|)`` over the grid coordinates ``j``.
    """
    x0, y0, x1, y1 = box
    if not (0.0 <= x0 and x1 <= 1.0 and 0.0 <= y0 and y1 <= 1.0):
        return None
    # float32 box arithmetic of _sample_axes on Python floats: each float64 result of an operation on
    # float32 values, rounded to float32 (array "f"), is the float32 result of that operation
    b0, b1, b2, b3 = _f32((y0 * h, x0 * w, y1 * h, x1 * w))
    ly, lx, hy, hx = _f32((b0 - 0.5, b1 - 0.5, b2 - 0.5, b3 - 0.5))  # aligned=True
    qy, qx = _f32((hy - ly, hx - lx))  # one bin: step == size
    if sampling_ratio > 0:
        gy = gx = sampling_ratio
    else:
        gy, gx = math.ceil(qy), math.ceil(qx)
        if gy <= 0 or gx <= 0:
            return None
    t = _s1_template(gy, gx, h, w)
    lq = np.array((ly, lx, qy, qx), dtype=_F32).take(t.take)
    pos = t.half * lq[1]
    pos /= t.grid
    pos += lq[0]
    # clamp onto [0, size - 1] where a sample may leave it (first / last samples; 1e-4 >> rounding)
    if ly + 0.5 * qy / gy < 1e-4 or lx + 0.5 * qx / gx < 1e-4:
        np.maximum(pos, 0.0, out=pos)
    if ly + qy * (1.0 - 0.5 / gy) > h - 1.0001 or lx + qx * (1.0 - 0.5 / gx) > w - 1.0001:
        np.minimum(pos, t.last, out=pos)
    tent = np.subtract(pos[:, None], _coords(max(h, w)))
    np.abs(tent, out=tent)
    np.subtract(1.0, tent, out=tent)
    np.maximum(tent, 0.0, out=tent)
    a = t.sums @ tent
    return a[0, :h, None] * a[1, :w]


# ---------------------------------------------------------------------------------------------- public
def box_weights(
    box: Sequence[float],
    height: int,
    width: int,
    output_size: int | Sequence[int] = 1,
    *,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> np.ndarray:
    """``(Sh*Sw, H*W)`` float64 RoIAlign weights of ``box`` (``x0, y0, x1, y1`` in input-grid
    coordinates before ``spatial_scale``): ``roi_align(x)[c].ravel() == weights @ x[c].ravel()``.
    Bins are ordered row-major (``y`` then ``x``)."""
    b = as_box(box)
    size = check_output_size(output_size)
    sr = check_sampling_ratio(sampling_ratio)
    h, w = int(height), int(width)
    wy, wx = separable_weights(b, h, w, size, float(spatial_scale), sr, bool(aligned))
    return (wy[:, None, :, None] * wx[None, :, None, :]).reshape(size[0] * size[1], h * w)


def roi_align(
    input: np.ndarray,
    box: Sequence[float],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> np.ndarray:
    """Reference RoIAlign of one box over a ``(C, H, W)`` array, matching
    ``torchvision.ops.roi_align(input[None], [box[None]], output_size, spatial_scale, sampling_ratio,
    aligned)[0]`` (CPU semantics). Returns ``(C, Sh, Sw)`` float32 (accumulated in float64)."""
    x = np.asarray(input)
    if x.ndim != 3 or min(x.shape) < 1:
        raise InvalidArgumentError(f"input must have shape (C, H, W) with positive sizes, got {x.shape}")
    c, h, w = x.shape
    size = check_output_size(output_size)
    weights = box_weights(box, h, w, size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned)
    out = x.reshape(c, h * w).astype(np.float64) @ weights.T
    return out.reshape(c, size[0], size[1]).astype(np.float32)
