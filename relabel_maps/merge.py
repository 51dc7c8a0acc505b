"""Merge label-map datasets (shards written by several ranks or runs) into one dataset.

Inputs are ``.rlm`` files, folders of shards or index JSONs. They must describe the same label
space: equal ``num_classes``, ``k``, ``score_kind``, ``encoding``, ``class_set`` and ``teacher``.

The output is a folder ``NAME/`` with ``NAME-00001-of-0000N.rlm`` and ``NAME.index.json``: every
input shard is copied byte for byte (so nothing is re-encoded), renamed into the new numbering, and
the index is written by :func:`relabel_maps.shards.write_index`. A key stored in several inputs is
an error unless ``on_duplicate`` is ``"first"`` or ``"last"`` (keep the copy from the first or the
last input in the order given); a shard that loses records is rewritten through
:class:`relabel_maps.Writer` with the shard's own settings, copying the kept records' bytes
(:meth:`Writer.add_raw`, never decoded and re-encoded). An output ending in ``.rlm`` gives one file
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
from .codecs import codec_from_metadata
from .errors import InvalidArgumentError, WriterError
from .layout import dataset_location, index_path, local_dataset_files, lock_path, shard_files
from .lock import OutputLock
from .publish import publish_shards
from .reader import Reader
from .writer import Writer

__all__ = ["merge", "MergeResult", "ON_DUPLICATE", "COMPATIBLE_KEYS"]

ON_DUPLICATE = ("error", "first", "last")
#: metadata that must agree between inputs
COMPATIBLE_KEYS = ("num_classes", "k", "score_kind", "encoding", "class_set", "teacher")


@dataclasses.dataclass
class MergeResult:
    """Outcome of :func:`merge`."""

    records: int
    shards: int
    duplicates: int
    rewritten: int
    paths: list[str]


@dataclasses.dataclass
class _Plan:
    """The input shards, their keys and metadata, and which shard keeps each key."""

    paths: list[str]
    keys: list[list[str]]
    metas: list[dict[str, Any]]
    owner: dict[str, int]
    duplicates: int

    def kept(self, s: int) -> list[str]:
        """The keys shard ``s`` keeps, in its key order."""
        return [k for k in self.keys[s] if self.owner[k] == s]


def _input_shards(path: str | os.PathLike[str]) -> list[str]:
    return [local for name, local in local_dataset_files(path) if name.endswith(".rlm")]


def _writer_settings(meta: dict[str, Any]) -> dict[str, Any]:
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
    progress: Callable[[int], None] | None = None,
) -> MergeResult:
    """Merge ``inputs`` into ``output`` (a folder, or a single ``.rlm`` file); see the module doc.

    ``link=True`` hard-links unchanged shards instead of copying them (same file system only;
    falls back to a copy elsewhere).
    """
    if on_duplicate not in ON_DUPLICATE:
        raise InvalidArgumentError(f"on_duplicate must be one of {ON_DUPLICATE}, got {on_duplicate!r}")
    if not inputs:
        raise InvalidArgumentError("merge needs at least one input")
    out = Path(output)
    single = out.suffix == ".rlm"
    if out.exists() and not overwrite and (single or any(not p.name.startswith(".") for p in out.iterdir())):
        raise WriterError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    plan = _plan(inputs, on_duplicate)
    if single:
        return _merge_to_file(plan, out, overwrite, progress)
    return _merge_to_folder(plan, out, overwrite, link, progress)


def _plan(inputs: Sequence[str | os.PathLike[str]], on_duplicate: str) -> _Plan:
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
    first = plan.metas[0]
    for p, meta in zip(paths, plan.metas, strict=True):
        for field in COMPATIBLE_KEYS:
            if json.dumps(meta.get(field), sort_keys=True) != json.dumps(first.get(field), sort_keys=True):
                raise InvalidArgumentError(
                    f"{p} differs from {paths[0]} in {field!r}; only datasets of the same label space merge"
                )
    if plan.duplicates and on_duplicate == "error":
        example = next(k for s, ks in enumerate(plan.keys) for k in ks if plan.owner[k] != s)
        raise WriterError(
            f"{plan.duplicates} key(s) appear in more than one input (e.g. {example!r}); "
            "choose which copy to keep with on_duplicate='first' or 'last' (--on-duplicate)"
        )
    return plan


def _merge_to_file(
    plan: _Plan, out: Path, overwrite: bool, progress: Callable[[int], None] | None
) -> MergeResult:
    records = 0
    with Writer(out, overwrite=overwrite, **_writer_settings(plan.metas[0])) as w:
        for s, p in enumerate(plan.paths):
            with Reader(p) as r:
                for key in plan.keys[s]:
                    if plan.owner[key] == s:
                        w.add_raw(key, r.read_record(key), dictionary=r.dictionary)
                        records += 1
                    if progress is not None:
                        progress(1)
    return MergeResult(records, 1, plan.duplicates, len(plan.paths), [str(out)])


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
    rewritten = 0
    try:
        if not overwrite and (index_path(out, name).exists() or shard_files(out, name)):
            raise WriterError(f"{out} holds dataset {name!r}; pass overwrite=True (--overwrite) to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.merge-tmp.", dir=out.parent))
        paths = []
        for i, s in enumerate(order, start=1):
            final = tmp / fmt.shard_name(name, i, total)
            if len(kept[s]) == len(plan.keys[s]):
                _place(plan.paths[s], final, link)
            else:
                rewritten += 1
                with Reader(plan.paths[s]) as r, Writer(final, **_writer_settings(plan.metas[s])) as w:
                    for key in kept[s]:
                        w.add_raw(key, r.read_record(key), dictionary=r.dictionary)
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
    return MergeResult(records, total, plan.duplicates, rewritten, [str(p) for p in published])
