"""``relabel_maps.open``: one entry point for files, shard folders, index files and ``hf://`` URLs."""

from __future__ import annotations

import os
from typing import Any

from .errors import InvalidArgumentError
from .layout import is_hub_url
from .reader import LabelMaps, Reader, Source
from .shards import open_folder, open_index

__all__ = ["open"]

#: the URL scheme handed to the Hub face (:mod:`relabel_maps.hub`), imported only when such a URL is opened


def open(source: Source, *, verify: bool = False, **kwargs: Any) -> LabelMaps:  # noqa: A001
    """Open label maps as a read-only ``Mapping[str, LabelMap]`` (also a context manager).

    ``source`` is a ``.rlm`` file path, a folder of shards, a ``NAME.index.json``, an
    ``hf://owner/repo[@rev][/subdir]`` URL, or a seekable binary file object holding one file.
    ``verify=True`` checks each record's CRC32 as it is read. Extra keyword arguments go to the
    ``hf://`` opener. A folder opens through its index; without one, only loose files or one
    complete set of shards open (a dataset being published does not). A dataset opened from local
    files keeps reading the version it opened when it is overwritten, or raises
    :class:`~relabel_maps.errors.DatasetReplacedError` (spec/FORMAT.md §12.1).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if is_hub_url(path):
            from .hub import open_hub  # a face: imported only for hf:// URLs (needs huggingface_hub)

            return open_hub(path, verify=verify, **kwargs)
        if os.path.isdir(path):
            return open_folder(path, verify=verify)
        if str(path).endswith(".json"):  # NAME.index.json, or an index under another name
            return open_index(path, verify=verify)
    if kwargs:
        raise InvalidArgumentError(f"unexpected options for a local source: {', '.join(sorted(kwargs))}")
    return Reader(source, verify=verify)
