"""Per-image evidence from the label maps, computed for a batch of maps at once.

For every image, with its dataset label ``y``:

* the whole-image pooled soft label (``pool(box=(0, 0, 1, 1))``: the spatial mean of the map,
  then the fill mode's softmax or normalisation; see spec/POOLING.md), its top ``T`` classes and
  ``p_label``, the pooled probability of ``y``, and ``y``'s rank;
* per location, a probability for every class: with the map's per-location log-sum-exp (or a
  probability map) the exact one (``"uniform"`` fill), otherwise the softmax over the stored top-k
  (``"topk"``). From it: ``label_local_max`` (the label's highest probability anywhere on the map),
  ``teacher_local_max`` (the highest top-1 probability anywhere), and the correlation (Pearson,
  over the locations) between the probability maps of the top classes (``similarity``: classes of
  one object rise and fall together, two objects side by side are anti-correlated; a flat map
  correlates with nothing);
* ``top_shares`` / ``label_share``: the share of locations whose own top-1 class is that class.

The default fill of the pooled label is the per-location one (``"uniform"`` when exact, else
``"topk"``), so that the pooled label is the mean of the per-location probabilities; ``fill``
overrides it with any mode of :data:`relabel_maps.pooling.FILL_MODES`. The batched pooling gives
:meth:`LabelMap.pool`'s numbers (it applies the same per-location fill rule, ``pooling``'s own).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..labelmap import LabelMap
from ..pooling import check_pool_options, finish_pooled, location_values

__all__ = ["Evidence", "compute_evidence", "local_fill", "presence", "DEFAULT_TOP"]

#: teacher classes kept per image
DEFAULT_TOP = 5
_BLOCK = 128  # images computed together: larger blocks fall out of the CPU caches and run slower


def presence(num_classes: int) -> float:
    """The probability from which a class counts as present at a location: ``1/sqrt(C)``."""
    return 1.0 / math.sqrt(num_classes)


def local_fill(labelmap: LabelMap) -> str:
    """The fill mode that gives per-location probabilities: ``"uniform"`` when exact (a probability
    map, or logits with their log-sum-exp), else ``"topk"``."""
    return "uniform" if labelmap.score_kind == "probabilities" or labelmap.lse is not None else "topk"


@dataclass
class Evidence:
    """Evidence of a batch of ``B`` images (arrays of length ``B``; ``T`` teacher classes each)."""

    keys: list[str]
    label: np.ndarray  # int32: class index, UNKNOWN_LABEL (-1) or NO_LABEL (-2)
    height: np.ndarray  # int16 grid size
    width: np.ndarray
    fill: list[str]  # the pooled label's fill mode
    top_classes: np.ndarray  # (B, T) int32, by descending pooled probability
    top_probs: np.ndarray  # (B, T) float32
    top_shares: np.ndarray  # (B, T) float32: share of locations each wins (top-1 and present)
    overlap: np.ndarray  # (B, T, T) float32: overlap coefficient of the locations where they are present
    p_label: np.ndarray  # float32, NaN without a class label
    label_rank: np.ndarray  # int32: classes with a higher pooled probability; -1 without a class label
    label_share: np.ndarray  # float32
    label_local_max: np.ndarray  # float32, NaN without a class label
    teacher_local_max: np.ndarray  # float32
    pooled: np.ndarray | None = None  # (B, C) float32 pooled probabilities, when asked for

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def concat(cls, parts: Sequence[Evidence]) -> Evidence:
        """One batch from several (their ``pooled`` kept only if every part has it)."""
        out: dict[str, Any] = {}
        for f in fields(cls):
            values = [getattr(p, f.name) for p in parts]
            if f.name in ("keys", "fill"):
                out[f.name] = [x for v in values for x in v]
            elif f.name == "pooled":
                out[f.name] = None if any(v is None for v in values) else np.concatenate(values)
            else:
                out[f.name] = np.concatenate(values)
        return cls(**out)

    def take(self, rows: np.ndarray) -> Evidence:
        """The images at ``rows``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                out[f.name] = [value[i] for i in rows]
            else:
                out[f.name] = None if value is None else value[rows]
        return Evidence(**out)


def _signature(m: LabelMap) -> tuple[object, ...]:
    return m.shape, m.score_kind, m.lse is not None, m.counts is not None, m.num_classes


def compute_evidence(
    maps: Sequence[LabelMap],
    labels: Sequence[int] | np.ndarray,
    *,
    keys: Sequence[str] | None = None,
    fill: str | None = None,
    top: int = DEFAULT_TOP,
    keep_pooled: bool = False,
) -> Evidence:
    """The :class:`Evidence` of ``maps`` with dataset labels ``labels`` (class indices; negative:
    none). Maps of one shape and kind are processed together; ``keep_pooled`` keeps the ``(B, C)``
    pooled probabilities (for cleanlab)."""
    n = len(maps)
    lab = np.asarray(labels, dtype=np.int32).reshape(-1)
    if lab.shape[0] != n:
        raise InvalidArgumentError(f"{n} maps but {lab.shape[0]} labels")
    if top < 1:
        raise InvalidArgumentError(f"top must be >= 1, got {top}")
    key_list = list(keys) if keys is not None else [str(m.key) for m in maps]
    if n == 0:
        return _empty(top, keep_pooled)
    if lab.size and int(lab.max()) >= maps[0].num_classes:
        raise InvalidArgumentError(f"label {int(lab.max())} is not one of the {maps[0].num_classes} classes")
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(_signature(m), []).append(i)
    parts, order = [], []
    for rows in groups.values():
        for start in range(0, len(rows), _BLOCK):
            block = rows[start : start + _BLOCK]
            parts.append(_group([maps[i] for i in block], lab[block], fill, top, keep_pooled))
            order.extend(block)
    ev = parts[0] if len(parts) == 1 else Evidence.concat(parts)
    if order != sorted(order):
        ev = ev.take(np.argsort(np.asarray(order), kind="stable"))
    ev.keys = key_list
    return ev


def _empty(top: int, keep_pooled: bool) -> Evidence:
    f32, i32 = np.zeros(0, np.float32), np.zeros(0, np.int32)
    return Evidence(
        [], i32, np.zeros(0, np.int16), np.zeros(0, np.int16), [], np.zeros((0, top), np.int32),
        np.zeros((0, top), np.float32), np.zeros((0, top), np.float32), np.zeros((0, top, top), np.float32),
        f32, i32, f32, f32, f32, np.zeros((0, 0), np.float32) if keep_pooled else None,
    )


def _stack(ms: Sequence[LabelMap]) -> LabelMap:
    """The maps of one shape as one ``(k, B*H, W)`` map: every per-location rule applies unchanged."""
    first = ms[0]
    k, h, w = first.shape
    b = len(ms)
    lse = [m.lse for m in ms if m.lse is not None]
    counts = [m.counts for m in ms if m.counts is not None]
    return LabelMap(
        np.stack([m.indices for m in ms], axis=1).reshape(k, b * h, w),
        np.stack([m.scores for m in ms], axis=1).reshape(k, b * h, w),
        num_classes=first.num_classes,
        score_kind=first.score_kind,
        lse=np.stack(lse).reshape(b * h, w) if lse else None,
        counts=np.stack(counts).reshape(b * h, w) if counts else None,
        validate=False,
    )


def _group(ms: Sequence[LabelMap], lab: np.ndarray, fill: str | None, top: int, keep_pooled: bool) -> Evidence:
    first = ms[0]
    k, h, w = first.shape
    b, c, n_loc = len(ms), first.num_classes, h * w
    t = min(top, c)
    local = local_fill(first)
    mode, _ = check_pool_options(
        local if fill is None else fill, 1.0, score_kind=first.score_kind, has_lse=first.lse is not None
    )
    stack = _stack(ms)
    idx = stack.indices.reshape(k, b, n_loc)

    # whole-image pooled labels: the spatial mean of the fill mode's per-location values. ``score``
    # orders the classes of each image as the pooled probabilities do; ``to_prob`` maps it to them.
    v, u = location_values(stack, mode, 1.0)
    rows = np.arange(b, dtype=np.int32)
    bins = (rows[None, :, None] * np.int32(c) + idx).reshape(-1)
    sums = np.bincount(bins, weights=v.reshape(-1), minlength=b * c).reshape(b, c)  # (B, C)
    if mode == "zero":  # a softmax over all C classes
        score = finish_pooled((sums / n_loc).T, mode).T

        def to_prob(x: np.ndarray) -> np.ndarray:
            return x

    else:  # a normalisation: (sum / L + mean leftover) / total
        mean_u = np.zeros(b) if u is None else u.reshape(b, n_loc).mean(axis=1)
        total = sums.sum(axis=1) / n_loc + c * mean_u
        ok = total > 0
        scale = np.where(ok, 1.0 / np.where(ok, total, 1.0), 0.0)
        score = sums

        def to_prob(x: np.ndarray) -> np.ndarray:
            shape = (-1,) + (1,) * (x.ndim - 1)
            return np.where(ok.reshape(shape), (x / n_loc + mean_u.reshape(shape)) * scale.reshape(shape), 1.0 / c)

    part = np.argpartition(-score, t - 1, axis=1)[:, :t] if t < c else np.tile(np.arange(c), (b, 1))
    part_s = np.take_along_axis(score, part, axis=1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    top_cls = np.take_along_axis(part, order, axis=1).astype(np.int32)
    top_p = to_prob(np.take_along_axis(part_s, order, axis=1))

    # per-location probabilities of the top classes and the label: every stored entry goes to its
    # class's slot (0..t-1: the top classes; t: the label when it is not one of them; t+1: the rest)
    lv, lu = (v, u) if local == mode else location_values(stack, local, 1.0)
    lu_b = np.zeros((b, n_loc), np.float32) if lu is None else lu.reshape(b, n_loc).astype(np.float32)
    has_label = lab >= 0
    safe = np.where(has_label, lab, 0)
    n_slots = t + 2
    slot = np.full((b, c), t + 1, dtype=np.int8)
    slot[rows[:, None], top_cls] = np.arange(t, dtype=np.int8)
    label_slot = slot[rows, safe].astype(np.int32)
    label_slot[has_label & (label_slot == t + 1)] = t
    label_slot[~has_label] = t + 1
    slot[rows, safe] = np.where(has_label, label_slot, slot[rows, safe])
    entry_slot = slot[rows[None, :, None], idx].astype(np.int32)  # (k, B, L)
    if first.counts is not None:
        entry_slot[~stack.valid().reshape(k, b, n_loc)] = t + 1
    cell = (rows[None, :, None] * np.int32(n_slots) + entry_slot) * np.int32(n_loc) + np.arange(n_loc, dtype=np.int32)
    sums = np.bincount(cell.reshape(-1), weights=lv.reshape(-1), minlength=b * n_slots * n_loc)
    local_p = sums.reshape(b, n_slots, n_loc).astype(np.float32) + lu_b[:, None, :]  # (B, slots, L)
    level = presence(c)
    first_rank = lv.reshape(k, b, n_loc)[0] + lu_b  # the top-1 class's probability at each location
    won = (first_rank >= level).astype(np.float32)
    wins = np.bincount((rows[:, None] * n_slots + entry_slot[0]).reshape(-1), weights=won.reshape(-1),
                       minlength=b * n_slots)  # fmt: skip
    shares = (wins.reshape(b, n_slots) / n_loc).astype(np.float32)

    present = (local_p[:, :t] >= level).astype(np.float32)  # (B, T, L)
    both = np.matmul(present, present.transpose(0, 2, 1))
    size = present.sum(axis=2)
    smaller = np.minimum(size[:, :, None], size[:, None, :])
    overlap = np.where(smaller > 0, both / np.maximum(smaller, 1.0), 0.0)
    overlap[:, np.arange(t), np.arange(t)] = 1.0

    label_score = score[rows, safe]
    p_label = np.where(has_label, to_prob(label_score), np.nan).astype(np.float32)
    rank = np.where(has_label, (score > label_score[:, None]).sum(axis=1), -1).astype(np.int32)
    label_local = np.where(has_label, local_p[rows, np.minimum(label_slot, t)].max(axis=1), np.nan)
    teacher_local = first_rank.max(axis=1).astype(np.float32)

    top_shares = shares[:, :t]
    if t < top:  # fewer classes than asked: pad with -1 / 0
        pad = top - t
        top_cls = np.pad(top_cls, ((0, 0), (0, pad)), constant_values=-1)
        top_p = np.pad(top_p, ((0, 0), (0, pad)))
        overlap = np.pad(overlap, ((0, 0), (0, pad), (0, pad)))
        top_shares = np.pad(top_shares, ((0, 0), (0, pad)))
    return Evidence(
        keys=[str(m.key) for m in ms],
        label=lab.astype(np.int32),
        height=np.full(b, h, np.int16),
        width=np.full(b, w, np.int16),
        fill=[mode] * b,
        top_classes=top_cls,
        top_probs=top_p.astype(np.float32),
        top_shares=top_shares,
        overlap=overlap.astype(np.float32),
        p_label=p_label,
        label_rank=rank,
        label_share=np.where(has_label, shares[rows, np.minimum(label_slot, t)], np.float32(0)).astype(np.float32),
        label_local_max=label_local.astype(np.float32),
        teacher_local_max=teacher_local,
        pooled=to_prob(score).astype(np.float32) if keep_pooled else None,
    )
