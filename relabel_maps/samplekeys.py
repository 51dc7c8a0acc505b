"""How an image is named in a label-map dataset, whatever layout it was read from.

A label map is found by its key, so the same image must get the same key in every layout a
training job may read it from:

* **folder tree** (``ImageFolder``): the path relative to the root with ``/`` separators,
  ``n01440764/n01440764_10026.JPEG``;
* **WebDataset tar shard**: the sample's ``__key__``, the member name up to the first ``.`` of its
  file name (WebDataset's own rule, :func:`tar_key`): ``n01440764/n01440764_10026.jpg`` gives
  ``n01440764/n01440764_10026``. Shards written from a folder tree (member name = relative path)
  therefore key each image by its folder key without the extension (:func:`strip_extension`);
* **Parquet file / Hugging Face dataset**: the ``key_column`` when one is named, else
  ``{file stem}/{row}`` (:func:`parquet_key`): the file's name without ``.parquet`` and the row's
  0-based index in that file, e.g. ``train-00000-of-00257/1234``. Stable across runs and machines, and
  the same for a local copy of a Hub dataset as for ``hf://`` (only the file name counts).

This module is the one place these rules live; the annotator's sources and the training adapters
(:mod:`relabel_maps.torch`) both call it.
"""

from __future__ import annotations

import re

__all__ = ["TAR_KEY_RE", "parquet_key", "strip_extension", "tar_key"]

#: WebDataset's ``base_plus_ext``: the key is everything up to the first ``.`` of the file name
TAR_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def tar_key(member: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member name as WebDataset groups it (``None``: no extension,
    the member belongs to no sample). The extension is lower-cased, as WebDataset's samples name it."""
    match = TAR_KEY_RE.match(member)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def strip_extension(key: str) -> str:
    """A folder key as the key of the same image in WebDataset shards written from that folder
    (``"n01/x.JPEG"`` -> ``"n01/x"``); a key without an extension is returned unchanged."""
    split = tar_key(key)
    return key if split is None else split[0]


def parquet_key(file_name: str, row: int) -> str:
    """The default key of row ``row`` (0-based, in the file) of the Parquet file ``file_name``
    (a name or path; only the file name without ``.parquet`` counts)."""
    stem = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    if stem.lower().endswith(".parquet"):
        stem = stem[: -len(".parquet")]
    return f"{stem}/{int(row)}"
