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
instead, built the same way. Outputs appear atomically: files are built in a hidden
folder next to the output and moved into place at the end, the index last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from . import format as fmt
from .errors import InvalidArgumentError, WriterError

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


def _input_shards(path: str | os.PathLike) -> list[str]:
    from .hub import local_dataset_files

    return [local for name, local in local_dataset_files(path) if name.endswith(".rlm")]


def _writer_settings(meta: dict[str, Any]) -> dict[str, Any]:
    compression = meta.get("compression") or {}
    return {
        "num_classes": int(meta["num_classes"]),
        "k": int(meta["k"]),
        "score_kind": meta["score_kind"],
        "encoding": meta["encoding"],
        "teacher": meta.get("teacher"),
        "class_set": meta.get("class_set"),
        "class_names": meta.get("class_names"),
        "metadata": {key: v for key, v in meta.items() if key == "extra" or ("." in key and key[0] != ".")},
        "level": int(compression.get("level", 19)),
        "dictionary": bool(compression.get("dictionary", False)),
    }


def merge(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
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
    from .reader import Reader

    if on_duplicate not in ON_DUPLICATE:
        raise InvalidArgumentError(f"on_duplicate must be one of {ON_DUPLICATE}, got {on_duplicate!r}")
    if not inputs:
        raise InvalidArgumentError("merge needs at least one input")
    out = Path(output)
    single = out.suffix == ".rlm"
    if out.exists() and not overwrite and (single or any(out.iterdir())):
        raise WriterError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")

    shard_paths: list[str] = []
    seen: set[str] = set()
    for src in inputs:
        for p in _input_shards(src):
            if os.path.abspath(p) in seen:
                raise InvalidArgumentError(f"{p} is given twice")
            seen.add(os.path.abspath(p))
            shard_paths.append(p)

    # keys and metadata of every shard; decide who keeps each duplicated key
    owner: dict[str, int] = {}
    metas: list[dict[str, Any]] = []
    keys: list[list[str]] = []
    duplicates = 0
    for s, p in enumerate(shard_paths):
        with Reader(p) as r:
            metas.append(r.metadata)
            keys.append(list(r))
        for key in keys[-1]:
            if key in owner:
                duplicates += 1
                if on_duplicate == "last":
                    owner[key] = s
            else:
                owner[key] = s
    first = metas[0]
    for p, meta in zip(shard_paths, metas):
        for field in COMPATIBLE_KEYS:
            if json.dumps(meta.get(field), sort_keys=True) != json.dumps(first.get(field), sort_keys=True):
                raise InvalidArgumentError(
                    f"{p} differs from {shard_paths[0]} in {field!r}; only datasets of the same label space merge"
                )
    if duplicates and on_duplicate == "error":
        example = next(k for s, ks in enumerate(keys) for k in ks if owner[k] != s)
        raise WriterError(
            f"{duplicates} key(s) appear in more than one input (e.g. {example!r}); "
            "choose which copy to keep with on_duplicate='first' or 'last' (--on-duplicate)"
        )

    if single:
        return _merge_to_file(shard_paths, keys, owner, metas[0], out, overwrite, duplicates, progress)
    return _merge_to_folder(shard_paths, keys, owner, metas, out, overwrite, duplicates, link, progress)


def _merge_to_file(shard_paths, keys, owner, meta, out: Path, overwrite: bool, duplicates: int, progress) -> MergeResult:
    from .reader import Reader
    from .writer import Writer

    records = 0
    with Writer(out, overwrite=overwrite, **_writer_settings(meta)) as w:
        for s, p in enumerate(shard_paths):
            with Reader(p) as r:
                for key in keys[s]:
                    if owner[key] == s:
                        w.add_raw(key, r.read_record(key), dictionary=r.dictionary)
                        records += 1
                    if progress is not None:
                        progress(1)
    return MergeResult(records, 1, duplicates, len(shard_paths), [str(out)])


def _place(src: str, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not supported
            pass
    shutil.copyfile(src, dst)


def _merge_to_folder(shard_paths, keys, owner, metas, out: Path, overwrite: bool, duplicates: int, link: bool, progress) -> MergeResult:
    from .reader import Reader
    from .shards import INDEX_SUFFIX, write_index
    from .writer import Writer

    name = out.name
    if not name:
        raise InvalidArgumentError(f"cannot derive a dataset name from {out!s}")
    kept = [[k for k in ks if owner[k] == s] for s, ks in enumerate(keys)]
    plan = [s for s in range(len(shard_paths)) if kept[s]]
    total = len(plan)
    if total == 0:
        raise InvalidArgumentError("the inputs hold no records")
    tmp = out.parent / f".{name}.merge-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    rewritten = 0
    try:
        paths = []
        for i, s in enumerate(plan, start=1):
            final = tmp / fmt.shard_name(name, i, total)
            if len(kept[s]) == len(keys[s]):
                _place(shard_paths[s], final, link)
            else:
                rewritten += 1
                with Reader(shard_paths[s]) as r, Writer(final, **_writer_settings(metas[s])) as w:
                    for key in kept[s]:
                        w.add_raw(key, r.read_record(key), dictionary=r.dictionary)
            if progress is not None:
                progress(len(keys[s]))
            paths.append(final)
        index_name = f"{name}{INDEX_SUFFIX}"
        write_index(paths, tmp / index_name)
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for old in out.iterdir():
                m = fmt.SHARD_NAME_RE.match(old.name)
                if (m and m.group("name") == name) or old.name == index_name:
                    old.unlink()
        moved = []
        for p in paths:
            os.replace(p, out / p.name)
            moved.append(str(out / p.name))
        os.replace(tmp / index_name, out / index_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    records = sum(len(kept[s]) for s in plan)
    return MergeResult(records, total, duplicates, rewritten, moved + [str(out / index_name)])
