"""How sharp a dataset's soft labels are: the mean top-1 probability and entropy of pooled labels.

A label map stores only the top-k classes per location; how the others are filled (``fill``) and the
``temperature`` decide how peaked a pooled label is. With ReLabel's ``fill="zero"`` every class
outside the top-k keeps logit 0, so a teacher whose logits are small (the packaged EfficientNet-Lite0:
top logits around 5-10) gives flat labels over 1000 classes, while a teacher with large logits
(EfficientNet-L2) gives peaked ones. :func:`label_sharpness` measures this on a sample of records,
for whole images and for random crops (torchvision's ``RandomResizedCrop`` scales and ratios), in
every fill mode the maps allow; ``relabel-maps info`` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .classmap import ClassMap
from .pooling import FILL_MODES, check_temperature
from .reader import LabelMaps

__all__ = ["label_sharpness", "random_crop_boxes", "fills_for"]


def random_crop_boxes(
    n: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (0.75, 4 / 3),
) -> np.ndarray:
    """``n`` normalised boxes drawn as ``RandomResizedCrop`` draws them (area fraction in ``scale``,
    log-uniform aspect ratio in ``ratio``; ten tries, then the whole frame)."""
    out = np.tile([0.0, 0.0, 1.0, 1.0], (n, 1))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for i in range(n):
        for _ in range(10):
            area = rng.uniform(*scale)
            aspect = math.exp(rng.uniform(lo, hi))
            w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if w <= 1.0 and h <= 1.0:
                x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
                out[i] = (x0, y0, x0 + w, y0 + h)
                break
    return out


def fills_for(metadata: dict[str, Any], has_lse: bool, temperature: float = 1.0) -> list[str]:
    """The fill modes the maps allow: ``"uniform"`` needs probabilities (or a stored lse) and temperature 1."""
    uniform_ok = (metadata.get("score_kind") == "probabilities" or has_lse) and temperature == 1.0
    return [f for f in FILL_MODES if f != "uniform" or uniform_ok]


def _top1_entropy(p: np.ndarray) -> tuple[float, float]:
    p = p.astype(np.float64)
    nz = p[p > 0]
    return float(p.max()), float(-(nz * np.log(nz)).sum())


def label_sharpness(
    maps: LabelMaps,
    *,
    sample: int = 32,
    crops: int = 8,
    fills: Sequence[str] | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    class_map: ClassMap | None = None,
) -> list[dict[str, Any]]:
    """Per fill mode, over ``sample`` evenly spaced records and ``crops`` random crops of each: the
    mean top-1 probability and mean entropy (nats) of the whole-image labels and of the crop labels,
    and the crops' median top-1. ``fills`` default to every mode the maps allow (:func:`fills_for`)."""
    t = check_temperature(temperature)
    n = len(maps)
    positions: list[int] = np.unique(np.linspace(0, n - 1, min(sample, n)).astype(int)).tolist() if sample > 0 else []
    labelmaps = [maps.at(i)[1] for i in positions]
    if fills is None:
        has_lse = bool(labelmaps) and all(m.lse is not None for m in labelmaps)
        fills = fills_for(dict(maps.metadata), has_lse, t)
    rng = np.random.default_rng(seed)
    boxes = [random_crop_boxes(crops, rng) for _ in labelmaps]
    classes = class_map.num_classes if class_map is not None else int(maps.metadata["num_classes"])
    rows = []
    for fill in fills:
        whole, crop = [], []
        for lm, bxs in zip(labelmaps, boxes, strict=True):
            whole.append(_top1_entropy(lm.pool(fill=fill, temperature=t, class_map=class_map)))
            crop += [_top1_entropy(lm.pool(b, fill=fill, temperature=t, class_map=class_map)) for b in bxs]
        w, c = np.array(whole).reshape(-1, 2), np.array(crop).reshape(-1, 2)
        rows.append({
            "fill": fill,
            "temperature": t,
            "records": len(labelmaps),
            "crops": len(crop),
            "whole_top1": float(w[:, 0].mean()) if len(w) else None,
            "whole_entropy": float(w[:, 1].mean()) if len(w) else None,
            "crop_top1": float(c[:, 0].mean()) if len(c) else None,
            "crop_top1_median": float(np.median(c[:, 0])) if len(c) else None,
            "crop_entropy": float(c[:, 1].mean()) if len(c) else None,
            "max_entropy": math.log(classes),
        })
    return rows
