"""Training from tar shards and Hugging Face datasets: the crop's label for WebDataset pipelines,
``wids`` indexed shards and ``datasets.Dataset``.

* :class:`LabelMapStage`: a WebDataset pipeline stage (``.map(stage)``) that transforms a sample's
  image with box-tracking transforms and adds its crop's label. It runs wherever the pipeline runs
  (after ``shuffle``, in DataLoader workers), keyed by the sample's ``__key__``.
* :class:`ShardImages` (``wids.ShardListDataset``) and :class:`HFImages` (``datasets.Dataset``):
  ``(image, target)`` views with a ``key(index)`` method, for :class:`~relabel_maps.torch.LabelMapDataset`
  with ``key_fn=dataset_key``.
* Keys follow :mod:`relabel_maps.samplekeys`, so maps made from one layout serve another: maps from
  tar shards with an ``ImageFolder`` copy of the same images (``key_fn=folder_key_without_extension``),
  maps from Parquet files with the ``datasets.Dataset`` loaded from them (``keys=parquet_keys(files)``).

All of them reuse :class:`~relabel_maps.torch.LabelMapDataset` for the transform, the teacher frame,
pooling and class maps, so every layout gets the same labels for the same image and crop.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ..errors import InvalidArgumentError, MissingKeyError, require
from ..labelmap import LabelMap
from ..layout import is_hub_url
from ..samplekeys import parquet_key, strip_extension, tar_key
from .data import LabelMapDataset, image_folder_key

__all__ = [
    "IMAGE_FIELDS",
    "HFImages",
    "LabelMapStage",
    "ShardImages",
    "dataset_key",
    "folder_key_without_extension",
    "parquet_keys",
]

#: sample fields taken as the image, in order of preference (WebDataset lower-cases extensions)
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "jpe", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm", "pnm")


def folder_key_without_extension(dataset: Any, index: int) -> str:
    """``key_fn`` for an ``ImageFolder`` read with maps annotated from tar shards of the same files
    (written with member names = relative paths): the folder key without its extension."""
    return strip_extension(image_folder_key(dataset, index))


def dataset_key(dataset: Any, index: int) -> str:
    """``key_fn`` for the adapters here (and any dataset with a ``key(index)`` method)."""
    key: str = dataset.key(index)
    return key


def _pil(value: Any) -> Any:
    """The image as training sees it: encoded bytes and PIL images of any mode become RGB PIL images (as
    ``ImageFolder`` and WebDataset's ``"pil"`` decoder give them); tensors and arrays pass as they are."""
    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, io.IOBase):  # wids hands members over as streams
        value.seek(0)
        value = value.read()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(value))).convert("RGB")
    if isinstance(value, Mapping) and "bytes" in value:  # a datasets Image cell with decode=False
        if value["bytes"] is None:
            raise InvalidArgumentError(f"the image holds no bytes (path {value.get('path')!r})")
        return _pil(value["bytes"])
    return value


class _Slot:
    """The one sample a stage is labelling, as a one-item dataset for :class:`LabelMapDataset`."""

    image: Any = None
    key: str = ""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[Any, None]:
        return self.image, None


def _slot_key(slot: _Slot, index: int) -> str:
    return slot.key


def _sample_key(sample: Mapping[str, Any]) -> str:
    return str(sample["__key__"])


class LabelMapStage:
    """Add the crop's label to WebDataset samples: ``pipeline.map(LabelMapStage(maps, transform=...))``.

    The sample's first image field (:data:`IMAGE_FIELDS`; decoded with ``.decode("pil")`` or left as
    bytes) goes through ``transform`` (box-returning transforms track the crop, as in
    :class:`~relabel_maps.torch.LabelMapDataset`); the sample gains ``"image"`` (the transformed image)
    and ``"label"`` (``mode="pool"``: the ``(C,)`` soft label; ``mode="map"``: a
    :class:`~relabel_maps.torch.SparseLabel` for :func:`~relabel_maps.torch.collate_label_maps`).
    Then ``.to_tuple("image", "label")``.

    Args:
        maps: a label-map path (opened lazily in each worker) or an opened mapping.
        transform: a ``torchvision.transforms.v2`` transform (``None``: the whole image).
        key: ``key(sample) -> str``; default the sample's ``__key__``.
        mode: ``"pool"`` or ``"map"``. ``options``: the other :class:`LabelMapDataset` options
            (``size``, ``fill``, ``temperature``, ``frame``, ``class_map``).

    A sample whose key has no map raises :class:`~relabel_maps.errors.MissingKeyError`; drop such
    samples first with ``pipeline.select(stage.has_label)``.
    """

    def __init__(
        self,
        maps: str | os.PathLike[str] | Mapping[str, LabelMap],
        *,
        transform: Callable[..., Any] | None = None,
        key: Callable[[Mapping[str, Any]], str] | None = None,
        mode: str = "pool",
        **options: Any,
    ) -> None:
        if mode not in ("pool", "map"):
            raise InvalidArgumentError(f"a pipeline stage's mode is 'pool' or 'map', got {mode!r}")
        self.key = key or _sample_key
        self.labels = LabelMapDataset(_Slot(), maps, key_fn=_slot_key, transform=transform, mode=mode, **options)

    def has_label(self, sample: Mapping[str, Any]) -> bool:
        """Whether the maps hold the sample's key (for ``pipeline.select``)."""
        return self.key(sample) in self.labels.maps

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        field = next((f for f in IMAGE_FIELDS if f in sample), None)
        if field is None:
            raise InvalidArgumentError(f"sample {sample.get('__key__')!r} has no image field ({', '.join(sample)})")
        slot = self.labels.dataset
        slot.image, slot.key = _pil(sample[field]), self.key(sample)
        try:
            image, label = self.labels[0]
        finally:
            slot.image = None
        return {**sample, "image": image, "label": label}


class ShardImages(Dataset):
    """``(image, target)`` view of a ``wids.ShardListDataset`` (indexed tar shards) for
    :class:`LabelMapDataset` with ``key_fn=dataset_key``; ``key(index)`` is the sample's ``__key__``,
    read from the shard's index without decoding the image.

    ``target``: the field holding the target (``".cls"``), or ``None``.
    """

    def __init__(self, dataset: Any, *, target: str | None = ".cls") -> None:
        self.dataset, self.target = dataset, target
        self._last: tuple[int, str] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        sample = self.dataset[index]
        self._last = (index, str(sample["__key__"]))
        field = next(("." + f for f in IMAGE_FIELDS if "." + f in sample), None)
        if field is None:
            raise InvalidArgumentError(f"sample {sample['__key__']!r} has no image member ({', '.join(sample)})")
        target = None if self.target is None else _target(sample.get(self.target))
        return _pil(sample[field]), target

    def key(self, index: int) -> str:
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        shard, inner, _ = self.dataset.get_shard(index)
        first = shard.samples[inner][0]
        reader = shard.reader
        name = reader.by_index[first][0] if hasattr(reader, "by_index") else reader.get_file(first)[0]
        split = tar_key(name)
        if split is None:
            raise MissingKeyError(f"member {name!r} of sample {index} has no extension")
        return split[0]


def _target(value: Any) -> Any:
    if isinstance(value, io.IOBase):
        value.seek(0)
        value = value.read()
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8").strip()
        return int(text) if text.lstrip("-").isdigit() else text
    return value


class HFImages(Dataset):
    """``(image, target)`` view of a Hugging Face ``datasets.Dataset`` for :class:`LabelMapDataset`
    with ``key_fn=dataset_key``.

    Keys: the ``key_column`` (a column, or ``column.field`` such as ``image.path``), or ``keys`` given
    in row order, e.g. :func:`parquet_keys` of the Parquet files the dataset was loaded from (the
    annotator's default key for Parquet).
    """

    def __init__(
        self,
        dataset: Any,
        *,
        image_column: str = "image",
        target_column: str | None = None,
        key_column: str | None = None,
        keys: Sequence[str] | None = None,
    ) -> None:
        if (key_column is None) == (keys is None):
            raise InvalidArgumentError("HFImages needs exactly one of key_column and keys")
        if keys is not None and len(keys) != len(dataset):
            raise InvalidArgumentError(f"{len(keys)} keys for a dataset of {len(dataset)} rows")
        self.dataset, self.image_column, self.target_column = dataset, image_column, target_column
        self.key_column, self.keys = key_column, keys
        self._column: Any = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        row = self.dataset[index]
        target = None if self.target_column is None else row[self.target_column]
        return _pil(row[self.image_column]), target

    def key(self, index: int) -> str:
        if self.keys is not None:
            return str(self.keys[index])
        assert self.key_column is not None
        column, _, field = self.key_column.partition(".")
        if self._column is None:  # only the key column, never decoded (an Image struct's path: decode=False)
            only = self.dataset.select_columns([column])
            feature = only.features[column]
            if getattr(feature, "decode", False):
                only = only.cast_column(column, type(feature)(decode=False))
            self._column = only
        value = self._column[index][column]
        if field:
            value = value[field] if isinstance(value, Mapping) else getattr(value, field, None)
        if value is None:
            raise MissingKeyError(f"row {index} has no {self.key_column!r}")
        return str(value)


def parquet_keys(files: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The annotator's default keys (``{file stem}/{row}``) of every row of ``files`` in order: the
    keys of a ``datasets.Dataset`` loaded from those Parquet files (local paths or ``hf://`` URLs)."""
    pq = require("pyarrow.parquet", "sources")
    keys: list[str] = []
    for f in files:
        name = os.fspath(f)
        if is_hub_url(name):
            hf = require("huggingface_hub", "sources")
            with hf.HfFileSystem().open(name, "rb") as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
        else:
            rows = pq.ParquetFile(name).metadata.num_rows
        keys += [parquet_key(name, r) for r in range(rows)]
    return keys
