"""Annotate images with a teacher: folders of images in, label-map datasets out.

Needs the ``annotate`` extra (torch, torchvision, timm, pillow, safetensors)::

    from relabel_maps.annotate import annotate, load_teacher
    summary = annotate("photos/", "maps.rlm", load_teacher("lite0-packaged"))

One module per job: :mod:`.presets` (named teachers), :mod:`.weights` (checkpoints and pretrained
weights), :mod:`.head` (the fully-convolutional head), :mod:`.teacher` (:class:`Teacher`,
:func:`load_teacher`), :mod:`.sources` (which images), :mod:`.decode` (image decoding),
:mod:`.batches`, :mod:`.step` and :mod:`.sinks` (the pipeline's stages), :mod:`.device` (rank to
device, batch size from free memory, out-of-memory back-off), :mod:`.outputs` (the run's files) and
:mod:`.pipeline` (the run, :func:`annotate`).
"""

from __future__ import annotations

from ..errors import DependencyError

try:
    import PIL  # noqa: F401
    import safetensors  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError as exc:
    raise DependencyError(
        f"relabel_maps.annotate needs {exc.name or 'torch and timm'}: pip install \"relabel-maps[annotate]\""
    ) from exc

from ..layout import combined_index_path, part_output_path
from .decode import DEFAULT_MAX_PIXELS
from .pipeline import AnnotateSummary, annotate
from .presets import PRESETS, TeacherPreset, list_presets
from .sources import SAMPLES, ImageItem, list_images, parse_shard, resolve_source
from .step import DeviceMemoryError
from .teacher import Teacher, load_teacher
from .weights import TeacherWeightsError

__all__ = [
    "AnnotateSummary",
    "DEFAULT_MAX_PIXELS",
    "DeviceMemoryError",
    "ImageItem",
    "PRESETS",
    "SAMPLES",
    "Teacher",
    "TeacherPreset",
    "TeacherWeightsError",
    "annotate",
    "combined_index_path",
    "list_images",
    "list_presets",
    "load_teacher",
    "parse_shard",
    "part_output_path",
    "resolve_source",
]
