"""The audit's "likely mislabelled" set next to cleanlab's label issues on the same pooled probabilities.

cleanlab (confident learning) sees one probability vector per image: the whole-image pooled label.
The audit adds where each class is on the map, so the two differ in explainable ways: an image with
two objects has a diluted pooled probability for its label, which cleanlab may call an issue while
the map shows the label winning a region of its own; an image whose label is nowhere but where the
teacher sees nothing confidently either is "not visible" for the audit. :func:`compare_with_cleanlab`
runs ``cleanlab.filter.find_label_issues`` and explains every image where the two disagree.

It needs the ``(N, C)`` pooled probabilities of the labelled images in memory (``cleanlab=True`` in
:func:`relabel_maps.audit.audit` keeps them: ``4 * N * C`` bytes).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, require
from .evidence import Evidence
from .flags import Flags, Resolved

__all__ = ["Comparison", "compare_with_cleanlab"]


@dataclass
class Comparison:
    """Agreement between the audit and cleanlab over the labelled images."""

    images: int
    both: int
    audit_only: int
    cleanlab_only: int
    neither: int
    differences: list[dict[str, Any]] = field(default_factory=list)
    filter_by: str = "prune_by_noise_rate"

    @property
    def agreement(self) -> float:
        """Share of images on which the two decide the same."""
        return (self.both + self.neither) / self.images if self.images else 1.0

    @property
    def jaccard(self) -> float:
        """Overlap of the two flagged sets (1 when both are empty)."""
        union = self.both + self.audit_only + self.cleanlab_only
        return self.both / union if union else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images, "both": self.both, "audit_only": self.audit_only,
            "cleanlab_only": self.cleanlab_only, "neither": self.neither, "agreement": self.agreement,
            "jaccard": self.jaccard, "filter_by": self.filter_by, "differences": self.differences,
        }  # fmt: skip


def _reason(ev: Evidence, fl: Flags, r: Resolved, i: int, audit: bool, name: Callable[[int], str]) -> str:
    y, j = int(ev.label[i]), int(ev.top_classes[i, 0])
    p_y, p_j, local = float(ev.p_label[i]), float(ev.top_probs[i, 0]), float(ev.label_local_max[i])
    share = float(ev.label_share[i])
    if audit:
        return (
            f"the teacher is confident in {name(j)!r} (p={p_j:.3f} >= {r.confident[j]:.3f}) and {name(y)!r} is weak "
            f"everywhere (max {local:.4f} < {r.weak:.4f}); cleanlab's noise-rate pruning kept the label "
            f"(p_label={p_y:.4f})"
        )
    if local >= r.weak and bool(fl.multi_object[i]):
        return (
            f"multi-object: {name(y)!r} is one of {len(fl.object_list(i))} objects (it wins {share:.0%} of the "
            f"locations, up to p={local:.2f}); the other object dilutes its pooled p_label={p_y:.3f}"
        )
    if local >= r.weak:
        return (
            f"the map shows {name(y)!r} (up to p={local:.2f}, top-1 on {share:.0%} of the locations) although the "
            f"teacher's pooled top-1 is {name(j)!r} (p={p_j:.3f} vs p_label={p_y:.3f})"
        )
    if bool(fl.not_visible[i]):
        return (
            f"{name(y)!r} is weak everywhere but the teacher is not confident in {name(j)!r} either "
            f"(p={p_j:.3f} < {r.confident[j]:.3f}): flagged not visible instead"
        )
    return f"cleanlab's confident joint flags it (p_label={p_y:.4f}, teacher {name(j)!r} p={p_j:.3f})"


def compare_with_cleanlab(
    ev: Evidence,
    flags: Flags,
    resolved: Resolved,
    name: Callable[[int], str],
    *,
    filter_by: str = "prune_by_noise_rate",
) -> Comparison:
    """Run cleanlab's ``find_label_issues`` on ``ev.pooled`` (labelled images only) and compare its
    issues with ``flags.mislabelled``; every image where they differ gets a reason."""
    if ev.pooled is None:
        raise InvalidArgumentError("the evidence has no pooled probabilities (compute it with keep_pooled=True)")
    cl_filter = require("cleanlab.filter", "audit")
    known = np.flatnonzero(ev.label >= 0)
    if known.size == 0:
        return Comparison(0, 0, 0, 0, 0, filter_by=filter_by)
    probs = ev.pooled[known].astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():  # it warns once per class with few images: every class of a small set
        warnings.simplefilter("ignore", UserWarning)
        issues = np.asarray(
            cl_filter.find_label_issues(ev.label[known], probs, filter_by=filter_by, n_jobs=1), dtype=bool
        )
    ours = flags.mislabelled[known]
    differences = []
    for pos in np.flatnonzero(issues != ours).tolist():
        i = int(known[pos])
        differences.append({
            "key": ev.keys[i],
            "label": int(ev.label[i]),
            "label_name": name(int(ev.label[i])),
            "teacher": int(ev.top_classes[i, 0]),
            "teacher_name": name(int(ev.top_classes[i, 0])),
            "audit": bool(ours[pos]),
            "cleanlab": bool(issues[pos]),
            "flags": flags.names(i),
            "reason": _reason(ev, flags, resolved, i, bool(ours[pos]), name),
        })
    return Comparison(
        images=int(known.size),
        both=int((issues & ours).sum()),
        audit_only=int((ours & ~issues).sum()),
        cleanlab_only=int((issues & ~ours).sum()),
        neither=int((~issues & ~ours).sum()),
        differences=differences,
        filter_by=filter_by,
    )
