"""Image sources of the annotator.

* :mod:`.folder`: a folder tree, a file list or one image (keys: relative paths), sorted; split by
  ``--shard`` into contiguous runs of keys.
* Stream sources (:mod:`.base`): WebDataset tar shards (:mod:`.tar`) and Parquet files / Hugging Face
  datasets (:mod:`.parquet`), local or ``hf://`` (:mod:`.files`), split by whole shards or row groups.

:func:`open_stream_source` says which a source is and opens a stream source; the key rules live in
:mod:`relabel_maps.samplekeys`.
"""

from __future__ import annotations

import os

from ...errors import InvalidArgumentError
from .base import IMAGE_SUFFIXES, FileRef, PartStream, RawSample, StreamSource, Unit
from .files import is_stream_source, resolve_files, source_exists
from .folder import (
    IMAGE_EXTENSIONS,
    SAMPLES,
    ImageItem,
    list_images,
    matches,
    parse_shard,
    resolve_source,
    sample_images_dir,
    shard_items,
)
from .parquet import ParquetSource
from .tar import TarSource

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_SUFFIXES",
    "SAMPLES",
    "FileRef",
    "ImageItem",
    "ParquetSource",
    "PartStream",
    "RawSample",
    "StreamSource",
    "TarSource",
    "Unit",
    "is_stream_source",
    "list_images",
    "matches",
    "open_stream_source",
    "parse_shard",
    "resolve_source",
    "sample_images_dir",
    "shard_items",
    "source_exists",
]


def open_stream_source(
    source: str | os.PathLike[str],
    *,
    split: str | None = None,
    image_column: str | None = None,
    key_column: str | None = None,
) -> StreamSource:
    """Open tar shards or Parquet files: a ``.tar``/``.parquet`` file, a folder of them, a brace pattern
    (``shards/train-{0000..0099}.tar``), a glob, or ``hf://datasets/owner/name[@rev][/path]``;
    ``split`` picks a split's files as ``datasets`` does. ``image_column`` and ``key_column``
    apply to Parquet.

    Raises:
        InvalidArgumentError: nothing to read, a missing file or column, a mix of kinds.
        DependencyError: the ``sources`` extra is missing.
        HubError: the Hub refused or failed.
    """
    kind, files = resolve_files(source, split)
    if kind == "tar":
        if image_column is not None or key_column is not None:
            raise InvalidArgumentError("image and key columns apply to Parquet sources; tar samples use __key__")
        return TarSource(files)
    return ParquetSource(files, image_column, key_column)
