"""The report's gallery: the most suspicious flagged images, each with a thumbnail and its top-1 map.

:class:`GalleryHeap` keeps the ``n`` most suspicious flagged images while the audit streams (memory
``O(n)``); :func:`render_items` then reads their maps (and images, where the label source holds them)
and draws a JPEG thumbnail and a PNG of the top-1 class map, coloured by the teacher's top classes,
placed over the part of the image the teacher saw (:class:`relabel_maps.frame.TeacherFrame`).
Pillow is needed for the drawings (``pip install 'relabel-maps[audit]'``).
"""

from __future__ import annotations

import base64
import heapq
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import require
from ..frame import TeacherFrame
from ..labelmap import LabelMap
from .evidence import Evidence
from .flags import Flags

__all__ = ["GalleryItem", "GalleryHeap", "render_items", "PALETTE"]

#: colours of the teacher's top classes on the map overlay (matplotlib's tab10)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # fmt: skip
THUMB_SIZE = 224


@dataclass
class GalleryItem:
    """One flagged image as the report shows it."""

    key: str
    suspicion: float
    flags: list[str]
    label: int
    label_given: str | None
    label_name: str
    p_label: float | None
    label_local_max: float | None
    label_share: float
    teacher: list[dict[str, Any]]  # class, name, p, share, colour
    objects: list[str]
    real_labels: list[str]
    suggested: str | None
    thumbnail: str | None = None  # data: URL of a JPEG
    overlay: str | None = None  # data: URL of a PNG
    window: tuple[float, float, float, float] = (0.0, 0.0, 100.0, 100.0)  # overlay box, % of the thumbnail
    extra: dict[str, Any] = field(default_factory=dict)


class GalleryHeap:
    """The ``n`` flagged images with the highest suspicion seen so far (ties: first seen)."""

    def __init__(self, n: int) -> None:
        self.n = max(int(n), 0)
        self._heap: list[tuple[float, int, GalleryItem]] = []
        self._seen = 0

    def offer(self, ev: Evidence, flags: Flags, given: Sequence[str | None], name: Callable[[int], str]) -> None:
        """Consider every flagged image of a batch."""
        if self.n == 0:
            return
        rows = np.flatnonzero(flags.any())
        if rows.size > self.n:  # only a batch's n most suspicious can enter
            rows = np.sort(rows[np.argsort(-flags.suspicion[rows], kind="stable")[: self.n]])
        for i in rows.tolist():
            self._seen += 1
            entry = (float(flags.suspicion[i]), -self._seen)
            if len(self._heap) >= self.n and entry <= self._heap[0][:2]:
                continue
            item = _item(ev, flags, given, name, i)
            if len(self._heap) < self.n:
                heapq.heappush(self._heap, (*entry, item))
            else:
                heapq.heapreplace(self._heap, (*entry, item))

    def items(self) -> list[GalleryItem]:
        """Most suspicious first."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _item(ev: Evidence, flags: Flags, given: Sequence[str | None], name: Callable[[int], str], i: int) -> GalleryItem:
    lab = int(ev.label[i])
    teacher = [
        {"class": int(c), "name": name(int(c)), "p": float(p), "share": float(s), "colour": PALETTE[j % len(PALETTE)]}
        for j, (c, p, s) in enumerate(zip(ev.top_classes[i], ev.top_probs[i], ev.top_shares[i], strict=True))
        if c >= 0
    ]
    sug = int(flags.suggested[i])
    return GalleryItem(
        key=ev.keys[i],
        suspicion=float(flags.suspicion[i]),
        flags=flags.names(i),
        label=lab,
        label_given=given[i],
        label_name=name(lab) if lab >= 0 else "",
        p_label=_num(float(ev.p_label[i])),
        label_local_max=_num(float(ev.label_local_max[i])),
        label_share=float(ev.label_share[i]),
        teacher=teacher,
        objects=[name(c) for c in flags.object_list(i)],
        real_labels=[name(c) for c in flags.real_labels(ev, i)],
        suggested=name(sug) if sug >= 0 else None,
    )


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def overlay_png(labelmap: LabelMap, teacher: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG (``W x H`` pixels, one per location) of the top-1 map: the teacher's top classes in their
    colours, every other class transparent."""
    image_mod = require("PIL.Image", "audit")
    top1 = labelmap.top1()
    rgba = np.zeros((*top1.shape, 4), np.uint8)
    for t in teacher:
        rgba[top1 == t["class"]] = (*_hex(t["colour"]), 255)
    buf = io.BytesIO()
    image_mod.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def thumbnail(data: bytes, size: int = THUMB_SIZE) -> tuple[bytes, tuple[int, int]] | None:
    """``(JPEG thumbnail, original (width, height))`` of an encoded image; ``None`` if it does not decode."""
    image_mod = require("PIL.Image", "audit")
    try:
        with image_mod.open(io.BytesIO(data)) as img:
            original = img.size
            rgb = img.convert("RGB")
            rgb.thumbnail((size, size))
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=82)
            return buf.getvalue(), original
    except Exception:  # noqa: BLE001 - any undecodable image just has no thumbnail
        return None


def render_items(
    items: Sequence[GalleryItem],
    maps: Mapping[str, LabelMap],
    images: Callable[[Sequence[str]], Mapping[str, bytes]],
    frame: TeacherFrame,
) -> None:
    """Draw each item's overlay (from ``maps``) and thumbnail (from ``images(keys)``), in place."""
    data = images([item.key for item in items]) if items else {}
    for item in items:
        item.overlay = _data_url("image/png", overlay_png(maps[item.key], item.teacher))
        encoded = data.get(item.key)
        thumb = thumbnail(encoded) if encoded is not None else None
        if thumb is None:
            continue
        jpeg, (w, h) = thumb
        item.thumbnail = _data_url("image/jpeg", jpeg)
        try:
            x0, y0, x1, y1 = frame.window((w, h))
        except Exception:  # noqa: BLE001 - a frame that cannot place the map: cover the image
            x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
        item.window = (100 * x0 / w, 100 * y0 / h, 100 * x1 / w, 100 * y1 / h)
