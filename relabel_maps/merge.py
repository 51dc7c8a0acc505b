"""Merge label-map datasets (shards written by several ranks or runs) into one dataset.

Inputs are ``.rlm`` files, folders of shards or index JSONs. They must hold maps of the same teacher
over the same classes: equal ``num_classes``, ``score_kind``, ``class_set``, ``teacher`` and (where
both store them) ``class_names``; any difference is refused with the field and both values named.
They may differ in how the maps are stored: inputs in another ``encoding`` than the output's (by
default the first input's) or with another ``k`` are decoded and re-encoded (the output keeps the
largest ``k``; re-encoding into a lossy encoding such as ``compact`` rounds the scores as writing
them the first time would).

The output is a folder ``NAME/`` with ``NAME-00001-of-0000N.rlm`` and ``NAME.index.json``: every
input shard is copied byte for byte where it can be (so nothing is re-encoded), renamed into the
new numbering, and the index is written by :func:`relabel_maps.shards.write_index`. A key stored in
several inputs is an error unless ``on_duplicate`` is ``"first"`` or ``"last"`` (keep the copy from
the first or the last input in the order given). A shard is rewritten through
:class:`relabel_maps.Writer` when it loses records, when its encoding or ``k`` differs (re-encoded),
or when its metadata must change (class names another input stores; the parts of a ``--shard`` /
multi-rank run say
``annotate.part: [i, n]``, and their merge says ``[0, 1]`` once all ``n`` parts are in it (else the
key is dropped and ``merge.parts`` lists the parts it holds)). Rewritten records are copied as stored
(:meth:`Writer.add_raw`) unless they must be re-encoded. An output ending in ``.rlm`` gives one file
instead, built the same way. Outputs appear atomically: while holding the output's writer lock
(:mod:`relabel_maps.lock`), shards are built in a hidden folder of this run's own
(``.NAME.merge-tmp.<random>`` next to the output) and published by
:func:`relabel_maps.publish.publish_shards` (the index last, an earlier dataset removed after it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import format as fmt
from .codecs import codec_from_metadata, get_codec
from .errors import InvalidArgumentError, WriterError
from .layout import dataset_location, index_path, local_dataset_files, lock_path, shard_files
from .lock import OutputLock
from .publish import publish_shards
from .reader import Reader
from .writer import Writer

__all__ = ["merge", "MergeResult", "ON_DUPLICATE", "COMPATIBLE_KEYS", "writer_settings"]

ON_DUPLICATE = ("error", "first", "last")
#: metadata that must agree between inputs (``class_names`` too, where both inputs store them)
COMPATIBLE_KEYS = ("num_classes", "score_kind", "class_set", "teacher")
_PART = "annotate.part"


@dataclasses.dataclass
class MergeResult:
    """Outcome of :func:`merge`; ``rewritten`` shards include the ``reencoded`` ones."""

    records: int
    shards: int
    duplicates: int
    rewritten: int
    paths: list[str]
    reencoded: int = 0


@dataclasses.dataclass
class _Plan:
    """The input shards, their keys and metadata, which shard keeps each key, and the output's settings."""

    paths: list[str]
    keys: list[list[str]]
    metas: list[dict[str, Any]]
    owner: dict[str, int]
    duplicates: int
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def kept(self, s: int) -> list[str]:
        """The keys shard ``s`` keeps, in its key order."""
        return [k for k in self.keys[s] if self.owner[k] == s]

    def recode(self, s: int) -> bool:
        """Whether shard ``s``'s records must be decoded and re-encoded (another encoding or ``k``)."""
        meta = self.metas[s]
        return (codec_from_metadata(meta["encoding"]).spec != self.settings["encoding"]
                or int(meta["k"]) != self.settings["k"])

    def rewrite(self, s: int) -> bool:
        """Whether shard ``s`` cannot be copied as it is."""
        meta, part = self.metas[s], self.settings["metadata"].get(_PART)
        return (len(self.kept(s)) != len(self.keys[s]) or self.recode(s)
                or (_PART in meta and meta[_PART] != part)
                or meta.get("class_names") != self.settings["class_names"])


def _input_shards(path: str | os.PathLike[str]) -> list[str]:
    return [local for name, local in local_dataset_files(path) if name.endswith(".rlm")]


def writer_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~relabel_maps.Writer` arguments that reproduce a dataset's structure and metadata
    (so its records can be copied into the new one without re-encoding)."""
    compression = meta.get("compression") or {}
    return {
        "num_classes": int(meta["num_classes"]),
        "k": int(meta["k"]),
        "score_kind": meta["score_kind"],
        "encoding": codec_from_metadata(meta["encoding"]).spec,  # every parameter spelled out
        "teacher": meta.get("teacher"),
        "class_set": meta.get("class_set"),
        "class_names": meta.get("class_names"),
        "metadata": {key: v for key, v in meta.items() if key == "extra" or ("." in key and key[0] != ".")},
        "level": int(compression.get("level", 19)),
        "dictionary": bool(compression.get("dictionary", False)),
    }


def merge(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    on_duplicate: str = "error",
    overwrite: bool = False,
    link: bool = False,
    encoding: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> MergeResult:
    """Merge ``inputs`` into ``output`` (a folder, or a single ``.rlm`` file); see the module doc.

    ``link=True`` hard-links unchanged shards instead of copying them (same file system only;
    falls back to a copy elsewhere). ``encoding`` is the output's (default: the first input's);
    inputs stored otherwise are re-encoded.
    """
    if on_duplicate not in ON_DUPLICATE:
        raise InvalidArgumentError(f"on_duplicate must be one of {ON_DUPLICATE}, got {on_duplicate!r}")
    if not inputs:
        raise InvalidArgumentError("merge needs at least one input")
    target_codec = None if encoding is None else get_codec(encoding).spec
    out = Path(output)
    single = out.suffix == ".rlm"
    if out.exists() and not overwrite and (single or any(not p.name.startswith(".") for p in out.iterdir())):
        raise WriterError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    plan = _plan(inputs, on_duplicate, target_codec)
    if single:
        return _merge_to_file(plan, out, overwrite, progress)
    return _merge_to_folder(plan, out, overwrite, link, progress)


def _plan(inputs: Sequence[str | os.PathLike[str]], on_duplicate: str, encoding: dict[str, Any] | None) -> _Plan:
    """Read every input shard's keys and metadata; check they agree; decide who keeps each key."""
    paths: list[str] = []
    seen: set[str] = set()
    for src in inputs:
        for p in _input_shards(src):
            if os.path.abspath(p) in seen:
                raise InvalidArgumentError(f"{p} is given twice")
            seen.add(os.path.abspath(p))
            paths.append(p)
    plan = _Plan(paths, [], [], {}, 0)
    for s, p in enumerate(paths):
        with Reader(p) as r:
            plan.metas.append(r.metadata)
            plan.keys.append(list(r))
        for key in plan.keys[-1]:
            if key in plan.owner:
                plan.duplicates += 1
                if on_duplicate == "last":
                    plan.owner[key] = s
            else:
                plan.owner[key] = s
    _check_compatible(paths, plan.metas)
    plan.settings = _output_settings(plan.metas, encoding)
    if plan.duplicates and on_duplicate == "error":
        example = next(k for s, ks in enumerate(plan.keys) for k in ks if plan.owner[k] != s)
        raise WriterError(
            f"{plan.duplicates} key(s) appear in more than one input (e.g. {example!r}); "
            "choose which copy to keep with on_duplicate='first' or 'last' (--on-duplicate)"
        )
    return plan


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _check_compatible(paths: list[str], metas: list[dict[str, Any]]) -> None:
    """Refuse inputs of different teachers or classes, naming the field and both values."""
    first = metas[0]
    names = next((m["class_names"] for m in metas if m.get("class_names")), None)
    for p, meta in zip(paths, metas, strict=True):
        for field in COMPATIBLE_KEYS:
            a, b = first.get(field), meta.get(field)
            if _dumps(a) != _dumps(b):
                raise InvalidArgumentError(
                    f"{p} and {paths[0]} differ in {field}: {_difference(a, b)}; label maps merge only when they come "
                    "from the same teacher over the same classes (their encoding and k may differ)"
                )
        if meta.get("class_names") and _dumps(meta["class_names"]) != _dumps(names):
            raise InvalidArgumentError(f"{p} stores other class_names than the inputs before it; the classes differ")


def _difference(a: Any, b: Any) -> str:
    """``a`` against ``b`` in a few words: the first differing entry of two mappings, else both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if _dumps(a.get(key)) != _dumps(b.get(key)):
                return f"{key} {a.get(key)!r} against {b.get(key)!r}"
    return f"{a!r} against {b!r}"


def _output_settings(metas: list[dict[str, Any]], encoding: dict[str, Any] | None) -> dict[str, Any]:
    """The output's writer settings: the first input's, with the largest ``k``, the given ``encoding``,
    the class names any input stores and the merged ``annotate.part``."""
    settings = writer_settings(metas[0])
    settings["k"] = max(int(m["k"]) for m in metas)
    if encoding is not None:
        settings["encoding"] = encoding
    settings["class_names"] = next((m["class_names"] for m in metas if m.get("class_names")), None)
    parts = sorted({tuple(m[_PART]) for m in metas if isinstance(m.get(_PART), list) and len(m[_PART]) == 2})
    extra = settings["metadata"]
    if len(parts) > 1:
        extra.pop(_PART, None)
        counts = {n for _, n in parts}
        if len(counts) == 1 and [i for i, _ in parts] == list(range(next(iter(counts)))):
            extra[_PART] = [0, 1]  # every part of the run: the whole
        else:
            extra["merge.parts"] = [list(p) for p in parts]
    return settings


def _copy_records(plan: _Plan, s: int, reader: Reader, writer: Writer, keys: Sequence[str]) -> None:
    """Add shard ``s``'s ``keys`` to ``writer``: as stored, or decoded and re-encoded when they must be."""
    recode = plan.recode(s)
    for key in keys:
        if recode:
            writer.add_map(key, reader[key])
        else:
            writer.add_raw(key, reader.read_record(key), dictionary=reader.dictionary)


def _merge_to_file(
    plan: _Plan, out: Path, overwrite: bool, progress: Callable[[int], None] | None
) -> MergeResult:
    records = 0
    with Writer(out, overwrite=overwrite, **plan.settings) as w:
        for s, p in enumerate(plan.paths):
            with Reader(p) as r:
                kept = plan.kept(s)
                _copy_records(plan, s, r, w, kept)
                records += len(kept)
            if progress is not None:
                progress(len(plan.keys[s]))
    reencoded = sum(plan.recode(s) for s in range(len(plan.paths)))
    return MergeResult(records, 1, plan.duplicates, len(plan.paths), [str(out)], reencoded)


def _place(src: str, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not supported
            pass
    shutil.copyfile(src, dst)


def _merge_to_folder(
    plan: _Plan, out: Path, overwrite: bool, link: bool, progress: Callable[[int], None] | None
) -> MergeResult:
    _, name = dataset_location(out, sharded=True)
    kept = [plan.kept(s) for s in range(len(plan.paths))]
    order = [s for s in range(len(plan.paths)) if kept[s]]
    total = len(order)
    if total == 0:
        raise InvalidArgumentError("the inputs hold no records")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(lock_path(out, name), out)
    tmp: Path | None = None
    rewritten = reencoded = 0
    try:
        if not overwrite and (index_path(out, name).exists() or shard_files(out, name)):
            raise WriterError(f"{out} holds dataset {name!r}; pass overwrite=True (--overwrite) to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.merge-tmp.", dir=out.parent))
        paths = []
        for i, s in enumerate(order, start=1):
            final = tmp / fmt.shard_name(name, i, total)
            if not plan.rewrite(s):
                _place(plan.paths[s], final, link)
            else:
                rewritten += 1
                reencoded += plan.recode(s)
                with Reader(plan.paths[s]) as r, Writer(final, **plan.settings) as w:
                    _copy_records(plan, s, r, w, kept[s])
            if progress is not None:
                progress(len(plan.keys[s]))
            paths.append(final)
        published = publish_shards(out, name, paths)
    except BaseException:
        lock.release()
        if created:  # nothing was published: the folder this call made goes too
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    lock.release()
    records = sum(len(kept[s]) for s in order)
    return MergeResult(records, total, plan.duplicates, rewritten, [str(p) for p in published], reencoded)
