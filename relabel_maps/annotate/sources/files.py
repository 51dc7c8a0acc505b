"""Where a stream source's files are: local paths, brace patterns, globs, and ``hf://`` URLs.

``hf://datasets/owner/name[@revision][/path]`` (``hf://owner/name`` also works) is read through
huggingface_hub's file system (``HfFileSystem``), streamed with range requests: nothing is copied
to disk. The revision is resolved to its commit once, when the source is opened, so every rank and
every file of a run reads the same commit. ``split`` picks a split's files as ``datasets`` does
(``load_dataset_builder(...).config.data_files``: the card's ``configs``, or file names such as
``train-*.parquet``, ``data/train/*.tar``). Transient Hub failures are retried with the Hub face's
policy (:mod:`relabel_maps.hub.retry`), also in the middle of a file (:func:`resilient`).
"""

from __future__ import annotations

import glob as globlib
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

from ...errors import DependencyError, InvalidArgumentError, require
from ...layout import HF_SCHEME, is_hub_url
from .base import FileRef
from .folder import IMAGE_EXTENSIONS, resolve_source

__all__ = [
    "STREAM_SUFFIXES",
    "file_kind",
    "is_transport_error",
    "is_stream_source",
    "open_file",
    "resilient",
    "resolve_files",
    "source_exists",
]

#: file suffixes of stream sources, and the kind each is read as
STREAM_SUFFIXES = {".tar": "tar", ".tgz": "tar", ".tar.gz": "tar", ".parquet": "parquet"}
_GLOB_CHARS = frozenset("*?[")
_READ_BLOCK = 8 << 20  # bytes per range request when streaming an hf:// file
T = TypeVar("T")


def file_kind(name: str) -> str | None:
    """``"tar"`` or ``"parquet"`` by the file name's suffix, else ``None``."""
    lower = name.lower()
    for suffix, kind in STREAM_SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    return None


def _has_braces(text: str) -> bool:
    return "{" in text and "}" in text.split("{", 1)[1]


def _has_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def _folder_holds_images(root: Path) -> bool:
    for _, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in filenames if not f.startswith(".")):
            return True
    return False


def is_stream_source(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` names tar shards or Parquet files (``hf://``, a brace pattern, a glob, such a
    file, or a folder holding them and no images) rather than a folder of images or one image."""
    text = os.fspath(source)
    if is_hub_url(text):
        return True
    path = resolve_source(text)
    if path.is_file():
        return file_kind(path.name) is not None
    if path.is_dir():
        return not _folder_holds_images(path) and bool(_local_find(path))
    return _has_braces(text) or _has_glob(text)


def source_exists(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` can be opened (``hf://`` URLs are checked when opened)."""
    text = os.fspath(source)
    if is_hub_url(text) or resolve_source(text).exists():
        return True
    return bool(_local_expand(text)) if _has_braces(text) or _has_glob(text) else False


# ------------------------------------------------------------------------------------------ local
def _local_find(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".") and file_kind(f)]
    return out


def _local_expand(pattern: str) -> list[str]:
    braceexpand = require("braceexpand", "sources")
    out: list[str] = []
    for entry in braceexpand.braceexpand(pattern):
        out += sorted(globlib.glob(entry)) if _has_glob(entry) else [entry] if os.path.exists(entry) else []
    return out


def _local_files(source: str, split: str | None) -> list[FileRef]:
    path = resolve_source(source)
    if path.is_dir():
        if split is not None:
            return [_local_ref(Path(p), path) for p in _split_files(str(path), split, {})]
        return [_local_ref(p, path) for p in sorted(_local_find(path), key=lambda p: p.as_posix().encode())]
    if path.is_file():
        return [_local_ref(path, path.parent)]
    if not (_has_braces(source) or _has_glob(source)):
        raise InvalidArgumentError(f"source not found: {source}")
    braceexpand = require("braceexpand", "sources")
    missing = [e for e in braceexpand.braceexpand(source) if not _has_glob(e) and not os.path.exists(e)]
    if missing:
        raise InvalidArgumentError(f"{source}: {len(missing)} file(s) of the pattern do not exist, e.g. {missing[0]}")
    files = _local_expand(source)
    if not files:
        raise InvalidArgumentError(f"{source} matches no file")
    root = Path(os.path.commonpath([os.path.abspath(f) for f in files]))
    root = root.parent if root.is_file() else root
    return [_local_ref(Path(f), root) for f in files]


def _local_ref(path: Path, root: Path) -> FileRef:
    try:
        name = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        name = path.name
    return FileRef(str(path), name, path.stat().st_size)


# ------------------------------------------------------------------------------------------- Hub
def _hub_modules() -> tuple[Any, Any, Any]:
    """huggingface_hub and the Hub face's retry helpers (the ``hub``/``sources`` extras)."""
    hf = require("huggingface_hub", "sources")
    from ...hub import paths, retry

    return hf, paths, retry


def _hub_files(source: str, split: str | None) -> list[FileRef]:
    hf, paths, retry = _hub_modules()
    loc = paths.parse_hub_url(source)
    api = hf.HfApi()
    info = retry.hub_call(str(loc), lambda: api.dataset_info(loc.repo_id, revision=loc.revision))
    base = f"datasets/{loc.repo_id}@{info.sha}"
    fs = hf.HfFileSystem()

    def call(target: str, fn: Callable[[], Any]) -> Any:
        return retry.hub_call(f"{paths.HubPath(loc.repo_id, loc.revision, target)}", fn)

    if _has_braces(loc.path) or _has_glob(loc.path):
        braceexpand = require("braceexpand", "sources")
        found: dict[str, int] = {}
        listed: dict[str, dict[str, int]] = {}
        for entry in braceexpand.braceexpand(loc.path):
            if _has_glob(entry):
                hits = call(entry, partial(fs.glob, f"{base}/{entry}", detail=True))
                found.update({p: int(d.get("size") or 0) for p, d in hits.items() if d.get("type") == "file"})
                continue
            parent = entry.rsplit("/", 1)[0] if "/" in entry else ""
            if parent not in listed:
                folder = f"{base}/{parent}".rstrip("/")
                listing = call(parent, partial(fs.ls, folder, detail=True))
                listed[parent] = {d["name"]: int(d.get("size") or 0) for d in listing if d.get("type") == "file"}
            full = f"{base}/{entry}"
            if full not in listed[parent]:
                raise InvalidArgumentError(f"{source}: {entry} is not in {loc.repo_id}@{info.sha[:12]}")
            found[full] = listed[parent][full]
        names = list(found)
    else:
        target = f"{base}/{loc.path}".rstrip("/")
        kind = call(loc.path, lambda: fs.info(target))
        if kind.get("type") == "file":
            names, found = [target], {target: int(kind.get("size") or 0)}
        elif split is not None:
            urls = _split_files(loc.repo_id, split, {"revision": info.sha, "data_dir": loc.path or None})
            names = [u[len(HF_SCHEME):] if is_hub_url(u) else u for u in urls]
            found = {}
        else:
            hits = call(loc.path, lambda: fs.find(target, detail=True))
            found = {p: int(d.get("size") or 0) for p, d in hits.items() if file_kind(p)}
            names = sorted(found, key=lambda p: p.encode())
    refs = []
    for name in names:
        size = found.get(name)
        if size is None:
            size = int(call(name, partial(fs.info, name)).get("size") or 0)
        in_repo = name[len(base) + 1:] if name.startswith(base + "/") else name.split("/", 3)[-1]
        refs.append(FileRef(f"{HF_SCHEME}{base}/{in_repo}", in_repo, size))
    return refs


def _split_files(path: str, split: str, options: dict[str, Any]) -> list[str]:
    """The files of ``split`` as ``datasets`` resolves them for ``path`` (a Hub repo id or a local folder)."""
    try:
        datasets = require("datasets", "sources")
    except DependencyError as exc:
        raise DependencyError(f"--split needs the datasets library: {exc}") from exc
    try:
        builder = datasets.load_dataset_builder(path, **{k: v for k, v in options.items() if v is not None})
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for an unusable repo or folder
        raise InvalidArgumentError(f"cannot resolve the splits of {path}: {type(exc).__name__}: {exc}") from exc
    data_files = dict(builder.config.data_files or {})
    if split not in data_files:
        raise InvalidArgumentError(f"{path} has no split {split!r} (splits: {', '.join(sorted(data_files)) or 'none'})")
    files = [str(f) for f in data_files[split] if file_kind(str(f))]
    if not files:
        raise InvalidArgumentError(f"split {split!r} of {path} holds no tar or Parquet files")
    return files


# ------------------------------------------------------------------------------------------ open
def resolve_files(source: str | os.PathLike[str], split: str | None = None) -> tuple[str, list[FileRef]]:
    """``(kind, files)`` of a stream source, in source order: the files of a folder or repo path
    sorted by their UTF-8 bytes, a brace pattern's in its own order.

    Raises:
        InvalidArgumentError: nothing found, a missing file, a mix of tar and Parquet files.
        HubError: the Hub refused or failed (typed, after retries).
    """
    text = os.fspath(source)
    files = _hub_files(text, split) if is_hub_url(text) else _local_files(text, split)
    seen: set[str] = set()
    files = [f for f in files if not (f.url in seen or seen.add(f.url))]  # type: ignore[func-returns-value]
    kinds = {file_kind(f.name) for f in files}
    if not files or kinds == {None}:
        raise InvalidArgumentError(f"{text} holds no tar shards or Parquet files")
    if len(kinds - {None}) > 1:
        raise InvalidArgumentError(
            f"{text} holds both tar shards and Parquet files: name one kind (a glob such as '*.tar') or a --split"
        )
    kind = next(k for k in kinds if k is not None)
    return kind, [f for f in files if file_kind(f.name) == kind]


def open_file(url: str) -> IO[bytes]:
    """A binary file object of a local path or an ``hf://`` URL (streamed in large range requests)."""
    if is_hub_url(url):
        hf = require("huggingface_hub", "sources")
        f: IO[bytes] = hf.HfFileSystem().open(url, "rb", block_size=_READ_BLOCK)
        return f
    return open(url, "rb", buffering=1 << 20)


def is_transport_error(exc: BaseException, url: str) -> bool:
    """Whether ``exc``, raised while reading ``url``, is a Hub or network failure (retried by
    :func:`resilient`) rather than a fault of the file's bytes. Local files have no transport."""
    if not is_hub_url(url) or not isinstance(exc, Exception):
        return False
    from ...hub.failures import classify

    return classify(exc, url) is not None


def resilient(url: str, read: Callable[[], Iterator[T]]) -> Iterator[T]:
    """The items ``read()`` yields for the file ``url``; a transient Hub failure in the middle
    re-opens the file (``read()`` again) and skips what was already yielded, with the Hub face's
    bounded backoff. Local files are read once."""
    if not is_hub_url(url):
        yield from read()
        return
    _, _, retry = _hub_modules()
    from ...hub.failures import classify

    policy = retry.RetryPolicy.from_env()
    yielded, attempt = 0, 1
    while True:
        try:
            for i, sample in enumerate(read()):
                if i >= yielded:
                    yielded += 1
                    yield sample
            return
        except Exception as exc:
            found = classify(exc, url)
            if found is None:
                raise
            error, transient = found
            if not transient or attempt >= policy.attempts:
                raise error from exc
            time.sleep(policy.wait(attempt))
            attempt += 1
