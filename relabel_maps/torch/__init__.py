"""PyTorch training integration: crop boxes from transforms, a dataset wrapper, batched pooling,
CutMix/Mixup with label maps and a soft-target loss.

The only part of the package that imports torch and torchvision. A training loop::

    maps = relabel_maps.open("maps/")
    transform = v2.Compose([RandomResizedCropWithBox(224), RandomHorizontalFlipWithBox(),
                            v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    data = LabelMapDataset(ImageFolder(root), "maps/", transform=transform, mode="map")
    loader = DataLoader(data, batch_size=256, num_workers=8, collate_fn=collate_label_maps)
    for images, labels in loader:                       # labels: LabelMapBatch (sparse top-k maps)
        soft = labels.to(device).pool()                 # (B, C) soft targets, pooled on the device
        loss = soft_target_cross_entropy(model(images.to(device)), soft)

One module per job:

* :mod:`.boxes`: :class:`CropBox` follows every geometric v2 transform (crop, resized crop, resize,
  centre crop, pad, horizontal flip), so the pooled region always matches the pixels the network
  sees; :func:`transform_with_box` runs a pipeline without that dispatch at about no cost.
* :mod:`.pool`: :func:`pool_batch` pools a batch of sparse maps on any device (:class:`LabelMapBatch`,
  :func:`stack_label_maps`).
* :mod:`.data`: :class:`LabelMapDataset` and :func:`collate_label_maps`.
* :mod:`.mix`: CutMix / Mixup with label-map targets. :mod:`.loss`: soft-target cross-entropy.
* :mod:`.wds`: the same labels from tar shards and Hugging Face datasets: a WebDataset pipeline
  stage (:class:`LabelMapStage`), ``wids`` and ``datasets.Dataset`` views for :class:`LabelMapDataset`.

:class:`~relabel_maps.frame.TeacherFrame` turns a box into the normalised frame the annotating teacher
saw (read from the file's ``teacher.crop_mode`` / ``teacher.crop_pct`` / ``teacher.input_size``).
Conventions (spec/POOLING.md): boxes are ``(x0, y0, x1, y1)`` normalised to the teacher frame and
never mirrored; ``flip`` mirrors the ``S x S`` output bins (a ``size == 1`` label is unchanged).
"""

from __future__ import annotations

from ..errors import DependencyError

try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise DependencyError(
        f'relabel_maps.torch needs torch and torchvision ({exc}): pip install "relabel-maps[torch]"'
    ) from exc

from ..frame import TeacherFrame
from .boxes import BoxState, CropBox, RandomHorizontalFlipWithBox, RandomResizedCropWithBox, transform_with_box
from .data import LabelMapDataset, SparseLabel, collate_label_maps, image_folder_key
from .loss import SoftTargetCrossEntropy, soft_target_cross_entropy
from .mix import LabelMapMixup, cut_boxes, mix_soft_targets
from .pool import LabelMapBatch, pool_batch, stack_label_maps
from .wds import HFImages, LabelMapStage, ShardImages, dataset_key, folder_key_without_extension, parquet_keys

__all__ = [
    "TeacherFrame",
    "BoxState",
    "CropBox",
    "RandomResizedCropWithBox",
    "RandomHorizontalFlipWithBox",
    "transform_with_box",
    "pool_batch",
    "LabelMapBatch",
    "stack_label_maps",
    "LabelMapDataset",
    "SparseLabel",
    "collate_label_maps",
    "image_folder_key",
    "cut_boxes",
    "mix_soft_targets",
    "LabelMapMixup",
    "soft_target_cross_entropy",
    "SoftTargetCrossEntropy",
    "LabelMapStage",
    "ShardImages",
    "HFImages",
    "dataset_key",
    "folder_key_without_extension",
    "parquet_keys",
]
