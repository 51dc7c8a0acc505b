"""A dataset's own labels, matched to the teacher's classes.

Label sources (:func:`load_labels`):

* an ImageFolder tree: the class of a key is its first path component (``n01440764/x.JPEG``), as
  keys are written by ``relabel-maps annotate`` over the same tree; images are read from the tree;
* a CSV file with ``key`` and ``label`` (or ``cls``) columns, or two columns without a header;
* a Parquet file with a key column (``key``, ``__key__``, ``path`` or ``image.path``) and a
  ``label``/``cls`` column;
* WebDataset tar shards (a ``.tar`` or a folder of them): the ``.cls`` (or ``.label``) member of each
  sample, keyed by its ``__key__``.

A label is a class index (``285``), an ImageNet WordNet id (``n02124075``; needs the file's class set
``imagenet-1k``, whose ids ship with the package) or a class name (``Egyptian cat``,
``Egyptian_cat``, or any comma-separated synonym of the file's ``class_names``). :class:`ClassResolver`
maps it to the teacher's class index; a label outside the teacher's classes, or a name shared by
several classes (ImageNet's two ``crane``), is reported with its reason and never guessed.
"""

from __future__ import annotations

import csv
import os
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classmap import ClassMapError, TeacherClasses
from ..errors import InvalidArgumentError, require

__all__ = [
    "NO_LABEL",
    "UNKNOWN_LABEL",
    "ClassResolver",
    "DatasetLabels",
    "FolderLabels",
    "TableLabels",
    "load_labels",
    "resolve_keys",
]

#: label index of an image without a label in the source
NO_LABEL = -2
#: label index of an image whose label is not one of the teacher's classes
UNKNOWN_LABEL = -1

_KEY_COLUMNS = ("key", "__key__", "path", "file", "filename", "image.path")
_LABEL_COLUMNS = ("label", "cls", "class", "target")
_LABEL_MEMBERS = ("cls", "label")
_FORMATS = ("auto", "folder", "csv", "parquet", "tar")


@dataclass(frozen=True)
class Resolution:
    """A label matched to the teacher's classes: ``index`` (or :data:`UNKNOWN_LABEL` with ``problem``)."""

    index: int
    problem: str | None = None


class ClassResolver:
    """Dataset labels (index, WordNet id, class name) → the teacher's class indices, through the one
    naming rule of :class:`relabel_maps.classmap.TeacherClasses`; a label that names no single class
    resolves to :data:`UNKNOWN_LABEL` with the reason.

    ``wnids`` are the class set's WordNet ids in index order (default: ImageNet-1k's for that class
    set); ``class_names`` the file's names, each possibly a comma-separated synonym list."""

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        wnids: Sequence[str] | None = None,
        *,
        class_set: str | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.class_names = [str(n) for n in class_names] if class_names else None
        self._classes = TeacherClasses(self.num_classes, self.class_names, class_set, wnids=wnids)
        self._cache: dict[str, Resolution] = {}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, wnids: Sequence[str] | None = None) -> ClassResolver:
        """A resolver for a label-map file: its ``num_classes``, ``class_names`` and ``class_set``."""
        return cls(int(metadata["num_classes"]), metadata.get("class_names"), wnids,
                   class_set=metadata.get("class_set"))

    def name(self, index: int) -> str:
        """The class's name (its first synonym), or ``str(index)``."""
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index].split(",")[0].strip()
        return str(index)

    def resolve(self, label: object) -> Resolution:
        """The teacher's class index of ``label``; :data:`UNKNOWN_LABEL` with a reason otherwise."""
        text = str(label).strip()
        found = self._cache.get(text)
        if found is None:
            try:
                (index,) = self._classes(text, ranges=False)
                found = Resolution(index)
            except ClassMapError as exc:
                found = Resolution(UNKNOWN_LABEL, str(exc))
            self._cache[text] = found
        return found

    def index(self, label: object) -> int:
        """``resolve(label).index``."""
        return self.resolve(label).index

    def problems(self) -> dict[str, str]:
        """Every label resolved so far that is not a teacher class → its reason."""
        return {text: r.problem for text, r in self._cache.items() if r.problem is not None}


class DatasetLabels:
    """Labels of a dataset, by key: ``raw(key)`` is the label as given (``None``: no label), and
    ``image_bytes(keys)`` reads images for the report's thumbnails (empty when it cannot)."""

    description = "labels"

    def raw(self, key: str) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def values(self) -> set[str]:
        """The distinct labels known without reading every key (to resolve them once)."""
        return set()

    def image_bytes(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Encoded images of ``keys`` where the source holds them."""
        return {}


class FolderLabels(DatasetLabels):
    """An ImageFolder tree: the label of ``cls/sub/img.jpg`` is ``cls``; images are ``root/key``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidArgumentError(f"labels: {self.root} is not a folder")
        self.description = f"ImageFolder {self.root}"

    def raw(self, key: str) -> str | None:
        folder, sep, _ = key.partition("/")
        return folder if sep and folder else None

    def values(self) -> set[str]:
        with os.scandir(self.root) as entries:
            return {e.name for e in entries if e.is_dir()}

    def image_bytes(self, keys: Sequence[str]) -> dict[str, bytes]:
        return _read_files(self.root, keys)


class TableLabels(DatasetLabels):
    """Labels held as ``key → label`` (CSV, Parquet, tar); images from ``images`` (a folder) when given."""

    def __init__(
        self, labels: Mapping[str, str], description: str, *, images: str | os.PathLike[str] | None = None,
        tars: Sequence[Path] = (),
    ) -> None:
        self._labels = dict(labels)
        self.description = description
        self.images = Path(images) if images is not None else None
        self._tars = list(tars)
        self._found: set[str] = set()

    def __len__(self) -> int:
        return len(self._labels)

    def keys(self) -> Iterator[str]:
        return iter(self._labels)

    def raw(self, key: str) -> str | None:
        """The label of ``key``, else of ``key`` without its extension (a WebDataset ``__key__``)."""
        found = key if key in self._labels else _stem(key)
        label = self._labels.get(found)
        if label is not None:
            self._found.add(found)
        return label

    def unmatched(self) -> list[str]:
        """Labelled keys that no :meth:`raw` call has asked for so far (in this process)."""
        return [key for key in self._labels if key not in self._found]

    def values(self) -> set[str]:
        return set(self._labels.values())

    def image_bytes(self, keys: Sequence[str]) -> dict[str, bytes]:
        if self.images is not None:
            return _read_files(self.images, keys)
        if not self._tars:
            return {}
        by_stem = {_stem(key): key for key in keys}
        return {by_stem[k]: data for k, data in _tar_images(self._tars, set(by_stem)).items()}


def _stem(key: str) -> str:
    folder, _, name = key.rpartition("/")
    stem = name.partition(".")[0] or name
    return f"{folder}/{stem}" if folder else stem


def _read_files(root: Path, keys: Sequence[str]) -> dict[str, bytes]:
    out = {}
    for key in keys:
        path = root / key
        if path.is_file():
            out[key] = path.read_bytes()
    return out


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: ``dir/base.ext.more`` → (``dir/base``, ``ext.more``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _tar_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix == ".tar")
    return [path]


def _read_tar_labels(tars: Sequence[Path]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for tar in tars:
        with tarfile.open(tar, "r") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name)
                if ext in _LABEL_MEMBERS:
                    fh = tf.extractfile(member)
                    if fh is not None:
                        labels[key] = fh.read().decode("utf-8", "replace").strip()
    return labels


def _tar_images(tars: Sequence[Path], keys: set[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    image_exts = ("jpg", "jpeg", "png", "webp", "bmp", "ppm")
    for tar in tars:
        with tarfile.open(tar, "r") as tf:
            for member in tf:
                key, ext = _split_member(member.name)
                if key in keys and key not in out and ext in image_exts and member.isfile():
                    fh = tf.extractfile(member)
                    if fh is not None:
                        out[key] = fh.read()
    return out


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, src: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise InvalidArgumentError(f"labels: {src} has no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise InvalidArgumentError(
        f"labels: {src} has no {what} column (looked for {', '.join(candidates)}; columns: {', '.join(columns)})"
    )


def _read_csv(path: Path, key_column: str | None, label_column: str | None) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None:
            return {}
        names = [h.strip() for h in header]
        has_header = key_column in names or any(n in names for n in _KEY_COLUMNS)
        if has_header:
            k = names.index(_pick(names, key_column, _KEY_COLUMNS, "key", str(path)))
            v = names.index(_pick(names, label_column, _LABEL_COLUMNS, "label", str(path)))
            body: Iterator[list[str]] = rows
        else:
            if len(names) < 2:
                raise InvalidArgumentError(f"labels: {path} needs two columns, key and label")
            k, v = 0, 1
            body = iter([header, *rows])
        out = {}
        for line, row in enumerate(body, start=2 if has_header else 1):
            if not row:
                continue
            if len(row) <= max(k, v):
                raise InvalidArgumentError(f"labels: {path} line {line} has {len(row)} fields")
            out[row[k].strip()] = row[v].strip()
        return out


def _read_parquet(path: Path, key_column: str | None, label_column: str | None) -> dict[str, str]:
    pa = require("pyarrow", "parquet")
    pq = require("pyarrow.parquet", "parquet")
    pf = pq.ParquetFile(path)
    names: list[str] = []
    for field in pf.schema_arrow:
        names.append(field.name)
        if pa.types.is_struct(field.type):
            names.extend(f"{field.name}.{sub.name}" for sub in field.type)
    key = _pick(names, key_column, _KEY_COLUMNS, "key", str(path))
    label = _pick(names, label_column, _LABEL_COLUMNS, "label", str(path))

    def column(batch: Any, name: str) -> list[Any]:
        top, _, sub = name.partition(".")
        array = batch.column(batch.schema.get_field_index(top))
        return (array.field(sub) if sub else array).to_pylist()

    out: dict[str, str] = {}
    for batch in pf.iter_batches(columns=sorted({key.split(".")[0], label.split(".")[0]}), batch_size=65536):
        for k, v in zip(column(batch, key), column(batch, label), strict=True):
            if k is not None and v is not None:
                out[str(k)] = str(v)
    return out


def load_labels(
    source: str | os.PathLike[str] | DatasetLabels,
    *,
    format: str = "auto",
    key_column: str | None = None,
    label_column: str | None = None,
    images: str | os.PathLike[str] | None = None,
) -> DatasetLabels:
    """The labels of ``source``: an ImageFolder tree, a CSV or Parquet file, or WebDataset tar
    shards (``format`` ``"auto"`` picks by what ``source`` is). ``images``: a folder holding the
    images by key, for the report's thumbnails when the labels come from a table."""
    if isinstance(source, DatasetLabels):
        return source
    if format not in _FORMATS:
        raise InvalidArgumentError(f"labels format must be one of {_FORMATS}, got {format!r}")
    path = Path(source)
    if not path.exists():
        raise InvalidArgumentError(f"labels: no such file or folder: {path}")
    if format == "auto":
        suffix = path.suffix.lower()
        if path.is_dir():
            format = "tar" if any(p.suffix == ".tar" for p in path.iterdir()) else "folder"
        elif suffix in (".csv", ".tsv", ".txt"):
            format = "csv"
        elif suffix in (".parquet", ".pq"):
            format = "parquet"
        elif suffix == ".tar":
            format = "tar"
        else:
            raise InvalidArgumentError(f"labels: cannot tell the format of {path}; pass format=")
    if format == "folder":
        return FolderLabels(path)
    if format == "tar":
        tars = _tar_files(path)
        return TableLabels(_read_tar_labels(tars), f"tar shards {path}", images=images, tars=tars)
    reader = _read_csv if format == "csv" else _read_parquet
    return TableLabels(reader(path, key_column, label_column), f"{format} {path}", images=images)


def resolve_keys(labels: DatasetLabels, resolver: ClassResolver, keys: Sequence[str]) -> np.ndarray:
    """int32 label indices of ``keys``: a class, :data:`UNKNOWN_LABEL` or :data:`NO_LABEL`."""
    out = np.empty(len(keys), dtype=np.int32)
    for i, key in enumerate(keys):
        raw = labels.raw(key)
        out[i] = NO_LABEL if raw is None or raw == "" else resolver.index(raw)
    return out

