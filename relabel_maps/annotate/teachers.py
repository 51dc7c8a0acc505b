"""The teacher API under one module name: presets, weights loading, the dense head and :class:`Teacher`."""

from __future__ import annotations

from .head import dense_head
from .presets import PRESETS, TeacherPreset, list_presets
from .teacher import Teacher, load_teacher
from .weights import TeacherWeightsError, load_checkpoint_state, lukemelas_to_timm

__all__ = [
    "PRESETS",
    "Teacher",
    "TeacherPreset",
    "TeacherWeightsError",
    "dense_head",
    "list_presets",
    "load_checkpoint_state",
    "load_teacher",
    "lukemelas_to_timm",
]
