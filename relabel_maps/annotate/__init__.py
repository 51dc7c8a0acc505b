"""Annotate images with a teacher: folders of images in, label-map datasets out.

Needs the ``annotate`` extra (torch, torchvision, timm, pillow); the CLI imports it lazily::

    from relabel_maps.annotate import annotate, load_teacher
    summary = annotate("photos/", "maps.rlm", load_teacher("lite0-packaged"))
"""

from __future__ import annotations

from .pipeline import AnnotateSummary, annotate
from .sources import ImageItem, list_images, parse_shard
from .teachers import PRESETS, Teacher, TeacherWeightsError, list_presets, load_teacher

__all__ = [
    "AnnotateSummary",
    "ImageItem",
    "PRESETS",
    "Teacher",
    "TeacherWeightsError",
    "annotate",
    "list_images",
    "list_presets",
    "load_teacher",
    "parse_shard",
]
