"""Official-ReLabel compatibility mode (spec/POOLING.md, "Compatibility mode").

:func:`relabel_compat` reproduces the soft label of the released ReLabel training code
(``get_labelmaps`` + ``get_relabel``) for one sample, quirks included; :func:`to_official_coords` and
:func:`from_official_coords` convert between that code's crop coordinates and this library's boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .roi_align import Box, as_box, check_box, separable_weights

if TYPE_CHECKING:  # pragma: no cover
    from .labelmap import LabelMap

__all__ = ["relabel_compat", "to_official_coords", "from_official_coords"]


def to_official_coords(box: Sequence[float], flip: bool = False) -> Box:
    """``(x0, y0, x1, y1)`` → the released ReLabel code's normalised crop coords ``(y0, x0, y1, x1)``
    (``RandomResizedCropWithCoords``' ``(i/H, j/W, h/H, w/W)`` after ``coords[2:] += coords[:2]``).

    ``flip`` is accepted and dropped: the released pipeline applies ``RandomHorizontalFlip`` to the
    image only, after the crop, and never tells the pooler (spec/POOLING.md, "Compatibility mode").
    """
    x0, y0, x1, y1 = check_box(box)
    return (y0, x0, y1, x1)


def from_official_coords(coords: Sequence[float]) -> tuple[Box, bool]:
    """The released code's ``(y0, x0, y1, x1)`` → ``((x0, y0, x1, y1), flip=False)``: the box that
    names the same image region in this library's convention."""
    y0, x0, y1, x1 = check_box(coords)
    return (x0, y0, x1, y1), False


def relabel_compat(labelmap: LabelMap, coords: Sequence[float], flip: bool = False) -> np.ndarray:
    """The soft label the released ReLabel training code (``get_labelmaps`` + ``get_relabel``)
    computes for one sample, quirks included (spec/POOLING.md, "Compatibility mode").

    ``coords`` are that code's normalised ``(y0, x0, y1, x1)``. The dense map holds the stored scores
    and 0 elsewhere; ``coords * W - 0.5`` is passed to RoIAlign as ``(x0, y0, x1, y1)`` — so the box
    is transposed — with ``aligned=False``, a 1x1 output and the adaptive sampling ratio; then a
    softmax over all classes. ``flip`` has no effect, as in the released code. Returns ``(C,)``
    float32.
    """
    del flip  # the released pipeline never passes the flip to the pooler
    k, h, w = labelmap.shape
    scale = np.float32(w)  # label_maps.size(3) scales both axes
    half = np.float32(0.5)
    c0, c1, c2, c3 = (float(np.float32(v) * scale - half) for v in as_box(coords))
    wy, wx = separable_weights((c0, c1, c2, c3), h, w, (1, 1), 1.0, -1, False)  # read as (x0, y0, x1, y1)
    loc = np.outer(wy[0], wx[0]).reshape(h * w)
    scores = labelmap.scores.reshape(k, h * w)
    if labelmap.counts is not None:  # padding entries carry nothing: the dense map is 0 there
        scores = np.where(labelmap.valid().reshape(k, h * w), scores.astype(np.float64), 0.0)
    z = np.bincount(labelmap.indices.reshape(-1), weights=(scores * loc).reshape(-1), minlength=labelmap.num_classes)
    e = np.exp(z - z.max())  # softmax over all classes
    return (e / e.sum()).astype(np.float32)
