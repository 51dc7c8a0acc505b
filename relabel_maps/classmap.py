"""Class maps: a teacher's classes onto a dataset's own classes (coarser or different ones).

A :class:`ClassMap` sends every teacher class to at most one dataset class, many to one (the 120
ImageNet dog breeds to ``dog``); teacher classes it does not name are *unmapped*. Applied to a
pooled soft label ``p`` over the teacher's ``C`` classes it gives a label ``q`` over the dataset's
``D`` classes: ``q[d]`` is the sum of ``p`` over the teacher classes mapped to ``d``. The mass of the
unmapped classes (the *leftover*) is handled as ``leftover`` says:

* ``"renormalize"`` (default): dropped, and ``q`` divided by the mapped mass, as when a classifier is
  evaluated on a subset of its classes; a label without any mapped mass becomes uniform.
* ``"uniform"``: spread evenly over the ``D`` classes (the teacher's doubt becomes label smoothing).
* ``"other"``: kept as one more, last class named ``other`` (``D + 1`` outputs).

The dataset's classes are numbered in sorted order, as torchvision's ``ImageFolder`` numbers its
folders (a JSON file may give the order as ``"order"``). Files (:func:`load_class_map`):

* CSV, one ``teacher class,dataset class`` pair per line (an optional ``teacher,dataset`` header,
  ``#`` comments, CSV quoting for names with commas)::

      teacher,dataset
      281,cat
      282-285,cat
      coffee mug,cup

* JSON, each dataset class with its teacher classes: ``{"cat": ["281-285"], "cup": [504, "cup",
  "espresso"]}``, or ``{"classes": {...}, "leftover": "uniform", "order": [...]}``.

A teacher class is written as its index, an index range ``A-B`` (both included), its WordNet id
(``n02123045``, for the ``imagenet-1k`` class set) or its name: the full name (``tabby, tabby cat``)
or any one comma-separated synonym (``tabby``) that names a single class; a name two classes share
(``crane``) is refused, never guessed. The ImageNet-1k WordNet ids and names ship with the package
(:func:`imagenet_classes`, ``data/imagenet-1k.tsv``: timm's ``ImageNetInfo`` list).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

__all__ = [
    "IMAGENET_1K",
    "LEFTOVER_MODES",
    "ClassMap",
    "ClassMapError",
    "TeacherClasses",
    "hard_label_index",
    "imagenet_classes",
    "load_class_map",
]

#: the class-set id of ImageNet-1k's 1000 classes, in their usual (sorted WordNet id) order
IMAGENET_1K = "imagenet-1k"
#: what happens to the probability of the teacher classes a class map leaves out (module doc)
LEFTOVER_MODES = ("renormalize", "uniform", "other")
OTHER = "other"

_INDEX = re.compile(r"^\s*[+-]?\d+\s*$")
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_WNID = re.compile(r"^n\d{8}$")
#: a class-map file larger than this is refused before it is read (21k classes take ~1 MB)
MAX_FILE_BYTES = 16 << 20


class ClassMapError(InvalidArgumentError):
    """A class map (or its file) is malformed, or does not fit the label maps it is applied to."""


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(wordnet_ids, names)`` of the 1000 ImageNet-1k classes in class-index order."""
    text = resources.files(__package__).joinpath("data/imagenet-1k.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def class_names_for(class_set: str | None, num_classes: int) -> list[str] | None:
    """The class names the package knows for ``class_set`` (ImageNet-1k's), else ``None``."""
    if class_set == IMAGENET_1K and num_classes == 1000:
        return list(imagenet_classes()[1])
    return None


@dataclass(frozen=True, eq=False)
class ClassMap:
    """Teacher class ``c`` → dataset class ``target[c]`` (``-1``: unmapped); see the module doc.

    ``classes`` are the dataset's class names (index = position); ``leftover`` one of
    :data:`LEFTOVER_MODES`. Build one with :meth:`from_mapping` or :func:`load_class_map`.
    """

    target: np.ndarray
    classes: tuple[str, ...]
    leftover: str = "renormalize"
    _order: np.ndarray = field(init=False, repr=False)
    _starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        target = np.asarray(self.target, dtype=np.int64).reshape(-1)
        d = len(self.classes)
        if self.leftover not in LEFTOVER_MODES:
            raise ClassMapError(f"leftover must be one of {LEFTOVER_MODES}, got {self.leftover!r}")
        if d == 0 or len(set(self.classes)) != d:
            raise ClassMapError("a class map needs one or more distinct dataset classes")
        if self.leftover == OTHER and OTHER in self.classes:
            raise ClassMapError(f"leftover='other' adds a class {OTHER!r}, which the class map already has")
        if target.size == 0 or target.min() < -1 or target.max() >= d:
            raise ClassMapError(f"class map targets must lie in [-1, {d})")
        counts = np.bincount(target[target >= 0], minlength=d)
        if not counts.all():
            raise ClassMapError(f"dataset class {self.classes[int(np.argmin(counts))]!r} has no teacher class")
        target.setflags(write=False)
        order = np.argsort(target, kind="stable")[int((target < 0).sum()):]  # mapped classes, by target
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_starts", starts)

    def __repr__(self) -> str:
        mapped = self.num_teacher_classes - self.unmapped.size
        return (f"ClassMap({mapped} of {self.num_teacher_classes} teacher classes -> {list(self.classes)}, "
                f"leftover={self.leftover!r})")

    @property
    def num_teacher_classes(self) -> int:
        """``C``: the teacher classes the map is defined on."""
        return int(self.target.size)

    @property
    def num_classes(self) -> int:
        """The classes of a mapped label: ``D``, or ``D + 1`` with ``leftover="other"``."""
        return len(self.classes) + (self.leftover == OTHER)

    @property
    def names(self) -> list[str]:
        """The names of a mapped label's classes (``classes``, then ``"other"`` if it is kept)."""
        return [*self.classes, *([OTHER] if self.leftover == OTHER else [])]

    @property
    def unmapped(self) -> np.ndarray:
        """The teacher classes the map leaves out."""
        return np.flatnonzero(self.target < 0)

    def members(self, dataset_class: int | str) -> np.ndarray:
        """The teacher classes mapped to ``dataset_class`` (an index or a name)."""
        d = self.classes.index(dataset_class) if isinstance(dataset_class, str) else int(dataset_class)
        return np.flatnonzero(self.target == d)

    def check(self, num_classes: int) -> None:
        """Refuse (:class:`ClassMapError`) labels over ``num_classes`` teacher classes unless the map has as many."""
        if int(num_classes) != self.num_teacher_classes:
            raise ClassMapError(
                f"the class map is defined on {self.num_teacher_classes} teacher classes; "
                f"the label maps have {num_classes}"
            )

    def apply(self, probs: np.ndarray, axis: int = 0) -> np.ndarray:
        """Teacher-class probabilities (``C`` along ``axis``) → dataset-class probabilities
        (:attr:`num_classes` along ``axis``), float32."""
        p = np.moveaxis(np.asarray(probs, dtype=np.float64), axis, 0)
        self.check(p.shape[0])
        mapped = np.add.reduceat(p[self._order], self._starts, axis=0)
        rest = p[self.target < 0].sum(axis=0)
        out = _finish(mapped, rest, self.leftover)
        return np.moveaxis(out, 0, axis).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        """The map as the JSON object :func:`load_class_map` reads (teacher classes by index)."""
        return {
            "classes": {name: [int(c) for c in self.members(d)] for d, name in enumerate(self.classes)},
            "order": list(self.classes),
            "leftover": self.leftover,
        }

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Sequence[int | str] | int | str],
        *,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        class_set: str | None = None,
        leftover: str = "renormalize",
        order: Sequence[str] | None = None,
    ) -> ClassMap:
        """A map from ``{dataset class: teacher classes}`` (indices, ``"A-B"`` ranges, WordNet ids or
        names, resolved against ``class_names`` / ``class_set`` as the module doc says)."""
        names = sorted(mapping) if order is None else list(order)
        if sorted(names) != sorted(mapping):
            raise ClassMapError("'order' must list every dataset class of the map exactly once")
        resolver = TeacherClasses(num_classes, class_names, class_set)
        target = np.full(int(num_classes), -1, dtype=np.int64)
        for d, name in enumerate(names):
            refs = mapping[name]
            for ref in [refs] if isinstance(refs, (str, int)) else refs:
                for c in resolver(ref):
                    if target[c] not in (-1, d):
                        raise ClassMapError(
                            f"teacher class {c}{resolver.label(c)} is mapped to both {names[target[c]]!r} and {name!r}"
                        )
                    target[c] = d
        return cls(target, tuple(names), leftover)


def _finish(mapped: np.ndarray, rest: np.ndarray, leftover: str) -> np.ndarray:
    """Mapped masses ``(D, ...)`` and the leftover mass ``(...)`` → the dataset label (module doc)."""
    if leftover == OTHER:
        return np.concatenate([mapped, rest[None]], axis=0)
    d = mapped.shape[0]
    if leftover == "uniform":
        return mapped + rest / d
    tot = mapped.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, mapped / np.where(tot > 0, tot, 1.0), 1.0 / d)


class TeacherClasses:
    """The one rule for naming a teacher's class: an index, a range ``lo-hi`` (when allowed), a WordNet
    id (ImageNet-1k's, or ``wnids``) or a class name or one of its comma-separated synonyms (matched
    case-insensitively, ``_`` read as a space). Used by class maps and by the label audit.

    :meth:`__call__` returns the class indices a reference names, or raises :class:`ClassMapError`
    saying why it names none (out of range, unknown, ambiguous, no names or WordNet ids to match)."""

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None,
        class_set: str | None,
        *,
        wnids: Sequence[str] | None = None,
    ) -> None:
        self.c = int(num_classes)
        known = class_names_for(class_set, self.c)
        self.names = [str(n) for n in class_names] if class_names is not None else known
        if wnids is None and class_set == IMAGENET_1K and self.c == 1000:
            wnids = imagenet_classes()[0]
        self.wnids = {str(w): i for i, w in enumerate(wnids)} if wnids is not None else None
        self._full: dict[str, list[int]] = {}
        self._synonym: dict[str, list[int]] = {}
        for i, name in enumerate(self.names or []):
            self._full.setdefault(_fold(name), []).append(i)
            for part in {_fold(p) for p in name.split(",") if p.strip()}:
                if i not in self._synonym.setdefault(part, []):
                    self._synonym[part].append(i)

    def label(self, c: int) -> str:
        return f" ({self.names[c]!r})" if self.names else ""

    def __call__(self, ref: int | str, *, ranges: bool = True) -> list[int]:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise ClassMapError(f"a teacher class is an index or a name, got {ref!r}")
        if isinstance(ref, int) or _INDEX.match(ref):
            return [self._index(int(ref))]
        m = _RANGE.match(ref) if ranges else None
        if m:
            lo, hi = self._index(int(m.group(1))), self._index(int(m.group(2)))
            if lo > hi:
                raise ClassMapError(f"empty class range {ref!r}")
            return list(range(lo, hi + 1))
        text = ref.strip()
        if _WNID.match(text):
            if self.wnids is None:
                raise ClassMapError(f"{text!r} is a WordNet id, but the teacher's class set has no WordNet ids")
            if text not in self.wnids or not 0 <= self.wnids[text] < self.c:
                raise ClassMapError(f"{text!r} is not one of the teacher's WordNet ids")
            return [self.wnids[text]]
        if self.names is None:
            raise ClassMapError(
                f"teacher class {ref!r} is a name, but the label maps store no class names: use class indices"
            )
        key = _fold(text)
        hits = self._full.get(key) or self._synonym.get(key) or []
        if len(hits) == 1:
            return hits
        if not hits:
            raise ClassMapError(f"{ref!r} is not a class of the teacher")
        listed = ", ".join(f"{c} {self.names[c]!r}" for c in hits[:6])
        raise ClassMapError(f"{ref!r} names {len(hits)} teacher classes ({listed}): ambiguous, give the index instead")

    def _index(self, c: int) -> int:
        if not 0 <= c < self.c:
            raise ClassMapError(f"teacher class {c} is outside [0, {self.c})")
        return c


def _fold(name: str) -> str:
    """A class name as names are matched: case-folded, ``_`` as a space, white space collapsed."""
    return " ".join(name.replace("_", " ").split()).casefold()


def load_class_map(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    class_set: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    leftover: str | None = None,
) -> ClassMap:
    """A :class:`ClassMap` from a CSV or JSON file (or an already parsed JSON object).

    The teacher's classes come from ``metadata`` (a label-map dataset's: ``num_classes``,
    ``class_names``, ``class_set``) or from the keyword arguments. ``leftover`` overrides the
    file's (default ``"renormalize"``).
    """
    if metadata is not None:
        num_classes = int(metadata["num_classes"]) if num_classes is None else num_classes
        class_names = metadata.get("class_names") if class_names is None else class_names
        class_set = metadata.get("class_set") if class_set is None else class_set
    if num_classes is None:
        raise ClassMapError("load_class_map needs the teacher's num_classes (or the label maps' metadata)")
    where = "<class map>"
    if isinstance(source, Mapping):
        parsed: Any = source
    else:
        where = os.fspath(source)
        parsed = _read(where)
    mapping, order, file_leftover = _parse(parsed, where)
    try:
        return ClassMap.from_mapping(
            mapping, num_classes=num_classes, class_names=class_names, class_set=class_set,
            leftover=leftover or file_leftover or "renormalize", order=order,
        )
    except ClassMapError as exc:
        raise ClassMapError(f"{where}: {exc}") from None


def _read(path: str) -> Any:
    """A class-map file: parsed JSON, or the CSV rows as a list of ``(teacher, dataset)`` pairs."""
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise ClassMapError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a class map")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ClassMapError(f"class map not found: {path}") from None
    except UnicodeDecodeError:
        raise ClassMapError(f"{path}: not a UTF-8 text file") from None
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ClassMapError(f"{path}: not valid JSON ({exc})") from None
    rows: list[tuple[str, str]] = []
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise ClassMapError(f"{path}, line {n}: expected 'teacher class,dataset class', got {len(row)} fields")
        if not rows and [c.strip().lower() for c in row] == ["teacher", "dataset"]:
            continue
        rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise ClassMapError(f"{path}: no 'teacher class,dataset class' lines")
    return rows


def _parse(obj: Any, where: str) -> tuple[dict[str, list[Any]], list[str] | None, str | None]:
    """``(dataset class -> teacher refs, order, leftover)`` of a parsed file."""
    if isinstance(obj, list):  # CSV rows
        mapping: dict[str, list[Any]] = {}
        for teacher, dataset in obj:
            if not dataset:
                raise ClassMapError(f"{where}: an empty dataset class name")
            mapping.setdefault(dataset, []).append(teacher)
        return mapping, None, None
    if not isinstance(obj, Mapping):
        raise ClassMapError(f"{where}: a class map is a JSON object")
    order = leftover = None
    if isinstance(obj.get("classes"), Mapping) and set(obj) <= {"classes", "order", "leftover"}:
        order, leftover, obj = obj.get("order"), obj.get("leftover"), obj["classes"]
    if order is not None and not (isinstance(order, list) and all(isinstance(o, str) for o in order)):
        raise ClassMapError(f"{where}: 'order' must be a list of dataset class names")
    if leftover is not None and leftover not in LEFTOVER_MODES:
        raise ClassMapError(f"{where}: leftover must be one of {LEFTOVER_MODES}, got {leftover!r}")
    out = {}
    for name, refs in obj.items():
        if not isinstance(refs, (list, str, int)) or isinstance(refs, bool):
            raise ClassMapError(f"{where}: dataset class {name!r} needs a list of teacher classes")
        out[str(name)] = refs if isinstance(refs, list) else [refs]
    return out, order, leftover


def hard_label_index(
    classes: Sequence[str], *, metadata: Mapping[str, Any], class_map: ClassMap | None = None
) -> np.ndarray:
    """For each of a dataset's own class names (an ImageFolder's ``classes``), its index among the
    classes of the pooled labels: the class map's classes, else the teacher's (by class name, or by
    WordNet id for ``imagenet-1k``). Refuses (:class:`ClassMapError`) a class that is not one of
    them, so hard labels of another label space are never mixed in as if they were."""
    if class_map is not None:
        space, what = class_map.names, "the class map's classes"
    else:
        num = int(metadata["num_classes"])
        names = metadata.get("class_names") or class_names_for(metadata.get("class_set"), num)
        space, what = list(names or []), "the teacher's class names"
        if metadata.get("class_set") == IMAGENET_1K and num == 1000 and all(_WNID.match(c) for c in classes):
            space, what = list(imagenet_classes()[0]), "the ImageNet-1k WordNet ids"
    lookup = {name: i for i, name in reversed(list(enumerate(space)))}
    missing = [c for c in classes if c not in lookup]
    if missing:
        if not space:
            why = "the label maps store no class names"
        else:
            shown = ", ".join(space[:5]) + (", ..." if len(space) > 5 else "")
            why = f"it is not one of {what} ({shown})"
        raise ClassMapError(
            f"the dataset's class {missing[0]!r} has no place among the pooled labels' classes: {why}; "
            "map the teacher's classes onto the dataset's with a class map"
        )
    return np.array([lookup[c] for c in classes], dtype=np.int64)
