"""Label-map datasets on the Hugging Face Hub: ``hf://`` paths, push and pull.

``relabel_maps.open("hf://owner/repo[@revision][/path]")`` resolves through huggingface_hub's cache:
the index JSON is fetched first, then every shard on first access, so a dataset opens with one small
download and a training job that reads a few shards fetches only those. A populated cache works with
``HF_HUB_OFFLINE=1``. huggingface_hub is imported only inside the functions that need it.

Datasets live in Hub *dataset* repositories. :func:`push` uploads the shards, the index, a README
dataset card and a Parquet preview (for the Hub's dataset viewer), and uploads only files whose
content differs from the remote (compared by SHA-256 for LFS files and git blob id otherwise).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import FormatError, InvalidArgumentError, require
from .shards import folder_contents, from_index, read_index_json

__all__ = [
    "HF_SCHEME",
    "HubPath",
    "PushResult",
    "PlannedUpload",
    "validate_repo_id",
    "parse_hub_url",
    "open_hub",
    "pull",
    "push",
    "plan_push",
    "dataset_card",
    "local_dataset_files",
    "PREVIEW_NAME",
]

HF_SCHEME = "hf://"
REPO_TYPE = "dataset"
PREVIEW_NAME = "preview.parquet"
CARD_NAME = "README.md"
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REPO_ID_RE = re.compile(rf"^{_NAME}/{_NAME}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)


# ----------------------------------------------------------------------------------------- naming
def validate_repo_id(repo_id: str) -> str:
    """Check that ``repo_id`` is ``owner/name`` as the Hub accepts it; return it unchanged."""
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidArgumentError("a Hub repo id is 'owner/name', got an empty value")
    problem = None
    if repo_id.count("/") != 1:
        problem = "it must be exactly 'owner/name'"
    elif not _REPO_ID_RE.match(repo_id):
        problem = "owner and name use letters, digits, '-', '_' and '.', and start and end with a letter or digit"
    elif "--" in repo_id or ".." in repo_id:
        problem = "'--' and '..' are not allowed"
    elif repo_id.endswith(".git"):
        problem = "it must not end with '.git'"
    elif max(len(p) for p in repo_id.split("/")) > 96:
        problem = "owner and name have at most 96 characters each"
    if problem:
        raise InvalidArgumentError(f"invalid Hub repo id {repo_id!r}: {problem}")
    return repo_id


@dataclasses.dataclass(frozen=True)
class HubPath:
    """A parsed ``hf://owner/repo[@revision][/path]``."""

    repo_id: str
    revision: str | None = None
    path: str = ""

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        sub = f"/{self.path}" if self.path else ""
        return f"{HF_SCHEME}{self.repo_id}{rev}{sub}"


def parse_hub_url(url: str) -> HubPath:
    """Parse ``hf://owner/repo[@revision][/path]`` (also ``hf://datasets/owner/repo...``).

    A revision with a slash (``refs/pr/1``) is written URL-encoded: ``@refs%2Fpr%2F1``.
    """
    from urllib.parse import unquote

    if not isinstance(url, str) or not url.startswith(HF_SCHEME):
        raise InvalidArgumentError(f"a Hub path starts with {HF_SCHEME!r}: {url!r}")
    rest = url[len(HF_SCHEME) :].strip("/")
    if rest.startswith("datasets/"):
        rest = rest[len("datasets/") :]
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InvalidArgumentError(f"invalid Hub path {url!r}: expected hf://owner/repo[@revision][/path]")
    owner, name = parts[0], parts[1]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)
        if not revision:
            raise InvalidArgumentError(f"invalid Hub path {url!r}: empty revision after '@'")
    path = "/".join(p for p in parts[2:] if p)
    if any(p in (".", "..") for p in path.split("/")):
        raise InvalidArgumentError(f"invalid Hub path {url!r}: '.' and '..' are not allowed")
    return HubPath(validate_repo_id(f"{owner}/{name}"), revision, path)


def _as_hub_path(repo: str | HubPath, revision: str | None = None) -> HubPath:
    if isinstance(repo, HubPath):
        loc = repo
    elif isinstance(repo, str) and repo.startswith(HF_SCHEME):
        loc = parse_hub_url(repo)
    else:
        loc = HubPath(validate_repo_id(repo))
    if revision is not None:
        loc = dataclasses.replace(loc, revision=revision)
    return loc


def _join(prefix: str, name: str) -> str:
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


# ------------------------------------------------------------------------------------ local files
def _index_shard_names(index_path: str) -> list[str]:
    """Shard files listed by a shard index JSON (relative to the index's folder)."""
    with open(index_path, "rb") as fh:
        return [e["file"] for e in read_index_json(fh.read())["shards"]]


def local_dataset_files(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The files that make up the dataset at ``path``: ``[(name relative to the dataset, local path)]``.

    ``path`` is one ``.rlm`` file, an index JSON (then the index comes first, followed by its
    shards in order), or a folder: its single index JSON, else every ``.rlm`` file in it.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        index, files = folder_contents(path)
        if index is not None:
            return local_dataset_files(index)
        return [(f.name, str(f)) for f in files]
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.endswith(".json"):
        folder = os.path.dirname(path)
        out = [(os.path.basename(path), path)]
        for name in _index_shard_names(path):
            local = os.path.join(folder, *name.split("/"))
            if not os.path.isfile(local):
                raise FormatError(f"shard {name} listed in {os.path.basename(path)} is missing")
            out.append((name, local))
        return out
    return [(os.path.basename(path), path)]


def _file_digests(path: str | None = None, data: bytes | None = None) -> tuple[str, str, int]:
    """``(sha256 hex, git blob sha1 hex, size)`` of a file or of bytes."""
    if data is not None:
        size = len(data)
        sha = hashlib.sha256(data).hexdigest()
        git = hashlib.sha1(b"blob %d\0" % size + data).hexdigest()
        return sha, git, size
    assert path is not None
    size = os.path.getsize(path)
    sha, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
            git.update(chunk)
    return sha.hexdigest(), git.hexdigest(), size


# ------------------------------------------------------------------------------------ dataset card
def _size_category(n: int) -> str:
    for bound, label in _SIZE_CATEGORIES:
        if n < bound:
            return label
    return "n>1B"


def _yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def dataset_card(
    metadata: Mapping[str, Any],
    *,
    repo_id: str,
    num_records: int,
    files: Sequence[tuple[str, int]],
    path_in_repo: str = "",
    license: str = "other",
    preview: str | None = PREVIEW_NAME,
    tags: Iterable[str] = (),
) -> str:
    """The README dataset card: YAML front matter for the Hub, then a description of the data.

    Deterministic: the same dataset gives the same text (so re-pushing uploads nothing).
    """
    from .format import FORMAT_VERSION, version_string

    unique_tags = dict.fromkeys(["relabel-maps", "label-maps", "soft-labels", "knowledge-distillation", *tags])
    lines = ["---", f"license: {_yaml_str(license)}", "task_categories:", "- image-classification"]
    lines += ["size_categories:", f"- {_yaml_str(_size_category(num_records))}", "tags:"]
    lines += [f"- {_yaml_str(t)}" for t in unique_tags]
    if preview:
        lines += [
            "configs:",
            "- config_name: default",
            "  data_files:",
            "  - split: train",
            f"    path: {_yaml_str(_join(path_in_repo, preview))}",
        ]
    lines += ["---", ""]

    teacher = metadata.get("teacher") or {}
    if not isinstance(teacher, Mapping):
        teacher = {"name": str(teacher)}
    url = f"{HF_SCHEME}{repo_id}" + (f"/{path_in_repo.strip('/')}" if path_in_repo.strip("/") else "")
    total = sum(size for _, size in files)
    shards = [name for name, _ in files if name.endswith(".rlm")]
    version = metadata.get("format_version") or version_string(FORMAT_VERSION)
    title = teacher.get("name") or "label maps"
    lines += [
        f"# {repo_id.split('/')[1]}",
        "",
        f"Top-k label maps (ReLabel-style localized soft labels) from **{title}**, stored in the "
        f"[relabel-maps](https://github.com/relabel-maps/relabel-maps) format {version}: every record holds the "
        "top-k classes and scores at each location of the teacher's output grid, so the soft label of any "
        "crop (box + flip) can be pooled at training time.",
        "",
        "| | |",
        "|---|---|",
        f"| records (images) | {num_records:,} |",
        f"| shards | {len(shards)} |",
        f"| total size | {_human_bytes(total)} ({_human_bytes(total / max(num_records, 1))} per image) |",
        f"| classes | {metadata.get('num_classes', '?')}"
        + (f" (`{metadata['class_set']}`)" if metadata.get("class_set") else "")
        + " |",
        f"| top-k | {metadata.get('k', '?')} |",
        f"| score kind | {metadata.get('score_kind', '?')} |",
        f"| score encoding | `{_compact_json(metadata.get('encoding', '?'))}` |",
        f"| format version | {version} |",
    ]
    if metadata.get("tool"):
        lines.append(f"| written by | `{_compact_json(metadata['tool'])}` |")
    lines += ["", "## Teacher", ""]
    known = {key: value for key, value in teacher.items() if value is not None}
    if known:
        lines += ["| | |", "|---|---|"]
        for key in sorted(known):
            lines.append(f"| {key} | `{_compact_json(known[key])}` |")
    else:
        lines.append("Not recorded.")
    extra = {k: v for k, v in metadata.items() if isinstance(k, str) and "." in k and not isinstance(v, (bytes, bytearray))}
    if extra:
        lines += ["", "## Provenance and settings", "", "```json", json.dumps(extra, indent=2, sort_keys=True, default=str), "```"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import relabel_maps  # pip install 'relabel-maps[hub]'",
        "",
        f'maps = relabel_maps.open("{url}")  # fetches the index, then shards on first access',
        "key = next(iter(maps))",
        "soft = maps[key].pool((0.1, 0.2, 0.7, 0.9), flip=True)  # (num_classes,) probabilities of a crop",
        "```",
        "",
        "or from the command line:",
        "",
        "```bash",
        f"relabel-maps pull {repo_id} --local-dir maps/",
        "relabel-maps info maps/",
        "```",
        "",
        "## Files",
        "",
    ]
    lines += [f"- `{_join(path_in_repo, name)}` ({_human_bytes(size)})" for name, size in files]
    if preview:
        lines += [
            f"- `{_join(path_in_repo, preview)}`: one row per image (key, grid size, whole-image top-5 classes "
            "and probabilities, top-1 class share) for the dataset viewer",
        ]
    lines.append("")
    return "\n".join(lines)


def _compact_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# -------------------------------------------------------------------------------------------- push
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

    def source(self) -> Any:
        return self.data if self.data is not None else self.local_path


def _remote_files(api: Any, repo_id: str, revision: str | None) -> dict[str, Any]:
    hf_errors = require("huggingface_hub.errors", "hub")
    try:
        entries = api.list_repo_tree(repo_id, recursive=True, repo_type=REPO_TYPE, revision=revision)
        return {e.path: e for e in entries if hasattr(e, "blob_id")}
    except (hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError):
        return {}


def _same(remote: Any, up: PlannedUpload) -> bool:
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        sha = getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, Mapping) else None)
        return sha == up.sha256
    return getattr(remote, "blob_id", None) == up.git_sha1


def plan_push(
    path: str | os.PathLike,
    repo_id: str,
    *,
    path_in_repo: str = "",
    license: str = "other",
    preview: bool = True,
    tags: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
) -> list[PlannedUpload]:
    """Everything :func:`push` would upload (dataset files, README card, Parquet preview), hashed."""
    from .opener import open as open_maps

    validate_repo_id(repo_id)
    path_in_repo = path_in_repo.strip("/")
    files = local_dataset_files(path)
    if len(files) > 1 and not files[0][0].endswith(".json"):
        raise InvalidArgumentError(
            f"{os.fspath(path)} has {len(files)} .rlm files but no index JSON; "
            "write one first (relabel-maps merge FOLDER --out NEW_FOLDER)"
        )
    with open_maps(os.fspath(path)) as maps:
        metadata = dict(maps.metadata)
        num_records = len(maps)
        preview_data = None
        if preview:
            from .export import parquet_bytes

            preview_data = parquet_bytes(maps, progress=progress)
    uploads = []
    for name, local in files:
        sha, git, size = _file_digests(path=local)
        uploads.append(PlannedUpload(_join(path_in_repo, name), local, None, sha, git, size))
    card = dataset_card(
        metadata,
        repo_id=repo_id,
        num_records=num_records,
        files=[(name, up.size) for (name, _), up in zip(files, uploads)],
        path_in_repo=path_in_repo,
        license=license,
        preview=PREVIEW_NAME if preview else None,
        tags=tags,
    ).encode("utf-8")
    extras = [(CARD_NAME, card)]
    if preview_data is not None:
        extras.append((_join(path_in_repo, PREVIEW_NAME), preview_data))
    for name, data in extras:
        sha, git, size = _file_digests(data=data)
        uploads.append(PlannedUpload(name, None, data, sha, git, size))
    return uploads


def push(
    path: str | os.PathLike,
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
) -> PushResult:
    """Upload the dataset at ``path`` to the Hub dataset repo ``repo_id`` (created if needed).

    ``revision`` names a branch, created from main when missing. Only files whose content differs
    from the remote are uploaded; with ``delete_stale``, label-map
    files (``.rlm``, ``.index.json``) under ``path_in_repo`` that are not part of this dataset (say,
    shards of an earlier, differently sharded push) are deleted in the same commit. The token comes
    from ``token``, else huggingface_hub's usual login/``HF_TOKEN``; it is never printed.
    """
    validate_repo_id(repo_id)
    hf = require("huggingface_hub", "hub")
    if api is None:
        api = hf.HfApi(token=token)
    uploads = plan_push(
        path, repo_id, path_in_repo=path_in_repo, license=license, preview=preview, tags=tags, progress=progress
    )
    api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    if revision is not None and revision != "main" and not _COMMIT_RE.match(revision):
        api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
    remote = _remote_files(api, repo_id, revision)
    operations: list[Any] = []
    uploaded, unchanged = [], []
    for up in uploads:
        if up.path_in_repo in remote and _same(remote[up.path_in_repo], up):
            unchanged.append(up.path_in_repo)
            continue
        operations.append(hf.CommitOperationAdd(path_in_repo=up.path_in_repo, path_or_fileobj=up.source()))
        uploaded.append(up.path_in_repo)
    deleted = []
    if delete_stale:
        wanted = {up.path_in_repo for up in uploads}
        prefix = path_in_repo.strip("/")
        for name in sorted(remote):
            folder, _, base = name.rpartition("/")
            if folder != prefix or name in wanted:
                continue
            if base.endswith(".rlm") or base.endswith(".index.json"):
                operations.append(hf.CommitOperationDelete(path_in_repo=name))
                deleted.append(name)
    if not operations:
        return PushResult(repo_id, [], unchanged, [])
    message = commit_message or f"Upload label maps ({len(uploaded)} file(s) changed, {len(deleted)} deleted)"
    info = api.create_commit(
        repo_id, operations, commit_message=message, repo_type=REPO_TYPE, revision=revision
    )
    return PushResult(repo_id, uploaded, unchanged, deleted, getattr(info, "commit_url", None))


# -------------------------------------------------------------------------------------------- pull
def pull(
    repo: str | HubPath,
    *,
    revision: str | None = None,
    local_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> str:
    """Download a dataset (all files under its path) through huggingface_hub; return the local folder
    that :func:`relabel_maps.open` accepts (inside ``local_dir`` when given, else in the HF cache)."""
    loc = _as_hub_path(repo, revision)
    hf = require("huggingface_hub", "hub")
    patterns = [_join(loc.path, "*"), CARD_NAME] if loc.path else None
    root = hf.snapshot_download(
        loc.repo_id,
        repo_type=REPO_TYPE,
        revision=loc.revision,
        local_dir=None if local_dir is None else os.fspath(local_dir),
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        token=token,
        allow_patterns=patterns,
    )
    return os.path.join(root, *loc.path.split("/")) if loc.path else root


# -------------------------------------------------------------------------------------------- open
def open_hub(
    url: str | HubPath,
    *,
    verify: bool = False,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    **kwargs: Any,
) -> Any:
    """Open ``hf://owner/repo[@revision][/path]`` as a :class:`LabelMaps` mapping.

    ``path`` may name a folder in the repo (default: the root), an index JSON or one ``.rlm`` file.
    The index is downloaded first; shards are fetched into the HF cache when first read.
    """
    from .opener import open as open_maps

    loc = _as_hub_path(url)
    hf = require("huggingface_hub", "hub")
    common = dict(repo_type=REPO_TYPE, cache_dir=None if cache_dir is None else os.fspath(cache_dir), token=token)

    if loc.path.endswith(".rlm"):
        local = hf.hf_hub_download(loc.repo_id, loc.path, revision=loc.revision, **common)
        return open_maps(local, verify=verify, **kwargs)

    if loc.path.endswith(".json"):
        patterns = [loc.path]
    else:
        patterns = [_join(loc.path, "*.index.json")]
    snapshot = hf.snapshot_download(loc.repo_id, revision=loc.revision, allow_patterns=patterns, **common)
    commit = os.path.basename(os.path.normpath(snapshot))
    revision = commit if _COMMIT_RE.match(commit) else loc.revision
    folder_in_repo = os.path.dirname(loc.path) if loc.path.endswith(".json") else loc.path
    local_folder = os.path.join(snapshot, *folder_in_repo.split("/")) if folder_in_repo else snapshot

    if loc.path.endswith(".json"):
        index_names = [os.path.basename(loc.path)]
    else:
        index_names = sorted(
            f for f in (os.listdir(local_folder) if os.path.isdir(local_folder) else []) if f.endswith(".index.json")
        )
    if len(index_names) > 1:
        raise InvalidArgumentError(
            f"{loc} holds several index files ({', '.join(index_names)}); open one of them by name"
        )

    if not index_names:  # a single-file dataset without an index
        files = [
            f
            for f in _list_repo_files(hf, loc.repo_id, revision, common, snapshot)
            if os.path.dirname(f) == folder_in_repo and f.endswith(".rlm")
        ]
        if len(files) != 1:
            raise FormatError(f"{loc} has no index JSON and {len(files)} .rlm files; nothing to open")
        local = hf.hf_hub_download(loc.repo_id, files[0], revision=revision, **common)
        return open_maps(local, verify=verify, **kwargs)

    if kwargs:
        raise InvalidArgumentError(f"unexpected options for hf:// paths: {', '.join(sorted(kwargs))}")
    with open(os.path.join(local_folder, index_names[0]), "rb") as fh:
        index = read_index_json(fh.read())
    return from_index(
        index, lambda f: _HubFile(loc.repo_id, _join(folder_in_repo, f), revision, common), verify=verify
    )


def _list_repo_files(hf: Any, repo_id: str, revision: str | None, common: Mapping[str, Any], snapshot: str) -> list[str]:
    """Repo file list: from the Hub when online, else what the cached snapshot holds."""
    if not hf.constants.is_offline_mode():
        try:
            return list(hf.HfApi(token=common.get("token")).list_repo_files(repo_id, repo_type=REPO_TYPE, revision=revision))
        except OSError:
            pass
    out = []
    for dirpath, _dirs, names in os.walk(snapshot):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), snapshot)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


class _HubFile(os.PathLike):
    """A file of a Hub repo whose local path is resolved (downloaded into the HF cache) on first use.

    Handed to the shard reader as a shard's source: the reader calls ``os.fspath`` only when it
    opens the shard, so shards are fetched as they are first read. Picklable (DataLoader workers).
    """

    def __init__(self, repo_id: str, filename: str, revision: str | None, options: Mapping[str, Any]) -> None:
        self.repo_id, self.filename, self.revision = repo_id, filename, revision
        self.options = dict(options)
        self._local: str | None = None

    def __fspath__(self) -> str:
        if self._local is None:
            hf = require("huggingface_hub", "hub")
            self._local = hf.hf_hub_download(self.repo_id, self.filename, revision=self.revision, **self.options)
        return self._local

    def __repr__(self) -> str:
        return f"_HubFile({self.repo_id!r}, {self.filename!r}, revision={self.revision!r})"

