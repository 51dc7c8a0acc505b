"""Soft labels of crops: the fill modes of spec/POOLING.md on top of RoIAlign, and their option checks.

:func:`pool` is the sparse pooler: it only touches the ``k*H*W`` stored entries of a top-k map and
never builds the dense ``(C, H, W)`` array. :func:`pool_dense` is its dense reference. Both use the
weights of :mod:`relabel_maps.roi_align`, so they agree to rounding.

Every pooler (this one, the torch face, the CLI) checks its options with the functions here:
:func:`resolve_fill`, :func:`check_temperature`, :func:`check_pool_options`, :func:`check_size`, and
:func:`check_box` / :func:`check_boxes` (defined with the box geometry in :mod:`relabel_maps.roi_align`,
where the compatibility mode also uses them). :func:`pool` and :func:`pool_dense` also refuse, before
allocating, an output above :data:`MAX_POOL_OUTPUT` values (:func:`check_output_size`). Given a
``class_map`` (:class:`relabel_maps.classmap.ClassMap`) they return the label over the dataset's own
classes instead of the teacher's.

Also importable from here: the RoIAlign reference (:func:`roi_align`, :func:`box_weights`) and the
official-ReLabel compatibility mode (:func:`relabel_compat`, :func:`to_official_coords`,
:func:`from_official_coords`, :mod:`relabel_maps.compat`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from .classmap import ClassMap
from .compat import from_official_coords, relabel_compat, to_official_coords
from .errors import InvalidArgumentError
from .roi_align import (
    MAX_SAMPLES,
    Box,
    box_weights,
    check_box,
    check_boxes,
    check_sampling_ratio,
    grid_weights,
    roi_align,
    single_bin_weights,
)

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
    "check_box",
    "check_boxes",
    "check_size",
    "check_output_size",
    "MAX_POOL_OUTPUT",
    "resolve_fill",
    "check_temperature",
    "check_pool_options",
    "finish_pooled",
    "location_values",
    "relabel_compat",
    "to_official_coords",
    "from_official_coords",
]

#: fill modes of spec/POOLING.md, "Fill modes"
FILL_MODES = ("zero", "topk", "uniform")
#: the most values (``C`` for a ``(C,)`` label, ``C * S * S`` for ``(C, S, S)``) one pooled label may
#: hold: 2**26 float32 values (256 MiB; the float64 intermediates take about twice that). A file may
#: declare up to 2**31 classes, so :func:`check_output_size` refuses a larger output before allocating.
MAX_POOL_OUTPUT = 1 << 26


# ---------------------------------------------------------------------------------------------- options
def default_fill(score_kind: str) -> str:
    """The fill mode used when none is given: ``"zero"`` for logit maps (ReLabel), ``"uniform"``
    for probability maps (FKD)."""
    return "uniform" if score_kind == "probabilities" else "zero"


def resolve_fill(fill: str | None, score_kind: str) -> str:
    """The fill mode to use: ``default_fill(score_kind)`` when ``fill`` is None, else ``fill``, which
    must be one of :data:`FILL_MODES` (:class:`InvalidArgumentError` otherwise)."""
    mode = default_fill(score_kind) if fill is None else fill
    if mode not in FILL_MODES:
        raise InvalidArgumentError(f"fill must be one of {FILL_MODES} or None, got {fill!r}")
    return mode


def check_temperature(temperature: float) -> float:
    """``temperature`` as a positive finite float, else :class:`InvalidArgumentError`."""
    try:
        t = float(temperature)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"temperature must be a positive number, got {temperature!r}") from exc
    if not (math.isfinite(t) and t > 0.0):
        raise InvalidArgumentError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


def check_pool_options(fill: str | None, temperature: float, *, score_kind: str, has_lse: bool) -> tuple[str, float]:
    """``(fill mode, temperature)`` checked for a map of ``score_kind`` (with a stored log-sum-exp
    when ``has_lse``): :func:`resolve_fill`, :func:`check_temperature`, and ``fill="uniform"``'s
    rules (temperature 1; a logit map needs its lse to turn logits into probabilities)."""
    mode = resolve_fill(fill, score_kind)
    t = check_temperature(temperature)
    if mode == "uniform":
        if t != 1.0:
            raise InvalidArgumentError(
                "fill='uniform' uses the stored probabilities as they are; temperature must be 1.0"
            )
        if score_kind == "logits" and not has_lse:
            raise InvalidArgumentError(
                "fill='uniform' needs probabilities: this logit map has no per-location log-sum-exp (lse); "
                "use fill='zero' or fill='topk'"
            )
    return mode, t


def check_size(size: int) -> int:
    """The output grid side ``S`` as a positive int, else :class:`InvalidArgumentError`."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise InvalidArgumentError(f"size must be a positive int, got {size!r}")
    return int(size)


def check_output_size(num_classes: int, size: int) -> None:
    """Refuse (:class:`InvalidArgumentError`) a pooled label of ``num_classes * size * size`` values
    above :data:`MAX_POOL_OUTPUT`, before anything is allocated."""
    if num_classes * size * size > MAX_POOL_OUTPUT:
        raise InvalidArgumentError(
            f"a pooled label of {num_classes} classes x {size}x{size} bins has {num_classes * size * size} values, "
            f"more than the {MAX_POOL_OUTPUT} a pooler allocates"
        )


def _check_pool_args(
    labelmap: LabelMap, box: Sequence[float], size: int, fill: str | None, temperature: float, sampling_ratio: int,
    class_map: ClassMap | None = None,
) -> tuple[Box, int, str, float, int]:
    if class_map is not None:
        class_map.check(labelmap.num_classes)
    b = check_box(box)
    s = check_size(size)
    check_output_size(labelmap.num_classes, s)
    mode, t = check_pool_options(fill, temperature, score_kind=labelmap.score_kind, has_lse=labelmap.lse is not None)
    return b, s, mode, t, check_sampling_ratio(sampling_ratio)


# ---------------------------------------------------------------------------------------------- pooling
def location_values(labelmap: LabelMap, mode: str, temperature: float) -> tuple[np.ndarray, np.ndarray | None]:
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
    if not logits:
        p = np.maximum(s, 0.0)
    elif labelmap.lse is not None:
        p = np.exp(s - labelmap.lse.reshape(h * w).astype(np.float64))
    else:  # check_pool_options refuses this combination
        raise InvalidArgumentError("fill='uniform' on a logit map needs its lse")
    if valid is not None:
        p = np.where(valid, p, 0.0)
    n = np.full(h * w, k) if valid is None else valid.sum(axis=0)
    rest = labelmap.num_classes - n
    left = np.maximum(1.0 - p.sum(axis=0), 0.0)
    u = np.where(rest > 0, left / np.maximum(rest, 1), 0.0)
    excess = p - u
    return (excess if valid is None else np.where(valid, excess, 0.0)), u


@lru_cache(maxsize=64)
def _rows(n: int) -> np.ndarray:
    """``arange(n)`` shaped (n, 1), read-only."""
    out = np.arange(n, dtype=np.int64).reshape(n, 1)
    out.setflags(write=False)
    return out


def finish_pooled(pooled: np.ndarray, mode: str) -> np.ndarray:
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
    labelmap: LabelMap,
    box: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
    flip: bool = False,
    size: int = 1,
    fill: str | None = None,
    temperature: float = 1.0,
    sampling_ratio: int = -1,
    class_map: ClassMap | None = None,
) -> np.ndarray:
    """Soft label of the crop ``box`` of ``labelmap`` (spec/POOLING.md).

    ``box`` is ``(x0, y0, x1, y1)`` normalised to the frame the teacher saw; ``flip=True`` means the
    crop was mirrored horizontally after cropping (the output bins are mirrored; a ``size == 1``
    label is unchanged). Works on the stored top-k entries only — never builds the dense
    ``(C, H, W)`` array. Returns float32 ``(C,)`` for ``size == 1``, else ``(C, size, size)``; with a
    ``class_map``, ``C`` is its :attr:`~relabel_maps.classmap.ClassMap.num_classes`.
    """
    b, s, mode, t, sr = _check_pool_args(labelmap, box, size, fill, temperature, sampling_ratio, class_map)
    if class_map is not None:
        return class_map.apply(pool(labelmap, b, flip, s, mode, t, sr))
    if s == 1:
        return _pool1(labelmap, b, mode, t, sr)
    wy, wx = grid_weights(b, labelmap.height, labelmap.width, s, sr)
    k, h, w = labelmap.shape
    c = labelmap.num_classes
    v, u = location_values(labelmap, mode, t)
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


def _pool1(labelmap: LabelMap, box: Box, mode: str, temperature: float, sampling_ratio: int) -> np.ndarray:
    """:func:`pool` for a 1x1 output: ``(C,)`` float32 (a flip changes nothing)."""
    idx, scores = labelmap.indices, labelmap.scores
    k, h, w = idx.shape
    c = labelmap.num_classes
    loc = single_bin_weights(box, h, w, sampling_ratio)
    if loc is None:
        wy, wx = grid_weights(box, h, w, 1, sampling_ratio)
        loc = np.outer(wy[0], wx[0])
    if mode == "zero" and labelmap.counts is None:
        if temperature != 1.0:  # pooling is linear: divide the weights instead of every score
            loc /= temperature
        return _softmax(np.bincount(idx.reshape(-1), weights=(scores * loc).reshape(-1), minlength=c))
    v, u = location_values(labelmap, mode, temperature)
    loc = loc.reshape(h * w)
    pooled = np.bincount(idx.reshape(-1), weights=(v * loc).reshape(-1), minlength=c)
    if u is not None:
        pooled += loc @ u
    return finish_pooled(pooled, mode).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    """float32 softmax of the float64 vector ``z``: ``exp(z) / sum`` directly while that sum is a
    positive finite float64 (|z| below ~700: no max to subtract), else shifted by the max."""
    e = np.exp(z)
    tot = float(np.add.reduce(e))
    if not 0.0 < tot < math.inf:
        e = np.exp(z - z.max())
        tot = float(np.add.reduce(e))
    return np.multiply(e, 1.0 / tot, out=np.empty(z.shape, np.float32))


def pool_dense(
    labelmap: LabelMap,
    box: Sequence[float] = (0.0, 0.0, 1.0, 1.0),
    flip: bool = False,
    size: int = 1,
    fill: str | None = None,
    temperature: float = 1.0,
    sampling_ratio: int = -1,
    class_map: ClassMap | None = None,
) -> np.ndarray:
    """Reference for :func:`pool`: builds the dense ``(C, H, W)`` per-location values of the fill
    mode, applies :func:`box_weights` to them, then the softmax/normalisation. Same result, slower."""
    b, s, mode, t, sr = _check_pool_args(labelmap, box, size, fill, temperature, sampling_ratio, class_map)
    if class_map is not None:
        return class_map.apply(pool_dense(labelmap, b, flip, s, mode, t, sr))
    k, h, w = labelmap.shape
    c = labelmap.num_classes
    v, u = location_values(labelmap, mode, t)
    dense = np.zeros((c, h * w), dtype=np.float64)
    if u is not None:
        dense[:] = u[None, :]
    valid = labelmap.valid().reshape(k, h * w)
    loc = np.broadcast_to(np.arange(h * w), (k, h * w))
    dense[labelmap.indices.reshape(k, h * w)[valid], loc[valid]] += v[valid]
    x0, y0, x1, y1 = b
    weights = box_weights((x0 * w, y0 * h, x1 * w, y1 * h), h, w, s, sampling_ratio=sr, aligned=True)
    pooled = dense @ weights.T
    return _shape_output(finish_pooled(pooled, mode), s, flip)
