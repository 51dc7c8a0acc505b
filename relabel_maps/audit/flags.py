"""Flags from the evidence: likely mislabelled, multi-object, label not visible; the thresholds they use.

With ``y`` the dataset label, ``j`` the teacher's top pooled class and ``p`` pooled probabilities:

* **likely mislabelled**: ``j != y``, the teacher is confident in ``j`` (``p_j >= confident[j]``) and
  ``y`` is weak everywhere on the map (``label_local_max < weak``: no location gives it even that
  probability). The teacher prefers another class *and* nothing in the image looks like the label.
* **label not visible / out of distribution**: ``y`` is weak everywhere but the teacher is not
  confident in any other class either (for an image without a label: the teacher is not confident).
* **multi-object**: the top classes are grouped into objects (two classes present on mostly the same
  locations, ``overlap >= same_object``, are one object: ``tabby`` and ``tiger cat`` on the same cat),
  and two or more objects each win at least ``region`` of the locations (top-1 and present there).
  The ReaL-style label set of an image is the classes of its objects whose pooled probability is at
  least ``real_ratio`` times their object's best (the teacher's top-1 when no object is large enough).

Defaults. ``confident`` and ``weak`` are chosen from the data, in a first pass over the maps:

* ``confident[j]``: the mean pooled probability of ``j`` over the images labelled ``j`` (confident
  learning's per-class threshold, as cleanlab's), shrunk towards the mean over all labelled images
  with the weight of ``prior`` images, so that a class with few images gets a stable threshold;
* ``weak``: the log-midpoint between chance (``1/C``) and the median of ``label_local_max`` over the
  images whose label the teacher agrees with: ``sqrt(median / C)``. With the packaged EfficientNet-
  Lite0 on real photos: correct labels reach 0.28-1.0 somewhere (median 0.92), wrong ones at most
  0.002 (an unstored class's share of the leftover probability), and ``weak`` is 0.03.

``region`` (0.10), ``same_object`` (0.50) and ``real_ratio`` (0.25) are fixed defaults measured on
the same maps: single-object photos (cat, coffee) keep every secondary object below 3% of the
locations, while a cat stacked above a coffee cup gives two objects of 28% and 14%; the cat breeds
the teacher mixes on one cat overlap 0.73-0.96 (espresso and cup on the cup: 0.95), the cat's and the
cup's classes 0.0-0.05.
Every threshold can be given instead (``Thresholds``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .evidence import Evidence
from .labels import NO_LABEL, UNKNOWN_LABEL

__all__ = ["Thresholds", "DataStats", "Resolved", "Flags", "flag", "object_groups", "FLAG_NAMES"]

#: the flags, in the order the report lists them
FLAG_NAMES = ("mislabelled", "multi_object", "not_visible", "unknown_label")

_HIST_LO, _HIST_BINS = -8.0, 800  # log10 histogram of label_local_max: 0.01-decade bins over [1e-8, 1]


@dataclass(frozen=True)
class Thresholds:
    """Flag thresholds; ``None`` means chosen from the data (see the module's documentation)."""

    confident: float | None = None  # pooled probability of the teacher's class (None: per class, from data)
    weak: float | None = None  # the label's highest per-location probability (None: from data)
    region: float = 0.10  # share of locations an object must win
    same_object: float = 0.50  # overlap of two classes' locations from which they are one object
    real_ratio: float = 0.25  # ReaL set: classes at least this fraction of their object's best
    prior: float = 5.0  # images' weight of the global mean in the per-class confident threshold

    def __post_init__(self) -> None:
        for name in ("confident", "weak", "region", "same_object", "real_ratio"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise InvalidArgumentError(f"threshold {name} must lie in [0, 1], got {value!r}")
        if not (isinstance(self.prior, (int, float)) and self.prior >= 0):
            raise InvalidArgumentError(f"prior must be >= 0, got {self.prior!r}")


@dataclass
class DataStats:
    """What the first pass gathers to choose thresholds: per-class sums of the label's pooled
    probability, and a histogram of ``label_local_max`` where the teacher agrees with the label."""

    num_classes: int
    label_sum: np.ndarray = field(init=False)
    label_count: np.ndarray = field(init=False)
    agree_hist: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.label_sum = np.zeros(self.num_classes, np.float64)
        self.label_count = np.zeros(self.num_classes, np.int64)
        self.agree_hist = np.zeros(_HIST_BINS, np.int64)

    def update(self, ev: Evidence) -> None:
        known = ev.label >= 0
        lab = ev.label[known]
        self.label_sum += np.bincount(lab, weights=ev.p_label[known], minlength=self.num_classes)
        self.label_count += np.bincount(lab, minlength=self.num_classes)
        agree = known & (ev.top_classes[:, 0] == ev.label)
        logs = np.log10(np.maximum(ev.label_local_max[agree].astype(np.float64), 1e-300))
        bins = np.clip(((logs - _HIST_LO) / -_HIST_LO * _HIST_BINS).astype(np.int64), 0, _HIST_BINS - 1)
        self.agree_hist += np.bincount(bins, minlength=_HIST_BINS)

    def agree_median(self) -> float | None:
        """Median ``label_local_max`` of the images whose label is the teacher's top-1 (bin centre)."""
        total = int(self.agree_hist.sum())
        if total == 0:
            return None
        b = int(np.searchsorted(np.cumsum(self.agree_hist), (total + 1) / 2))
        return float(10 ** (_HIST_LO + (b + 0.5) * -_HIST_LO / _HIST_BINS))


@dataclass(frozen=True)
class Resolved:
    """The thresholds in force: ``confident`` per class, the rest global."""

    confident: np.ndarray  # (C,) float64
    weak: float
    region: float
    same_object: float
    real_ratio: float
    global_confident: float
    agree_median: float | None
    chosen_from_data: tuple[str, ...]

    @classmethod
    def choose(cls, thresholds: Thresholds, stats: DataStats) -> Resolved:
        """Fill every ``None`` of ``thresholds`` from ``stats``."""
        c = stats.num_classes
        labelled = int(stats.label_count.sum())
        g = float(stats.label_sum.sum() / labelled) if labelled else 1.0 / c
        from_data = []
        if thresholds.confident is None:
            from_data.append("confident")
            prior = thresholds.prior
            denom = stats.label_count + prior
            with np.errstate(invalid="ignore", divide="ignore"):
                conf = np.where(denom > 0, (stats.label_sum + prior * g) / np.maximum(denom, 1e-300), g)
        else:
            conf = np.full(c, float(thresholds.confident))
        median = stats.agree_median()
        if thresholds.weak is None:
            from_data.append("weak")
            weak = math.sqrt((median if median is not None else 1.0) / c)
        else:
            weak = float(thresholds.weak)
        return cls(
            conf, weak, thresholds.region, thresholds.same_object, thresholds.real_ratio, g, median, tuple(from_data)
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (the per-class ``confident`` as min / median / max)."""
        return {
            "weak": self.weak,
            "confident": {
                "global": self.global_confident,
                "min": float(self.confident.min()) if self.confident.size else None,
                "median": float(np.median(self.confident)) if self.confident.size else None,
                "max": float(self.confident.max()) if self.confident.size else None,
            },
            "region": self.region,
            "same_object": self.same_object,
            "real_ratio": self.real_ratio,
            "agree_median_label_local_max": self.agree_median,
            "chosen_from_data": list(self.chosen_from_data),
        }


@dataclass
class Flags:
    """Flags of a batch (arrays of length ``B``)."""

    mislabelled: np.ndarray  # bool
    multi_object: np.ndarray
    not_visible: np.ndarray
    unknown_label: np.ndarray
    suggested: np.ndarray  # int32: the teacher's class for a likely mislabelled image, else -1
    suspicion: np.ndarray  # float32 in [0, 1]: how strongly the maps contradict the label
    objects: np.ndarray  # (B, T) int32: the best class of each object, largest first; -1 pads
    real_mask: np.ndarray  # (B, T) bool: which of the evidence's top classes form the ReaL-style set

    @classmethod
    def concat(cls, parts: list[Flags]) -> Flags:
        """One batch from several."""
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def any(self) -> np.ndarray:
        return self.mislabelled | self.multi_object | self.not_visible | self.unknown_label

    def names(self, i: int) -> list[str]:
        """The flags raised on image ``i``."""
        return [name for name in FLAG_NAMES if bool(getattr(self, name)[i])]

    def object_list(self, i: int) -> list[int]:
        return [int(c) for c in self.objects[i] if c >= 0]

    def real_labels(self, ev: Evidence, i: int) -> list[int]:
        """The ReaL-style label set of image ``i`` (class indices, best first)."""
        return [int(c) for c in ev.top_classes[i][self.real_mask[i]]]


def object_groups(overlap: np.ndarray, same_object: float) -> np.ndarray:
    """``(B, T)`` group of each top class: the first (best) class it is linked to through a chain
    of overlaps ``>= same_object`` (single linkage)."""
    b, t, _ = overlap.shape
    reach = (overlap >= same_object) | np.eye(t, dtype=bool)[None]
    for _ in range(max(1, math.ceil(math.log2(max(t, 2))))):
        reach = np.matmul(reach.astype(np.float32), reach.astype(np.float32)) > 0
    return np.argmax(reach, axis=2)


def flag(ev: Evidence, r: Resolved) -> Flags:
    """The :class:`Flags` of ``ev`` under the thresholds ``r``."""
    lab = ev.label
    known = lab >= 0
    top1 = ev.top_classes[:, 0]
    p1 = ev.top_probs[:, 0]
    confident = p1 >= r.confident[np.maximum(top1, 0)]
    weak = known & (np.nan_to_num(ev.label_local_max, nan=1.0) < r.weak)
    mislabelled = weak & (top1 != lab) & confident
    not_visible = (weak & ~mislabelled) | ((lab == NO_LABEL) & ~confident)

    groups = object_groups(ev.overlap, r.same_object)  # (B, T)
    t = groups.shape[1]
    valid = ev.top_classes >= 0
    member = (groups[:, :, None] == np.arange(t)) & valid[:, :, None]  # (B, class j, group g)
    group_share = (member * ev.top_shares[:, :, None]).sum(axis=1)  # (B, T): zero unless g is a group's root
    big = group_share >= max(r.region, 1e-9)
    order = np.argsort(np.where(big, -group_share, 1.0), axis=1, kind="stable")
    n_objects = big.sum(axis=1)
    objects = np.where(
        np.arange(t) < n_objects[:, None], np.take_along_axis(ev.top_classes, order, axis=1), -1
    ).astype(np.int32)
    root_p = np.take_along_axis(ev.top_probs, groups, axis=1)
    real_mask = valid & np.take_along_axis(big, groups, axis=1) & (ev.top_probs >= r.real_ratio * root_p)
    real_mask[:, 0] |= ~real_mask.any(axis=1)  # no large object: the teacher's top-1

    with np.errstate(invalid="ignore", divide="ignore"):
        pooled_ratio = np.clip(ev.p_label / np.maximum(p1, 1e-12), 0.0, 1.0)
        local_ratio = np.clip(ev.label_local_max / np.maximum(ev.teacher_local_max, 1e-12), 0.0, 1.0)
    suspicion = np.where(known, 1.0 - np.sqrt(pooled_ratio * local_ratio), 0.0).astype(np.float32)
    return Flags(
        mislabelled=mislabelled,
        multi_object=n_objects >= 2,
        not_visible=not_visible,
        unknown_label=lab == UNKNOWN_LABEL,
        suggested=np.where(mislabelled, top1, -1).astype(np.int32),
        suspicion=suspicion,
        objects=objects,
        real_mask=real_mask,
    )
