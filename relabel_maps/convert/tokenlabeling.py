"""Convert TokenLabeling label maps (zihangJiang/TokenLabeling) to the relabel-maps format.

TokenLabeling stores, per training image, a ``torch.save``'d float16 tensor ``[2, 5, H, W]``
(NF-Net-F6 teacher): index 0 the top-5 scores per location, index 1 their class indices. The scores
are float16 at the source, so the default ``f16`` encoding stores them without any loss.
Whether the scores are logits or probabilities is read off the data unless given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from . import ConvertResult, convert_release

__all__ = ["convert_tokenlabeling", "TOKENLABELING_TEACHER"]

TOKENLABELING_TEACHER = {
    "name": "NFNet-F6, TokenLabeling release",
    "weights": "zihangJiang/TokenLabeling label_top5_train_nfnet",
}


def convert_tokenlabeling(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    encoding: str = "f16",
    score_kind: str = "auto",
    image_suffix: str = ".JPEG",
    num_classes: int = 1000,
    teacher: Mapping[str, Any] | None = TOKENLABELING_TEACHER,
    class_set: str | None = "imagenet-1k",
    progress: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> ConvertResult:
    """Convert a folder tree or tar of TokenLabeling ``.pt`` maps into ``output``.

    Other keyword arguments go to :func:`relabel_maps.convert.convert_release`.
    """
    return convert_release(
        source,
        output,
        source_name="TokenLabeling",
        source_format="per-image torch.save tensor [2, 5, H, W] float16: [0] top-5 scores, [1] class indices",
        num_classes=num_classes,
        score_kind=score_kind,
        encoding=encoding,
        teacher=teacher,
        class_set=class_set,
        image_suffix=image_suffix,
        progress=progress,
        **kwargs,
    )
