"""A writer's arguments: their checks, and the file metadata (spec/FORMAT.md §5) they become.

A resumed run must repeat its arguments: the journal stores them as :func:`as_stored` gives them,
and :func:`comparable_metadata` is what two runs' metadata are compared by.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import format as fmt
from ._version import __version__
from .errors import FormatError, InvalidArgumentError
from .labelmap import SCORE_KINDS

__all__ = ["as_stored", "check_arguments", "comparable_metadata", "file_metadata", "json_line"]


def json_line(obj: Any) -> bytes:
    """``obj`` as one canonical JSON line (sorted keys, UTF-8), as journals store it."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def as_stored(obj: Any) -> Any:
    """``obj`` as it reads back from a journal line (tuples become lists, keys strings)."""
    return json.loads(json_line(obj))


def check_arguments(num_classes: Any, k: Any, score_kind: str, max_records: Any, max_bytes: Any,
                    dictionary: Any, level: Any) -> None:
    """Check a writer's arguments (:class:`InvalidArgumentError`)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(num_classes) or not 1 <= num_classes <= fmt.LIMITS.max_num_classes:
        raise InvalidArgumentError(f"num_classes must be an integer in [1, {fmt.LIMITS.max_num_classes}]")
    if not is_int(k) or not 1 <= k <= min(fmt.LIMITS.max_k, num_classes):
        raise InvalidArgumentError(f"k must be an integer in [1, min(255, num_classes)], got {k!r}")
    if score_kind not in SCORE_KINDS:
        raise InvalidArgumentError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}")
    for name, v in (("max_records", max_records), ("max_bytes", max_bytes)):
        if v is not None and (not is_int(v) or v < 1):
            raise InvalidArgumentError(f"{name} must be a positive integer or None, got {v!r}")
    if dictionary not in (False, True, "auto"):
        raise InvalidArgumentError(f"dictionary must be False, True or 'auto', got {dictionary!r}")
    if not is_int(level) or not -7 <= level <= 22:
        raise InvalidArgumentError(f"level must be an integer in [-7, 22], got {level!r}")


def file_metadata(num_classes: int, k: int, score_kind: str, encoding: Mapping[str, Any], level: int,
                  teacher: Mapping[str, Any] | None, class_set: str | None, class_names: Sequence[str] | None,
                  extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metadata a writer with these (checked) arguments stores (spec §5); free keys ``extra``."""
    if class_set is not None and not isinstance(class_set, str):
        raise InvalidArgumentError("class_set must be a string or None")
    names = None
    if class_names is not None:
        names = list(class_names)
        if len(names) != num_classes or not all(isinstance(s, str) for s in names):
            raise InvalidArgumentError(f"class_names must be {num_classes} strings")
    if teacher is not None and not isinstance(teacher, Mapping):
        raise InvalidArgumentError("teacher must be a mapping or None")
    t = {key: None for key in fmt.TEACHER_KEYS}
    t.update(dict(teacher or {}))
    meta: dict[str, Any] = {
        "format_version": fmt.version_string(),
        "num_classes": num_classes,
        "k": k,
        "score_kind": score_kind,
        "encoding": encoding,
        "compression": {"codec": "zstd", "level": level, "dictionary": False},
        "class_set": class_set,
        "class_names": names,
        "teacher": t,
        "tool": {"name": "relabel-maps", "version": __version__},
    }
    for key, value in dict(extra or {}).items():
        if not isinstance(key, str) or not (key == "extra" or ("." in key.strip(".") and key[0] != ".")):
            raise InvalidArgumentError(f"free metadata key {key!r} must be namespaced ('ns.key') or be 'extra'")
        meta[key] = value
    try:
        fmt.dump_metadata(meta)
    except FormatError as exc:
        raise InvalidArgumentError(str(exc)) from None
    return meta


def comparable_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` minus ``compression.dictionary``, which depends on training, not on the arguments."""
    meta = dict(metadata)
    meta["compression"] = {k: v for k, v in meta["compression"].items() if k != "dictionary"}
    return meta
