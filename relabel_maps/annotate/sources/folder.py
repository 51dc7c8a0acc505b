"""Folder sources: a folder tree or a file list, filtered by globs, in a deterministic key order.

A key is the image's path relative to the source root, with ``/`` separators (ImageNet layout:
``n01440764/n01440764_10026.JPEG``). Keys are sorted by their UTF-8 bytes so every machine lists
the same order, and ``--shard i/n`` splits that order into ``n`` contiguous, near-equal parts.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from ...errors import InvalidArgumentError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SAMPLES",
    "ImageItem",
    "list_images",
    "matches",
    "parse_shard",
    "resolve_source",
    "sample_images_dir",
    "shard_items",
]

T = TypeVar("T")

#: source name of the sample photos shipped with the package (``relabel_maps/data``)
SAMPLES = "@samples"

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)


@dataclass(frozen=True)
class ImageItem:
    """One image to annotate: its key in the output and its path on disk."""

    key: str
    path: str


def sample_images_dir() -> Path:
    """Folder of the CC0 sample photos shipped with the package (a cat and a cup of coffee)."""
    return Path(__file__).resolve().parents[2] / "data"


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """``source`` as a path; ``"@samples"`` names :func:`sample_images_dir`."""
    return sample_images_dir() if str(source) == SAMPLES else Path(source)


def _sort_key(item: ImageItem) -> bytes:
    return item.key.encode("utf-8", "surrogateescape")


def matches(key: str, globs: Sequence[str]) -> bool:
    """Whether ``key`` matches one of ``globs`` (``fnmatch``; a pattern without ``/`` also matches the
    file name alone)."""
    name = key.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(key, g) or ("/" not in g and fnmatch.fnmatchcase(name, g)) for g in globs)


def list_images(
    source: str | os.PathLike[str],
    *,
    file_list: str | os.PathLike[str] | None = None,
    globs: Sequence[str] = (),
    extensions: Iterable[str] | None = IMAGE_EXTENSIONS,
    follow_symlinks: bool = True,
) -> list[ImageItem]:
    """List the images of ``source`` in sorted key order.

    Args:
        source: a folder (walked recursively), a single image file, or ``"@samples"``.
        file_list: optional text file with one path per line (relative to ``source`` or absolute
            under it; blank lines and ``#`` comments ignored); replaces the folder walk.
        globs: keep only keys matching one of these patterns (``fnmatch``; a pattern without ``/``
            also matches the file name alone, e.g. ``*.JPEG``). With globs, ``extensions`` is not applied.
        extensions: lower-case suffixes taken when walking a folder without globs; ``None`` takes every file.

    Raises:
        InvalidArgumentError: missing source or file list, or a listed path outside ``source``.
    """
    root = resolve_source(source)
    if not root.exists():
        raise InvalidArgumentError(f"source not found: {root}")
    exts = None if extensions is None or globs else {e.lower() for e in extensions}
    items: dict[str, ImageItem] = {}
    if root.is_file() and file_list is None:
        items[root.name] = ImageItem(root.name, str(root))
    elif file_list is not None:
        items.update(_from_list(root, Path(file_list)))
    else:
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink cycle, or the same folder linked twice
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
            for fn in filenames:
                if fn.startswith("."):
                    continue
                if exts is not None and os.path.splitext(fn)[1].lower() not in exts:
                    continue
                key = (rel_dir / fn).as_posix() if str(rel_dir) != "." else fn
                items[key] = ImageItem(key, os.path.join(dirpath, fn))
    out = [it for it in items.values() if not globs or matches(it.key, globs)]
    out.sort(key=_sort_key)
    return out


def _from_list(root: Path, file_list: Path) -> dict[str, ImageItem]:
    if not file_list.is_file():
        raise InvalidArgumentError(f"file list not found: {file_list}")
    base = root if root.is_dir() else root.parent
    base_abs = os.path.abspath(base)
    items: dict[str, ImageItem] = {}
    with open(file_list, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            full = p if p.is_absolute() else base / p
            rel = os.path.relpath(os.path.abspath(full), base_abs)
            if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
                raise InvalidArgumentError(f"{file_list}:{lineno}: {line!r} is not under the source folder {base}")
            key = PurePosixPath(*Path(rel).parts).as_posix()
            items[key] = ImageItem(key, str(full))
    return items


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based ``i``) into ``(i, n)``; ``None`` means ``(0, 1)``."""
    if text is None or text == "":
        return 0, 1
    try:
        i_s, n_s = str(text).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise InvalidArgumentError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InvalidArgumentError(f"shard {text!r}: need 0 <= i < n")
    return i, n


def shard_items(items: Sequence[T], index: int, count: int) -> list[T]:
    """The ``index``-th of ``count`` contiguous, near-equal parts of ``items``."""
    if count < 1 or not 0 <= index < count:
        raise InvalidArgumentError(f"bad shard {index}/{count}")
    n = len(items)
    return list(items[index * n // count : (index + 1) * n // count])
