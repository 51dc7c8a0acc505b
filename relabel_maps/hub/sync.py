"""Push a local dataset to a Hub dataset repo and pull one back, uploading only what changed.

:func:`push` uploads the shards, the index, a README dataset card and a Parquet preview (for the
Hub's dataset viewer), skipping files whose content the remote already has (compared by SHA-256
for LFS files and by git blob id otherwise), in one commit: a reader sees the old dataset or the new
one, never a mix. Transient failures are retried (:mod:`.retry`); a push that was interrupted (killed,
or out of retries) is completed by running it again, which uploads only what the Hub still lacks.
huggingface_hub is imported when a function needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import InvalidArgumentError, require
from ..export import parquet_bytes
from ..layout import local_dataset_files
from ..reader import LabelMaps, Reader
from ..shards import open_index
from .card import dataset_card
from .paths import CARD_NAME, PREVIEW_NAME, REPO_TYPE, HubPath, as_hub_path, is_commit, join_in_repo, validate_repo_id
from .retry import RetryPolicy, hub_call

__all__ = ["PushResult", "PlannedUpload", "plan_push", "push", "pull"]

#: remote files under the dataset's folder that ``delete_stale`` removes when this dataset lacks them
STALE_SUFFIXES = (".rlm", ".index.json")
_CHUNK = 1 << 20


@dataclasses.dataclass
class PushResult:
    """What :func:`push` did: files uploaded, files already up to date, files deleted."""

    repo_id: str
    uploaded: list[str]
    unchanged: list[str]
    deleted: list[str]
    commit_url: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.uploaded or self.deleted)


@dataclasses.dataclass
class PlannedUpload:
    """One file :func:`push` would upload: from ``local_path`` or from ``data`` in memory."""

    path_in_repo: str
    local_path: str | None
    data: bytes | None
    sha256: str
    git_sha1: str
    size: int

    @classmethod
    def from_file(cls, path_in_repo: str, local_path: str) -> PlannedUpload:
        size = os.path.getsize(local_path)
        sha, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
        with open(local_path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                sha.update(chunk)
                git.update(chunk)
        return cls(path_in_repo, local_path, None, sha.hexdigest(), git.hexdigest(), size)

    @classmethod
    def from_bytes(cls, path_in_repo: str, data: bytes) -> PlannedUpload:
        git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return cls(path_in_repo, None, data, hashlib.sha256(data).hexdigest(), git, len(data))

    def source(self) -> bytes | str:
        """What huggingface_hub uploads: the bytes in memory, else the local path."""
        if self.data is not None:
            return self.data
        assert self.local_path is not None
        return self.local_path


def _open_local(files: Sequence[tuple[str, str]]) -> LabelMaps:
    """Open the dataset made of ``files`` (as :func:`local_dataset_files` lists them)."""
    name, local = files[0]
    return open_index(local) if name.endswith(".json") else Reader(local)


def plan_push(
    path: str | os.PathLike[str],
    repo_id: str,
    *,
    path_in_repo: str = "",
    license: str = "other",
    preview: bool = True,
    tags: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
) -> list[PlannedUpload]:
    """Everything :func:`push` would upload (dataset files, README card, Parquet preview), hashed.

    ``progress(n)`` is called as records are read for the preview.
    """
    validate_repo_id(repo_id)
    path_in_repo = path_in_repo.strip("/")
    files = local_dataset_files(path)
    if len(files) > 1 and not files[0][0].endswith(".json"):
        raise InvalidArgumentError(
            f"{os.fspath(path)} has {len(files)} .rlm files but no index JSON; "
            "write one first (relabel-maps merge FOLDER --out NEW_FOLDER)"
        )
    with _open_local(files) as maps:
        metadata = dict(maps.metadata)
        num_records = len(maps)
        preview_data = parquet_bytes(maps, progress=progress) if preview else None
    uploads = [PlannedUpload.from_file(join_in_repo(path_in_repo, name), local) for name, local in files]
    card = dataset_card(
        metadata,
        repo_id=repo_id,
        num_records=num_records,
        files=[(name, up.size) for (name, _), up in zip(files, uploads, strict=True)],
        path_in_repo=path_in_repo,
        license=license,
        preview=PREVIEW_NAME if preview else None,
        tags=tags,
    )
    uploads.append(PlannedUpload.from_bytes(CARD_NAME, card.encode("utf-8")))
    if preview_data is not None:
        uploads.append(PlannedUpload.from_bytes(join_in_repo(path_in_repo, PREVIEW_NAME), preview_data))
    return uploads


def _remote_state(api: Any, repo_id: str, revision: str | None) -> tuple[str | None, dict[str, Any]]:
    """The commit ``revision`` points to and that commit's files by path (``(None, {})`` for a missing branch)."""
    hf_errors = require("huggingface_hub.errors", "hub")
    try:
        commit = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision).sha
        entries = api.list_repo_tree(repo_id, recursive=True, repo_type=REPO_TYPE, revision=commit or revision)
        return commit, {e.path: e for e in entries if hasattr(e, "blob_id")}
    except (hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError):
        return None, {}


def _is_uploaded(remote: Any, up: PlannedUpload) -> bool:
    """Whether the remote file ``remote`` already holds ``up``'s content."""
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        sha = getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, Mapping) else None)
        return bool(sha == up.sha256)
    return bool(getattr(remote, "blob_id", None) == up.git_sha1)


def _missing(uploads: Iterable[PlannedUpload], remote: Mapping[str, Any]) -> list[PlannedUpload]:
    """The planned files whose content ``remote`` (path -> tree entry) does not hold."""
    return [up for up in uploads if not (up.path_in_repo in remote and _is_uploaded(remote[up.path_in_repo], up))]


def _stale_files(remote: Iterable[str], wanted: set[str], folder: str) -> list[str]:
    """Label-map files directly in ``folder`` of the repo that the pushed dataset does not have."""
    stale = []
    for name in sorted(remote):
        parent, _, base = name.rpartition("/")
        if parent == folder and name not in wanted and base.endswith(STALE_SUFFIXES):
            stale.append(name)
    return stale


def push(
    path: str | os.PathLike[str],
    repo_id: str,
    *,
    api: Any = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    path_in_repo: str = "",
    license: str = "other",
    preview: bool = True,
    tags: Iterable[str] = (),
    delete_stale: bool = True,
    commit_message: str | None = None,
    progress: Callable[[int], None] | None = None,
    retry: RetryPolicy | None = None,
) -> PushResult:
    """Upload the dataset at ``path`` to the Hub dataset repo ``repo_id`` (created if needed).

    ``revision`` names a branch, created from main when missing. Only files whose content differs
    from the remote are uploaded; with ``delete_stale``, label-map files (``.rlm``, ``.index.json``)
    under ``path_in_repo`` that are not part of this dataset (say, shards of an earlier, differently
    sharded push) are deleted in the same commit. The token comes from ``token``, else
    huggingface_hub's usual login/``HF_TOKEN``; it is never printed. ``progress`` is as for
    :func:`plan_push`. ``retry`` (default: :meth:`RetryPolicy.from_env`) bounds the retries of transient
    failures; each retry lists the remote again, so a commit whose answer was lost is not made twice.
    Failures are raised as :class:`~relabel_maps.errors.HubError` subclasses.
    """
    validate_repo_id(repo_id)
    hf = require("huggingface_hub", "hub")
    if api is None:
        api = hf.HfApi(token=token)
    uploads = plan_push(
        path, repo_id, path_in_repo=path_in_repo, license=license, preview=preview, tags=tags, progress=progress
    )
    folder = path_in_repo.strip("/")
    wanted = {up.path_in_repo for up in uploads}
    first_seen: list[dict[str, Any]] = []  # the remote as the first attempt found it: what this push changes

    def attempt() -> PushResult:
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        if revision is not None and revision != "main" and not is_commit(revision):
            api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
        parent, remote = _remote_state(api, repo_id, revision)
        if not first_seen:
            first_seen.append(remote)
        missing = _missing(uploads, remote)
        stale = _stale_files(remote, wanted, folder) if delete_stale else []
        uploaded = [up.path_in_repo for up in _missing(uploads, first_seen[0])]
        unchanged = [up.path_in_repo for up in uploads if up.path_in_repo not in uploaded]
        deleted = _stale_files(first_seen[0], wanted, folder) if delete_stale else []
        result = PushResult(repo_id, uploaded, unchanged, deleted)
        if not missing and not stale:
            return result
        operations: list[Any] = [
            hf.CommitOperationAdd(path_in_repo=up.path_in_repo, path_or_fileobj=up.source()) for up in missing
        ]
        operations += [hf.CommitOperationDelete(path_in_repo=name) for name in stale]
        message = commit_message or f"Upload label maps ({len(missing)} file(s) changed, {len(stale)} deleted)"
        info = api.create_commit(
            repo_id, operations, commit_message=message, repo_type=REPO_TYPE, revision=revision, parent_commit=parent
        )
        return dataclasses.replace(result, commit_url=getattr(info, "commit_url", None))

    return hub_call(str(HubPath(repo_id, revision)), attempt, retry)


def pull(
    repo: str | HubPath,
    *,
    revision: str | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
) -> str:
    """Download a dataset (all files under its path) through huggingface_hub; return the local folder
    that :func:`relabel_maps.open` accepts (inside ``local_dir`` when given, else in the HF cache).

    The files come from one commit (the one ``revision`` points to when the download starts). Transient
    failures are retried as ``retry`` says; a re-run after an interruption fetches only missing files.
    """
    loc = as_hub_path(repo, revision)
    hf = require("huggingface_hub", "hub")
    patterns = [join_in_repo(loc.path, "*"), CARD_NAME] if loc.path else None
    root = hub_call(
        str(loc),
        lambda: hf.snapshot_download(
            loc.repo_id,
            repo_type=REPO_TYPE,
            revision=loc.revision,
            local_dir=None if local_dir is None else os.fspath(local_dir),
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            token=token,
            allow_patterns=patterns,
        ),
        retry,
    )
    return os.path.join(root, *loc.path.split("/")) if loc.path else str(root)
