"""Convert the official ReLabel release (naver-ai/relabel_imagenet) to the relabel-maps format.

The release holds, for every ImageNet training image, a ``torch.save``'d float32 tensor
``[2, 5, 15, 15]``: the top-5 logits of EfficientNet-L2 (Noisy Student, run fully-convolutionally
at 475 px) at each of 15x15 locations, and their class indices stored as floats. By default the
scores are stored losslessly (``f32`` encoding), so :func:`relabel_maps.pooling.relabel_compat`
reproduces the released training code's soft labels exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from . import ConvertResult, convert_release

__all__ = ["convert_relabel", "RELABEL_TEACHER"]

#: What the ReLabel paper and code say about the teacher that produced the released maps.
RELABEL_TEACHER = {
    "name": "EfficientNet-L2 (Noisy Student), ReLabel release",
    "weights": "naver-ai/relabel_imagenet imagenet_efficientnet_l2_sz475_top5",
    "input_size": [475, 475],
    "crop_mode": "squash",  # the full image resized to 475x475
    "crop_pct": 1.0,
    "grid": [15, 15],
}


def convert_relabel(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    encoding: str = "f32",
    image_suffix: str = ".JPEG",
    strict_shape: bool = True,
    num_classes: int = 1000,
    score_kind: str = "logits",
    teacher: Mapping[str, Any] | None = RELABEL_TEACHER,
    class_set: str | None = "imagenet-1k",
    progress: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> ConvertResult:
    """Convert a folder tree or tar of the official ReLabel ``.pt`` maps into ``output``.

    ``strict_shape`` rejects tensors that are not ``[2, 5, 15, 15]``. Other keyword arguments go to
    :func:`relabel_maps.convert.convert_release` (``max_records``, ``overwrite``, ``resume``, ...).
    """
    return convert_release(
        source,
        output,
        source_name="relabel_imagenet",
        source_format="per-image torch.save tensor [2, 5, 15, 15] float32: [0] top-5 logits, [1] class indices",
        num_classes=num_classes,
        score_kind=score_kind,
        encoding=encoding,
        teacher=teacher,
        class_set=class_set,
        image_suffix=image_suffix,
        expect_k=5 if strict_shape else None,
        expect_hw=(15, 15) if strict_shape else None,
        progress=progress,
        **kwargs,
    )
