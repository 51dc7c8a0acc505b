"""Soft labels of crops: reference RoIAlign (numpy) and the sparse top-k pooler.

Everything here follows spec/POOLING.md. The one geometric primitive is :func:`box_weights`, the
``(Sh*Sw, H*W)`` matrix of RoIAlign's bilinear sampling weights for one box; it is separable into
one ``(S, H)`` and one ``(S, W)`` factor, which is how it is computed. Both the dense reference
(:func:`roi_align`, :func:`pool_dense`) and the sparse path (:func:`pool`, which only touches the
``k*H*W`` stored entries) use it, so they agree to rounding.

Only numpy and the standard library are imported.
"""

from __future__ import annotations

import math
from array import array
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from .errors import InvalidArgumentError, InvalidBoxError

if TYPE_CHECKING:  # pragma: no cover
    from .labelmap import LabelMap

__all__ = [
    "FILL_MODES",
    "MAX_SAMPLES",
    "box_weights",
    "roi_align",
    "pool",
    "pool_dense",
    "default_fill",
    "relabel_compat",
    "to_official_coords",
    "from_official_coords",
]

#: fill modes of spec/POOLING.md, "Fill modes"
FILL_MODES = ("zero", "topk", "uniform")

#: upper bound on the sample points (both axes together) of one box; larger requests are refused
MAX_SAMPLES = 1 << 20

_F32 = np.float32
_ONE = _F32(1.0)
_HALF = _F32(0.5)
_F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------- geometry
def _check_box(box: Sequence[float], *, ordered: bool) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = map(float, box)
    except (TypeError, ValueError) as exc:
        raise InvalidBoxError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}") from exc
    if not math.isfinite(x0 + y0 + x1 + y1):  # NaN/inf (or sums beyond float range) anywhere
        raise InvalidBoxError(f"box coordinates must be finite, got {(x0, y0, x1, y1)}")
    if ordered and not (x0 < x1 and y0 < y1):
        raise InvalidBoxError(f"box must satisfy x0 < x1 and y0 < y1, got {(x0, y0, x1, y1)}")
    return x0, y0, x1, y1


def _check_output_size(output_size: int | Sequence[int]) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size):
        raise InvalidArgumentError(f"output size must be a positive int or a pair of them, got {output_size!r}")
    return int(size[0]), int(size[1])


def _check_sampling_ratio(sampling_ratio: int) -> int:
    if not isinstance(sampling_ratio, (int, np.integer)) or isinstance(sampling_ratio, bool):
        raise InvalidArgumentError(f"sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio!r}")
    return int(sampling_ratio)


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
def _separable_weights(
    box: tuple[float, float, float, float],
    height: int,
    width: int,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``(A_y / count, A_x)``: the two factors of :func:`box_weights` (cached, read-only)."""
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
    b = _check_box(box, ordered=False)
    size = _check_output_size(output_size)
    sr = _check_sampling_ratio(sampling_ratio)
    wy, wx = _separable_weights(b, int(height), int(width), size, float(spatial_scale), sr, bool(aligned))
    return (wy[:, None, :, None] * wx[None, :, None, :]).reshape(size[0] * size[1], int(height) * int(width))


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
    size = _check_output_size(output_size)
    weights = box_weights(box, h, w, size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned)
    out = x.reshape(c, h * w).astype(np.float64) @ weights.T
    return out.reshape(c, size[0], size[1]).astype(np.float32)


# ---------------------------------------------------------------------------------------------- pooling
def default_fill(score_kind: str) -> str:
    """The fill mode used when none is given: ``"zero"`` for logit maps (ReLabel), ``"uniform"``
    for probability maps (FKD)."""
    return "uniform" if score_kind == "probabilities" else "zero"


def _check_pool_args(
    labelmap: "LabelMap", box: Sequence[float], size: int, fill: str | None, temperature: float, sampling_ratio: int
) -> tuple[tuple[float, float, float, float], int, str, float, int]:
    b = _check_box(box, ordered=True)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise InvalidArgumentError(f"size must be a positive int, got {size!r}")
    mode = default_fill(labelmap.score_kind) if fill is None else fill
    if mode not in FILL_MODES:
        raise InvalidArgumentError(f"fill must be one of {FILL_MODES} or None, got {fill!r}")
    try:
        t = float(temperature)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"temperature must be a positive number, got {temperature!r}") from exc
    if not (math.isfinite(t) and t > 0.0):
        raise InvalidArgumentError(f"temperature must be a positive finite number, got {temperature!r}")
    if mode == "uniform":
        if t != 1.0:
            raise InvalidArgumentError(
                "fill='uniform' uses the stored probabilities as they are; temperature must be 1.0"
            )
        if labelmap.score_kind == "logits" and labelmap.lse is None:
            raise InvalidArgumentError(
                "fill='uniform' needs probabilities: this logit map has no per-location log-sum-exp (lse); "
                "use fill='zero' or fill='topk'"
            )
    return b, int(size), mode, t, _check_sampling_ratio(sampling_ratio)


def _grid_weights(
    labelmap: "LabelMap", box: tuple[float, float, float, float], size: int, sampling_ratio: int
) -> tuple[np.ndarray, np.ndarray]:
    """Separable weights of a normalised box on the map's grid (x*W, y*H, aligned=True)."""
    h, w = labelmap.height, labelmap.width
    x0, y0, x1, y1 = box
    return _separable_weights((x0 * w, y0 * h, x1 * w, y1 * h), h, w, (size, size), 1.0, sampling_ratio, True)


def _location_values(labelmap: "LabelMap", mode: str, temperature: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-location values of the fill mode (spec/POOLING.md, "Fill modes") in sparse form:
    ``(v, u)`` where every class at location ``l`` has the value ``u[l]`` (0 when ``u`` is None) plus,
    for a stored entry, ``v[r, l]``. ``v`` is (k, H*W), 0 at padding entries; ``u`` is (H*W,)."""
    k, h, w = labelmap.shape
    valid = None if labelmap.counts is None else labelmap.valid().reshape(k, h * w)
    if mode == "zero" and valid is None and temperature == 1.0:
        return labelmap.scores.reshape(k, h * w), None  # float32; promoted by the float64 weights
    s = labelmap.scores.reshape(k, h * w).astype(np.float64)
    logits = labelmap.score_kind == "logits"
    if mode == "zero":
        v = s / temperature if temperature != 1.0 else s
        return (v if valid is None else np.where(valid, v, 0.0)), None
    if mode == "topk":
        if logits:
            z = s / temperature if temperature != 1.0 else s
            if valid is not None:
                z = np.where(valid, z, -np.inf)
            e = np.exp(z - z.max(axis=0))
        else:
            e = np.power(np.maximum(s, 0.0), 1.0 / temperature) if temperature != 1.0 else np.maximum(s, 0.0)
            if valid is not None:
                e = np.where(valid, e, 0.0)
        tot = e.sum(axis=0)
        n = k if valid is None else valid.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(tot > 0, e / tot, (1.0 / n) if valid is None else np.where(valid, 1.0 / n, 0.0))
        return q, None
    # uniform: entries carry their excess over the leftover share u that every class receives
    p = np.exp(s - labelmap.lse.reshape(h * w).astype(np.float64)) if logits else np.maximum(s, 0.0)
    if valid is not None:
        p = np.where(valid, p, 0.0)
    n = np.full(h * w, k) if valid is None else valid.sum(axis=0)
    rest = labelmap.num_classes - n
    left = np.maximum(1.0 - p.sum(axis=0), 0.0)
    u = np.where(rest > 0, left / np.maximum(rest, 1), 0.0)
    excess = p - u
    return (excess if valid is None else np.where(valid, excess, 0.0)), u


class _S1Template(NamedTuple):
    """Box-independent arrays for a 1x1 output sampled ``gy`` x ``gx`` times on an ``h x w`` grid:
    the y samples first, then the x samples (see :func:`_s1_weights`)."""

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


def _f32(values: tuple[float, ...]) -> "array":
    """``values`` rounded to float32 (round to nearest even)."""
    return array("f", values)


@lru_cache(maxsize=64)
def _coords(n: int) -> np.ndarray:
    """``arange(n)`` as float64, read-only."""
    out = np.arange(n, dtype=np.float64)
    out.setflags(write=False)
    return out


def _s1_weights(
    box: tuple[float, float, float, float], h: int, w: int, sampling_ratio: int
) -> np.ndarray | None:
    """``(H, W)`` float64 RoIAlign weights of a 1x1 output for a normalised ``box`` lying inside the
    frame (``0 <= x0 < x1 <= 1``, same for y), or ``None`` when another rule applies (a box reaching
    outside, an empty box): then :func:`_grid_weights` handles it.

    Same sample points as :func:`_sample_axes` (float32, operation for operation). Inside the frame
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


@lru_cache(maxsize=64)
def _rows(n: int) -> np.ndarray:
    """``arange(n)`` shaped (n, 1), read-only."""
    out = np.arange(n, dtype=np.int64).reshape(n, 1)
    out.setflags(write=False)
    return out


def _finish(pooled: np.ndarray, mode: str) -> np.ndarray:
    """(C, B) or (C,) pooled values → probabilities over axis 0: softmax for ``"zero"``,
    normalisation otherwise."""
    if mode == "zero":
        e = pooled - pooled.max(axis=0)
        np.exp(e, out=e)
        e /= e.sum(axis=0)
        return e
    tot = pooled.sum(axis=0)
    c = pooled.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, pooled / tot, 1.0 / c)


def _finish_sparse(pooled: np.ndarray, rest: np.ndarray, present: np.ndarray, c: int, mode: str) -> np.ndarray:
    """:func:`_finish` when only the ``present`` classes' rows (m, B) are held: every other class
    has the pooled value ``rest`` (B,). Returns (C, B) float32."""
    n_rest = c - present.size
    if mode == "zero":
        top = np.maximum(pooled.max(axis=0), rest) if n_rest else pooled.max(axis=0)
        e = np.exp(pooled - top)
        e_rest = np.exp(rest - top)
        tot = e.sum(axis=0) + n_rest * e_rest
        out = np.empty((c, pooled.shape[1]), dtype=np.float32)
        out[:] = e_rest / tot
        out[present] = e / tot
        return out
    tot = pooled.sum(axis=0) + n_rest * rest
    ok = tot > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.empty((c, pooled.shape[1]), dtype=np.float32)
        out[:] = np.where(ok, rest / tot, 1.0 / c)
        out[present] = np.where(ok, pooled / tot, 1.0 / c)
    return out


def _shape_output(probs: np.ndarray, size: int, flip: bool) -> np.ndarray:
    c = probs.shape[0]
    if size == 1:
        return probs.reshape(c).astype(np.float32, copy=False)
    out = probs.reshape(c, size, size)
    if flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def pool(
    labelmap: "LabelMap",
    box: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
    flip: bool = False,
    size: int = 1,
    fill: str | None = None,
    temperature: float = 1.0,
    sampling_ratio: int = -1,
) -> np.ndarray:
    """Soft label of the crop ``box`` of ``labelmap`` (spec/POOLING.md).

    ``box`` is ``(x0, y0, x1, y1)`` normalised to the frame the teacher saw; ``flip=True`` means the
    crop was mirrored horizontally after cropping (the output bins are mirrored; a ``size == 1``
    label is unchanged). Works on the stored top-k entries only — never builds the dense
    ``(C, H, W)`` array. Returns float32 ``(C,)`` for ``size == 1``, else ``(C, size, size)``.
    """
    b, s, mode, t, sr = _check_pool_args(labelmap, box, size, fill, temperature, sampling_ratio)
    if s == 1:
        return _pool1(labelmap, b, mode, t, sr)
    wy, wx = _grid_weights(labelmap, b, s, sr)
    k, h, w = labelmap.shape
    c = labelmap.num_classes
    v, u = _location_values(labelmap, mode, t)
    cls = labelmap.indices.reshape(k * h * w)
    # separable: contract x per (class, row) with one bincount, then y with a small matmul
    present = np.flatnonzero(np.bincount(cls, minlength=c))
    m = present.size
    remap = np.zeros(c, dtype=np.int64)
    remap[present] = np.arange(m)
    base = (remap[cls].reshape(1, k, h, w) * h + _rows(h)) * s
    idx = base + _rows(s).reshape(s, 1, 1, 1)  # (s, k, h, w): output column, entry
    part = v.reshape(1, k, h, w) * wx[:, None, None, :]
    rows = np.bincount(idx.reshape(-1), weights=part.reshape(-1), minlength=m * h * s).reshape(m, h, s)
    rest = np.zeros(s * s) if u is None else (wy @ u.reshape(h, w) @ wx.T).reshape(s * s)
    pooled = np.matmul(wy, rows).reshape(m, s * s) + rest
    return _shape_output(_finish_sparse(pooled, rest, present, c, mode), s, flip)


def _pool1(labelmap: "LabelMap", box: tuple[float, float, float, float], mode: str, temperature: float,
           sampling_ratio: int) -> np.ndarray:
    """:func:`pool` for a 1x1 output: ``(C,)`` float32 (a flip changes nothing)."""
    idx, scores = labelmap.indices, labelmap.scores
    k, h, w = idx.shape
    c = labelmap.num_classes
    loc = _s1_weights(box, h, w, sampling_ratio)
    if loc is None:
        wy, wx = _grid_weights(labelmap, box, 1, sampling_ratio)
        loc = np.outer(wy[0], wx[0])
    if mode == "zero" and labelmap.counts is None:
        if temperature != 1.0:  # pooling is linear: divide the weights instead of every score
            loc /= temperature
        return _softmax(np.bincount(idx.reshape(-1), weights=(scores * loc).reshape(-1), minlength=c))
    v, u = _location_values(labelmap, mode, temperature)
    loc = loc.reshape(h * w)
    pooled = np.bincount(idx.reshape(-1), weights=(v * loc).reshape(-1), minlength=c)
    if u is not None:
        pooled += loc @ u
    return _finish(pooled, mode).astype(_F32)


def _softmax(z: np.ndarray) -> np.ndarray:
    """float32 softmax of the float64 vector ``z``: ``exp(z) / sum`` directly while that sum is a
    positive finite float64 (|z| below ~700: no max to subtract), else shifted by the max."""
    e = np.exp(z)
    tot = float(np.add.reduce(e))
    if not 0.0 < tot < math.inf:
        e = np.exp(z - z.max())
        tot = float(np.add.reduce(e))
    return np.multiply(e, 1.0 / tot, out=np.empty(z.shape, _F32))


def pool_dense(
    labelmap: "LabelMap",
    box: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
    flip: bool = False,
    size: int = 1,
    fill: str | None = None,
    temperature: float = 1.0,
    sampling_ratio: int = -1,
) -> np.ndarray:
    """Reference for :func:`pool`: builds the dense ``(C, H, W)`` per-location values of the fill
    mode, applies :func:`box_weights` to them, then the softmax/normalisation. Same result, slower."""
    b, s, mode, t, sr = _check_pool_args(labelmap, box, size, fill, temperature, sampling_ratio)
    k, h, w = labelmap.shape
    c = labelmap.num_classes
    v, u = _location_values(labelmap, mode, t)
    dense = np.zeros((c, h * w), dtype=np.float64)
    if u is not None:
        dense[:] = u[None, :]
    valid = labelmap.valid().reshape(k, h * w)
    loc = np.broadcast_to(np.arange(h * w), (k, h * w))
    dense[labelmap.indices.reshape(k, h * w)[valid], loc[valid]] += v[valid]
    x0, y0, x1, y1 = b
    weights = box_weights((x0 * w, y0 * h, x1 * w, y1 * h), h, w, s, sampling_ratio=sr, aligned=True)
    pooled = dense @ weights.T
    return _shape_output(_finish(pooled, mode), s, flip)


# ---------------------------------------------------------------------------------------------- compat
def to_official_coords(box: Sequence[float], flip: bool = False) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` → the released ReLabel code's normalised crop coords ``(y0, x0, y1, x1)``
    (``RandomResizedCropWithCoords``' ``(i/H, j/W, h/H, w/W)`` after ``coords[2:] += coords[:2]``).

    ``flip`` is accepted and dropped: the released pipeline applies ``RandomHorizontalFlip`` to the
    image only, after the crop, and never tells the pooler (spec/POOLING.md, "Compatibility mode").
    """
    x0, y0, x1, y1 = _check_box(box, ordered=True)
    return (y0, x0, y1, x1)


def from_official_coords(coords: Sequence[float]) -> tuple[tuple[float, float, float, float], bool]:
    """The released code's ``(y0, x0, y1, x1)`` → ``((x0, y0, x1, y1), flip=False)``: the box that
    names the same image region in this library's convention."""
    y0, x0, y1, x1 = _check_box(coords, ordered=True)
    return (x0, y0, x1, y1), False


def relabel_compat(labelmap: "LabelMap", coords: Sequence[float], flip: bool = False) -> np.ndarray:
    """The soft label the released ReLabel training code (``get_labelmaps`` + ``get_relabel``)
    computes for one sample, quirks included (spec/POOLING.md, "Compatibility mode").

    ``coords`` are that code's normalised ``(y0, x0, y1, x1)``. The dense map holds the stored scores
    and 0 elsewhere; ``coords * W - 0.5`` is passed to RoIAlign as ``(x0, y0, x1, y1)`` — so the box
    is transposed — with ``aligned=False``, a 1x1 output and the adaptive sampling ratio; then a
    softmax over all classes. ``flip`` has no effect, as in the released code. Returns ``(C,)``
    float32.
    """
    del flip  # the released pipeline never passes the flip to the pooler
    c0, c1, c2, c3 = _check_box(coords, ordered=False)
    k, h, w = labelmap.shape
    scale = _F32(w)  # label_maps.size(3) scales both axes
    half = _F32(0.5)
    roi = tuple(float(_F32(v) * scale - half) for v in (c0, c1, c2, c3))  # (x0, y0, x1, y1) to RoIAlign
    wy, wx = _separable_weights(roi, h, w, (1, 1), 1.0, -1, False)
    loc = np.outer(wy[0], wx[0]).reshape(h * w)
    v, _ = _location_values(labelmap, "zero", 1.0)
    z = np.bincount(labelmap.indices.reshape(-1), weights=(v * loc).reshape(-1), minlength=labelmap.num_classes)
    return _finish(z, "zero").astype(np.float32)
