"""Per-class agreement between the dataset's labels and the teacher, and the classes it confuses.

Agreement of a class: the share of its labelled images whose teacher top-1 (whole-image pooled) is
the label. A confusion pair ``(label, teacher)`` counts the labelled images whose teacher top-1 is
another class; ImageNet's known duplicates (``crane``/``crane``, ``laptop``/``notebook``,
``maillot``/``maillot, tank suit``) show up as pairs confused both ways (``reverse`` > 0).
Memory is ``O(C + distinct pairs)``, whatever the number of images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from .evidence import Evidence
from .flags import Flags

__all__ = ["ClassStats"]


class ClassStats:
    """Accumulates per-class counts and confusion pairs over batches of evidence and flags."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        c = self.num_classes
        self.images = np.zeros(c, np.int64)
        self.agree = np.zeros(c, np.int64)
        self.mislabelled = np.zeros(c, np.int64)
        self.multi_object = np.zeros(c, np.int64)
        self.not_visible = np.zeros(c, np.int64)
        self.p_label_sum = np.zeros(c, np.float64)
        self.pairs: Counter[tuple[int, int]] = Counter()

    def update(self, ev: Evidence, flags: Flags) -> None:
        c = self.num_classes
        known = ev.label >= 0
        lab = ev.label[known]
        top1 = ev.top_classes[known, 0]

        def count(mask: np.ndarray) -> np.ndarray:
            return np.bincount(ev.label[known & mask], minlength=c)

        self.images += np.bincount(lab, minlength=c)
        self.agree += np.bincount(lab[top1 == lab], minlength=c)
        self.mislabelled += count(flags.mislabelled)
        self.multi_object += count(flags.multi_object)
        self.not_visible += count(flags.not_visible)
        self.p_label_sum += np.bincount(lab, weights=ev.p_label[known], minlength=c)
        off = top1 != lab
        if off.any():
            codes, counts = np.unique(lab[off].astype(np.int64) * c + top1[off], return_counts=True)
            for code, n in zip(codes.tolist(), counts.tolist(), strict=True):
                self.pairs[divmod(code, c)] += n

    def per_class(self, name: Callable[[int], str], *, min_images: int = 1) -> list[dict[str, Any]]:
        """Classes with at least ``min_images`` labelled images, lowest agreement first."""
        rows = []
        for j in np.flatnonzero(self.images >= max(min_images, 1)).tolist():
            n = int(self.images[j])
            rows.append({
                "class": j,
                "name": name(j),
                "images": n,
                "agreement": float(self.agree[j] / n),
                "mean_p_label": float(self.p_label_sum[j] / n),
                "mislabelled": int(self.mislabelled[j]),
                "multi_object": int(self.multi_object[j]),
                "not_visible": int(self.not_visible[j]),
            })
        rows.sort(key=lambda r: (r["agreement"], -r["images"], r["class"]))
        return rows

    def confusions(self, name: Callable[[int], str], *, limit: int | None = None) -> list[dict[str, Any]]:
        """Confusion pairs ``label → teacher`` by count (ties: by class), with the reverse count."""
        ordered = sorted(self.pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if limit is not None:
            ordered = ordered[:limit]
        return [
            {
                "label": y,
                "label_name": name(y),
                "teacher": j,
                "teacher_name": name(j),
                "count": n,
                "reverse": int(self.pairs.get((j, y), 0)),
                "share_of_label": float(n / self.images[y]) if self.images[y] else 0.0,
            }
            for (y, j), n in ordered
        ]

    def totals(self) -> dict[str, Any]:
        labelled = int(self.images.sum())
        return {
            "labelled": labelled,
            "classes": int((self.images > 0).sum()),
            "agreement": float(self.agree.sum() / labelled) if labelled else None,
        }
