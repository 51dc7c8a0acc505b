"""What the annotating teacher saw: its crop mode, crop fraction and input size, and the window of
an original image that they select.

The vocabulary is timm's eval-resize one (``crop_mode`` + ``crop_pct``):

* ``"squash"``: the whole image resized to the input size, aspect ratio ignored (ReLabel).
* ``"center"``: resized with its aspect ratio kept so that it covers ``input_size / crop_pct``, then
  centre-cropped to ``input_size`` (shorter-side resize + centre crop for square inputs).

:func:`source_window` is the single rule for that window: the annotator crops with it and the
training side (:class:`TeacherFrame`) maps boxes through it, so both agree pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["CROP_MODES", "normalize_crop_mode", "source_window", "TeacherFrame"]

CROP_MODES = ("center", "squash")

# Spellings written or accepted before format 1.1 (``teacher.resize``), mapped to ``CROP_MODES``; looked
# up case-insensitively with ``-`` read as ``_`` ("center-crop", "shorter-side", ...).
_SPELLINGS = {
    **dict.fromkeys(
        ("center", "center_crop", "centre_crop", "shorter_center_crop", "shorter_side_center_crop", "shorter",
         "shorter_side", "crop"),
        "center",
    ),
    **dict.fromkeys(("squash", "stretch", "resize"), "squash"),
    # what `relabel-maps convert --from relabel` 0.1.0 wrote for the official (whole-image) release
    "full image resized to 475x475": "squash",
}


def normalize_crop_mode(value: str) -> str:
    """``"center"`` or ``"squash"`` for any accepted spelling of a crop mode, including the free-text
    ``teacher.resize`` values of format 1.0 files (``"center-crop"``, ``"shorter-side"``, ``"stretch"``, ...)."""
    mode = _SPELLINGS.get(str(value).strip().lower().replace("-", "_"))
    if mode is None:
        raise InvalidArgumentError(
            f"unknown crop mode {value!r}: use one of {CROP_MODES} "
            f"(also read: {', '.join(s for s in _SPELLINGS if s not in CROP_MODES)}, '-' for '_')"
        )
    return mode


def source_window(
    h: int, w: int, size: Sequence[int], crop_mode: str, crop_pct: float = 1.0
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the region of an ``h x w`` image that is resized to ``size``:
    the whole image for ``"squash"``; for ``"center"`` the centred window, in whole pixels, that
    covers ``size`` after a resize to ``size / crop_pct``."""
    if normalize_crop_mode(crop_mode) == "squash":
        return 0, 0, h, w
    th, tw = int(size[0]), int(size[1])
    scale = max(th / h, tw / w) / crop_pct  # cover the target, then centre-crop its aspect ratio
    ch, cw = min(h, max(1, round(th / scale))), min(w, max(1, round(tw / scale)))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclass(frozen=True)
class TeacherFrame:
    """How the annotating teacher turned an original image into its input.

    * ``"squash"``: the teacher's normalised frame is the original image's normalised frame.
    * ``"center"``: the teacher saw a centred window of the original image (see :func:`source_window`),
      rounded to whole pixels as the annotator crops it; boxes are re-expressed in that window and
      clipped to it (the map knows nothing outside it).

    ``crop_mode`` accepts any spelling :func:`normalize_crop_mode` knows and stores the canonical one.
    """

    crop_mode: str = "squash"
    input_size: tuple[int, int] | None = None  # (height, width) of the teacher input
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_mode", normalize_crop_mode(self.crop_mode))
        if self.crop_mode == "center" and self.input_size is None:
            raise InvalidArgumentError("a 'center' teacher frame needs input_size")
        if not 0.0 < self.crop_pct <= 1.0:
            raise InvalidArgumentError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> TeacherFrame:
        """Read the frame from a label-map file's metadata: ``teacher.crop_mode``, ``teacher.crop_pct`` and
        ``teacher.input_size`` (also accepted at the top level); files written before format 1.1 store
        the mode as ``teacher.resize``. A missing mode means ``"squash"``."""
        meta = dict(metadata or {})
        teacher_meta = meta.get("teacher")
        teacher: Mapping[str, Any] = teacher_meta if isinstance(teacher_meta, Mapping) else {}

        def get(name: str) -> Any:
            return teacher.get(name, meta.get(name))

        mode = get("crop_mode") or get("resize") or "squash"
        size = get("input_size")
        if isinstance(size, (int, float)):
            size = (int(size), int(size))
        elif isinstance(size, Sequence) and len(size) in (2, 3):
            size = (int(size[-2]), int(size[-1]))  # (H, W) or timm's (C, H, W)
        else:
            size = None
        return cls(str(mode), size, float(get("crop_pct") or 1.0))

    def window(self, image_size: tuple[float, float]) -> tuple[float, float, float, float]:
        """The part of an original ``(width, height)`` image the teacher saw: ``(x0, y0, x1, y1)``
        pixels, rounded to whole pixels for ``"center"`` as the annotator crops it."""
        top, left, ch, cw = source_window(
            int(image_size[1]), int(image_size[0]), self.input_size or (0, 0), self.crop_mode, self.crop_pct
        )
        return float(left), float(top), float(left + cw), float(top + ch)

    def normalize(
        self, box: Sequence[float], image_size: tuple[float, float], min_size: float = 1e-3
    ) -> tuple[float, float, float, float]:
        """Map a box in original-image pixels to the teacher's normalised frame, clipped to ``[0, 1]``.

        A box that falls outside the teacher's window keeps a sliver of ``min_size`` at the nearest
        edge, so that it pools the closest locations the teacher saw."""
        fx0, fy0, fx1, fy1 = self.window(image_size)
        out = []
        for lo, hi, a, b in ((box[0], box[2], fx0, fx1), (box[1], box[3], fy0, fy1)):
            u0 = min(max((lo - a) / (b - a), 0.0), 1.0)
            u1 = min(max((hi - a) / (b - a), 0.0), 1.0)
            if u1 - u0 < min_size:
                u0 = min(u0, 1.0 - min_size)
                u1 = u0 + min_size
            out.append((u0, u1))
        return out[0][0], out[1][0], out[0][1], out[1][1]
