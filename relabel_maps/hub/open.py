"""Open ``hf://owner/repo[@revision][/path]`` as label maps, fetching shards as they are first read.

The index JSON is downloaded first (into huggingface_hub's cache), then each shard when it is first
read, so a dataset opens with one small download and a job that reads a few shards fetches only
those. Shards are fetched from the commit the index came from, so a push landing while a dataset is
open never mixes two versions. A populated cache works with ``HF_HUB_OFFLINE=1``. Transient failures
are retried (:mod:`.retry`); every Hub failure is raised as a typed :class:`~relabel_maps.errors.HubError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import FormatError, HubNetworkError, InvalidArgumentError, require
from ..layout import INDEX_SUFFIX, read_index_json
from ..reader import LabelMaps, Reader
from ..shards import from_index
from .paths import REPO_TYPE, HubPath, as_hub_path, is_commit, join_in_repo
from .retry import RetryPolicy, hub_call

__all__ = ["open_hub", "HubFile"]


class HubFile(os.PathLike[str]):
    """A file of a Hub repo whose local path is resolved (downloaded into the HF cache) on first use.

    Handed to the shard reader as a shard's source: the reader calls ``os.fspath`` only when it
    opens the shard, so shards are fetched as they are first read. Picklable (DataLoader workers).
    """

    def __init__(
        self,
        repo_id: str,
        filename: str,
        revision: str | None,
        options: Mapping[str, Any],
        retry: RetryPolicy | None = None,
    ) -> None:
        self.repo_id, self.filename, self.revision = repo_id, filename, revision
        self.options = dict(options)
        self.retry = retry
        self._local: str | None = None

    def __fspath__(self) -> str:
        if self._local is None:
            self._local = _download(self.repo_id, self.filename, self.revision, self.options, self.retry)
        return self._local

    def __repr__(self) -> str:
        return f"HubFile({self.repo_id!r}, {self.filename!r}, revision={self.revision!r})"


def _download(
    repo_id: str, filename: str, revision: str | None, options: Mapping[str, Any], retry: RetryPolicy | None
) -> str:
    """The local path of ``filename`` (downloaded into the HF cache when missing), retried on transient failures."""
    hf = require("huggingface_hub", "hub")
    target = str(HubPath(repo_id, revision, filename))
    return str(hub_call(target, lambda: hf.hf_hub_download(repo_id, filename, revision=revision, **options), retry))


def _list_repo_files(
    hf: Any, loc: HubPath, revision: str | None, options: Mapping[str, Any], snapshot: str, retry: RetryPolicy | None
) -> list[str]:
    """The repo's files: from the Hub when it answers, else what the cached snapshot holds."""
    if not hf.constants.is_offline_mode():
        api = hf.HfApi(token=options.get("token"))
        try:
            return list(
                hub_call(
                    str(HubPath(loc.repo_id, revision)),
                    lambda: api.list_repo_files(loc.repo_id, repo_type=REPO_TYPE, revision=revision),
                    retry,
                )
            )
        except HubNetworkError:
            pass
    out = []
    for dirpath, _dirs, names in os.walk(snapshot):
        for name in names:
            out.append(os.path.relpath(os.path.join(dirpath, name), snapshot).replace(os.sep, "/"))
    return sorted(out)


def _index_names(loc: HubPath, local_folder: str) -> list[str]:
    """The index JSON to open: the one ``loc`` names, else those in the downloaded folder (at most one)."""
    if loc.path.endswith(".json"):
        return [os.path.basename(loc.path)]
    found = os.listdir(local_folder) if os.path.isdir(local_folder) else []
    names = sorted(f for f in found if f.endswith(INDEX_SUFFIX))
    if len(names) > 1:
        raise InvalidArgumentError(f"{loc} holds several index files ({', '.join(names)}); open one of them by name")
    return names


def open_hub(
    url: str | HubPath,
    *,
    verify: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
    **kwargs: Any,
) -> LabelMaps:
    """Open ``hf://owner/repo[@revision][/path]`` as a :class:`LabelMaps` mapping.

    ``path`` may name a folder in the repo (default: the root), an index JSON or one ``.rlm`` file.
    The index is downloaded first; shards are fetched into the HF cache when first read, from the
    index's commit. ``retry`` (default: :meth:`RetryPolicy.from_env`) bounds the retries of transient
    failures, for the opening and for each shard fetched later.
    """
    loc = as_hub_path(url)
    if kwargs:
        raise InvalidArgumentError(f"unexpected options for hf:// paths: {', '.join(sorted(kwargs))}")
    hf = require("huggingface_hub", "hub")
    options = {"repo_type": REPO_TYPE, "cache_dir": None if cache_dir is None else os.fspath(cache_dir), "token": token}

    if loc.path.endswith(".rlm"):
        return Reader(_download(loc.repo_id, loc.path, loc.revision, options, retry), verify=verify)

    pattern = loc.path if loc.path.endswith(".json") else join_in_repo(loc.path, f"*{INDEX_SUFFIX}")
    snapshot = str(
        hub_call(
            str(loc),
            lambda: hf.snapshot_download(loc.repo_id, revision=loc.revision, allow_patterns=[pattern], **options),
            retry,
        )
    )
    commit = os.path.basename(os.path.normpath(snapshot))
    revision = commit if is_commit(commit) else loc.revision  # pin shards to the index's commit
    folder_in_repo = os.path.dirname(loc.path) if loc.path.endswith(".json") else loc.path
    local_folder = os.path.join(snapshot, *folder_in_repo.split("/")) if folder_in_repo else snapshot
    index_names = _index_names(loc, local_folder)

    if not index_names:  # a single-file dataset without an index
        files = [
            f
            for f in _list_repo_files(hf, loc, revision, options, snapshot, retry)
            if os.path.dirname(f) == folder_in_repo and f.endswith(".rlm")
        ]
        if len(files) != 1:
            raise FormatError(f"{loc} has no index JSON and {len(files)} .rlm files; nothing to open")
        return Reader(_download(loc.repo_id, files[0], revision, options, retry), verify=verify)

    with open(os.path.join(local_folder, index_names[0]), "rb") as fh:
        index = read_index_json(fh.read())
    return from_index(
        index, lambda f: HubFile(loc.repo_id, join_in_repo(folder_in_repo, f), revision, options, retry), verify=verify
    )
