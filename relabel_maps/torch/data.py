"""A dataset wrapper that gives every sample its crop's label, and the collate function of its
``mode="map"`` samples.

Pooling choices:

* ``mode="pool"``: each DataLoader worker pools its sample with the numpy pooler
  (:meth:`relabel_maps.LabelMap.pool`); simplest, no change to the training step.
* ``mode="map"`` + :func:`collate_label_maps`: workers ship the sparse top-k arrays; the step pools
  the whole batch on the device with :func:`~relabel_maps.torch.pool_batch` (needed for CutMix,
  cheapest per sample).
* ``mode="box"``: workers ship only boxes and indices; :meth:`LabelMapDataset.gather` reads the maps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .. import open as open_maps
from ..classmap import ClassMap, load_class_map
from ..errors import InvalidArgumentError
from ..frame import TeacherFrame
from ..labelmap import LabelMap
from .boxes import CropBox, identity_state, track
from .pool import LabelMapBatch, stack_label_maps

__all__ = ["image_folder_key", "SparseLabel", "LabelMapDataset", "collate_label_maps"]

Box = tuple[float, float, float, float]


def image_folder_key(dataset: Any, index: int) -> str:
    """Key of a torchvision ``ImageFolder``/``DatasetFolder`` sample: its path relative to the root,
    with ``/`` separators (``"n01440764/n01440764_10026.JPEG"``)."""
    path = dataset.samples[index][0]
    root = os.path.join(dataset.root, "")  # ImageFolder joins its root and the relative path
    rel = path[len(root):] if path.startswith(root) else os.path.relpath(path, dataset.root)
    return str(rel if os.sep == "/" else rel.replace(os.sep, "/"))


@dataclass
class SparseLabel:
    """One sample's label map and crop, as yielded by ``LabelMapDataset(mode="map")``."""

    indices: np.ndarray
    scores: np.ndarray
    box: Box
    flip: bool
    num_classes: int
    score_kind: str
    lse: np.ndarray | None
    counts: np.ndarray | None
    key: str
    class_map: ClassMap | None = None


class LabelMapDataset(Dataset):
    """Wrap a keyed image dataset so that every sample comes with its crop's label.

    Args:
        dataset: yields ``(image, target)``; ``torchvision.datasets.ImageFolder`` works as is.
        maps: path of a label-map file/folder (opened lazily in each worker; picklable for spawn), or
            an opened mapping of key -> :class:`~relabel_maps.LabelMap`.
        key_fn: ``key_fn(dataset, index) -> key``; defaults to :func:`image_folder_key`.
        transform: a ``torchvision.transforms.v2`` transform whose geometric steps update the crop
            box, applied as :func:`~relabel_maps.torch.transform_with_box` does (the box-returning
            transforms, ``v2.Compose`` and pixel-value steps skip the CropBox dispatch; other steps are
            called as ``step(image, CropBox)``). ``None``: the whole image.
        mode: ``"pool"`` yields ``(image, soft_label)`` pooled on the CPU in the worker; ``"box"``
            yields ``(image, box, flip, index)`` (pool later, e.g. with :meth:`gather`);
            ``"map"`` yields ``(image, SparseLabel)`` for :func:`collate_label_maps` and pooling on the
            device in the training step.
        size, fill, temperature: pooling options of ``mode="pool"``.
        frame: the teacher frame; default read from the maps' metadata.
        return_target: also yield the dataset's own target last.
        class_map: labels over the dataset's own classes instead of the teacher's: a
            :class:`~relabel_maps.classmap.ClassMap`, or its CSV/JSON file (read against the maps'
            metadata). Applied in every mode (``"map"``/``"box"``: by the batch's :meth:`pool`).

    ``num_classes`` and ``classes`` tell the size and names of the labels it yields (a student's
    output size).
    """

    def __init__(
        self,
        dataset: Any,
        maps: str | os.PathLike[str] | Mapping[str, LabelMap],
        *,
        key_fn: Callable[[Any, int], str] | None = None,
        transform: Callable[..., Any] | None = None,
        mode: str = "pool",
        size: int = 1,
        fill: str | None = None,
        temperature: float = 1.0,
        frame: TeacherFrame | None = None,
        return_target: bool = False,
        class_map: ClassMap | str | os.PathLike[str] | None = None,
    ) -> None:
        if mode not in ("pool", "box", "map"):
            raise InvalidArgumentError(f"mode must be 'pool', 'box' or 'map', got {mode!r}")
        if key_fn is None and not (hasattr(dataset, "samples") and hasattr(dataset, "root")):
            raise InvalidArgumentError(
                f"{type(dataset).__name__} is not an ImageFolder-like dataset (samples + root); "
                "pass key_fn(dataset, index) -> key"
            )
        self.dataset = dataset
        self.key_fn = key_fn or image_folder_key
        self.transform = transform
        self.mode = mode
        self.size, self.fill, self.temperature = size, fill, temperature
        self.return_target = return_target
        self._path = None if isinstance(maps, Mapping) else maps
        self._maps = maps if isinstance(maps, Mapping) else None
        self._frame = frame
        self._class_map = class_map

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._path is not None:
            state["_maps"] = None  # reopened in the worker
        return state

    @property
    def maps(self) -> Mapping[str, LabelMap]:
        if self._maps is None:
            assert self._path is not None  # set whenever the maps were given as a path
            self._maps = open_maps(self._path)
        return self._maps

    @property
    def class_map(self) -> ClassMap | None:
        """The class map in use (a file given as a path is read on first use)."""
        if self._class_map is not None and not isinstance(self._class_map, ClassMap):
            self._class_map = load_class_map(self._class_map, metadata=self._metadata())
        return self._class_map

    def _metadata(self) -> dict[str, Any]:
        """The maps' metadata (an opened mapping without any: the class count of its first map)."""
        meta = getattr(self.maps, "metadata", None)
        if meta is not None:
            return dict(meta)
        return {"num_classes": next(iter(self.maps.values())).num_classes}

    @property
    def num_classes(self) -> int:
        """The classes of the labels this dataset yields: the class map's, else the teacher's."""
        cm = self.class_map
        return int(self._metadata()["num_classes"]) if cm is None else cm.num_classes

    @property
    def classes(self) -> list[str] | None:
        """The names of those classes (``None`` when the maps store no class names)."""
        cm = self.class_map
        return cm.names if cm is not None else self._metadata().get("class_names")

    @property
    def frame(self) -> TeacherFrame:
        if self._frame is None:
            self._frame = TeacherFrame.from_metadata(getattr(self.maps, "metadata", None))
        return self._frame

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, index: int) -> str:
        return self.key_fn(self.dataset, index)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return self._with_label(index, *self._image_and_box(index))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, ...]]:
        """A batch of samples, as the DataLoader fetches them: every image and box first, then the
        batch's label maps in one tight loop (reading and pooling with warm caches costs several
        times less than between image decodes). Same samples and random draws as ``__getitem__``."""
        staged = [self._image_and_box(i) for i in indices]
        return [self._with_label(i, *st) for i, st in zip(indices, staged, strict=True)]

    def _image_and_box(self, index: int) -> tuple[Any, Any, Box, bool]:
        """``(image, target, box, flip)``: the transformed image and its box in the teacher frame."""
        image, target = self.dataset[index]
        if isinstance(image, tuple) and len(image) == 2 and isinstance(image[1], CropBox):
            image, state = image[0], image[1].state()  # the base dataset's transform already tracks the box
        else:
            state = identity_state(image)
        if self.transform is not None:
            image, state = track(self.transform, image, state)
        frame = self._frame if self._frame is not None else self.frame
        return image, target, frame.normalize(state.region, state.image_size), state.flip

    def _with_label(self, index: int, image: Any, target: Any, box: Box, flip: bool) -> tuple[Any, ...]:
        tail = (target,) if self.return_target else ()
        if self.mode == "box":
            return (image, torch.tensor(box, dtype=torch.float64), torch.tensor(flip), index, *tail)
        key = self.key_fn(self.dataset, index)
        lm = (self._maps if self._maps is not None else self.maps)[key]
        cm = self.class_map
        if self.mode == "pool":
            soft = lm.pool(box, flip=flip, size=self.size, fill=self.fill, temperature=self.temperature, class_map=cm)
            return (image, torch.from_numpy(np.ascontiguousarray(soft, dtype=np.float32)), *tail)
        label = SparseLabel(lm.indices, lm.scores, box, flip, lm.num_classes, lm.score_kind, lm.lse, lm.counts, key,
                            cm)
        return (image, label, *tail)

    def gather(self, indices: Iterable[int], boxes: Any = None, flips: Any = None, device: Any = None) -> LabelMapBatch:
        """The label maps of dataset ``indices`` as a :class:`~relabel_maps.torch.LabelMapBatch` (``mode="box"``)."""
        idx = [int(i) for i in indices]
        return stack_label_maps([self.maps[self.key(i)] for i in idx], boxes, flips, device, self.class_map)


def collate_label_maps(samples: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """DataLoader ``collate_fn`` for ``LabelMapDataset(mode="map")``: ``(images, LabelMapBatch[, targets])``."""
    labels: list[SparseLabel] = [s[1] for s in samples]
    maps = [
        LabelMap(label.indices, label.scores, num_classes=label.num_classes, score_kind=label.score_kind,
                 lse=label.lse, counts=label.counts, key=label.key, validate=False)
        for label in labels
    ]
    batch = stack_label_maps(maps, [label.box for label in labels], [label.flip for label in labels],
                             class_map=labels[0].class_map)
    images = default_collate([s[0] for s in samples])
    rest = tuple(default_collate([s[i] for s in samples]) for i in range(2, len(samples[0])))
    return (images, batch, *rest)
