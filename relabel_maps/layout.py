"""Which files make up a dataset on disk: their names, and the ``NAME.index.json`` that lists them.

A dataset ``NAME`` is one ``.rlm`` file, or shards ``NAME-00001-of-0000N.rlm`` plus
``NAME.index.json`` in a folder. A dataset published over an earlier one gets the next generation's
names, ``NAME-00001-of-0000N.g00002.rlm`` (spec/FORMAT.md §12.1), so that no file an index names ever
changes. While a :class:`relabel_maps.Writer` works it keeps hidden files beside them
(``.NAME-00003.rlm.partial``, ``.NAME-00003.rlm.journal``, ``.NAME-00003.rlm.done``) and holds the
lock file ``.NAME.lock``. Multi-part runs (one part per rank) write ``x.part00003of00008.rlm`` and
join the parts with one combined index. Nothing here opens a ``.rlm`` file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, TypeGuard

from . import format as fmt
from .errors import FormatError, InvalidArgumentError

__all__ = [
    "HF_SCHEME",
    "is_hub_url",
    "is_sharded",
    "INDEX_SUFFIX",
    "MAX_INDEX_JSON_BYTES",
    "SHARD_ENTRY_RE",
    "dataset_location",
    "index_path",
    "lock_path",
    "source_record_path",
    "temp_path",
    "shard_files",
    "parse_shard_name",
    "generation_shard_name",
    "next_generation",
    "working_file",
    "working_shard_count",
    "part_output_path",
    "combined_index_path",
    "folder_contents",
    "read_index_json",
    "local_dataset_files",
    "STRUCTURAL_KEYS",
    "shard_structure",
]

INDEX_SUFFIX = ".index.json"
MAX_INDEX_JSON_BYTES = 64 << 20
#: the largest shard ``bytes`` an index may list (a file size fits a signed 64-bit offset)
_MAX_SHARD_BYTES = (1 << 63) - 1
#: a shard file as listed in an index: a relative ``/``-separated path ending in ``.rlm``, without ``..``
SHARD_ENTRY_RE = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[^\\\x00]+\.rlm$")
_WORKING_SUFFIXES = (".partial", ".journal", ".done")
#: a shard file of any generation: ``NAME-IIIII-of-NNNNN.rlm`` (generation 1) or ``NAME-IIIII-of-NNNNN.gGGGGG.rlm``
_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<index>[0-9]{5,})-of-(?P<total>[0-9]{5,})(?:\.g(?P<gen>[0-9]{5,}))?\.rlm$")
#: a part of a multi-part run (:func:`part_output_path`): ``[x.]part00003of00008.rlm``, parts numbered from 0
_PART_RE = re.compile(r"^(?:(?P<name>.+)\.)?part(?P<index>[0-9]{5,})of(?P<total>[0-9]{5,})\.rlm$")


# ------------------------------------------------------------------------------------ names
#: the URL scheme of Hugging Face Hub paths (``hf://owner/repo[@rev][/path]``, ``hf://datasets/...``)
HF_SCHEME = "hf://"


def is_hub_url(path: object) -> TypeGuard[str]:
    """Whether ``path`` names something on the Hugging Face Hub (a ``hf://`` string) rather than a local path."""
    return isinstance(path, str) and path.startswith(HF_SCHEME)


def is_sharded(path: str | os.PathLike[str], *, max_records: int | None = None, max_bytes: int | None = None) -> bool:
    """Whether a writer at ``path`` writes shards + an index: any rollover limit, a path not ending in
    ``.rlm``, or an existing folder; otherwise it writes one ``.rlm`` file."""
    p = Path(path)
    return max_records is not None or max_bytes is not None or p.suffix != ".rlm" or p.is_dir()


def dataset_location(path: str | os.PathLike[str], *, sharded: bool) -> tuple[Path, str]:
    """``(folder, NAME)`` of the dataset written at ``path``.

    Sharded: a ``.rlm`` path that is not a folder gives ``(its parent, its stem)``, any other path
    ``(path, its name)``. A single file: ``(its parent, its file name)``.
    """
    p = Path(path)
    if not sharded:
        folder, name = p.parent, p.name
    elif p.suffix == ".rlm" and not p.is_dir():
        folder, name = p.parent, p.stem
    else:
        folder, name = p, p.name
    if not name:
        raise InvalidArgumentError(f"cannot derive a dataset name from {os.fspath(path)!r}")
    return folder, name


def index_path(folder: Path, name: str) -> Path:
    """The index of dataset ``name`` in ``folder``: ``folder/NAME.index.json``."""
    return folder / f"{name}{INDEX_SUFFIX}"


def lock_path(folder: Path, name: str) -> Path:
    """The writer lock file of dataset (or single file) ``name`` in ``folder``: ``.NAME.lock``."""
    return folder / f".{name}.lock"


def source_record_path(folder: Path, name: str) -> Path:
    """What a finished output of dataset (or single file) ``name`` read from a stream source covers
    (``relabel_maps.annotate.completion``): ``.NAME.source.json``."""
    return folder / f".{name}.source.json"


def temp_path(path: Path) -> Path:
    """A hidden temporary name for ``path``, unique to this process and call:
    ``.NAME.<pid>.<random>.tmp`` in the same folder (so renaming it over ``path`` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def parse_shard_name(file_name: str) -> tuple[str, int, int, int] | None:
    """``(NAME, index, total, generation)`` of a shard file name of any generation, else ``None``."""
    m = _SHARD_RE.match(file_name)
    if m is None:
        return None
    return m.group("name"), int(m.group("index")), int(m.group("total")), int(m.group("gen") or 1)


def generation_shard_name(name: str, index: int, total: int, generation: int) -> str:
    """Shard ``index`` (1-based) of ``total`` of generation ``generation``: generation 1 has the plain
    name ``NAME-00001-of-00003.rlm``, later ones ``NAME-00001-of-00003.g00002.rlm``."""
    plain = fmt.shard_name(name, index, total)
    return plain if generation == 1 else f"{plain[: -len('.rlm')]}.g{generation:05d}.rlm"


def shard_files(folder: Path, name: str) -> list[Path]:
    """The finished shard files of dataset ``name`` in ``folder``, every generation, sorted by
    generation, then shard number."""
    if not folder.is_dir():
        return []
    found = [(parsed, f) for f in folder.iterdir() if (parsed := parse_shard_name(f.name)) and parsed[0] == name]
    return [f for parsed, f in sorted(found, key=lambda t: (t[0][3], t[0][1], t[1].name))]


def next_generation(folder: Path, name: str) -> int:
    """The generation a new publication of dataset ``name`` takes: 1 when ``folder`` holds no shard of
    it, else one more than the newest there (so that no published name is ever reused)."""
    gens = [parsed[3] for f in shard_files(folder, name) if (parsed := parse_shard_name(f.name))]
    return max(gens) + 1 if gens else 1


def working_file(folder: Path, name: str, shard: int | None, suffix: str) -> Path:
    """Hidden working file of shard ``shard`` (1-based) of dataset ``name``, or of the single file
    ``name`` when ``shard`` is ``None``: ``.NAME-00003.rlm.SUFFIX`` or ``.NAME.SUFFIX``."""
    base = name if shard is None else f"{name}-{shard:05d}.rlm"
    return folder / f".{base}.{suffix}"


def working_shard_count(folder: Path, name: str) -> int:
    """The highest shard number among dataset ``name``'s hidden working files in ``folder`` (0: none)."""
    n = 0
    prefix = f".{name}-"
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.name.startswith(prefix) and p.name.endswith(_WORKING_SUFFIXES):
            digits = p.name[len(prefix) : len(prefix) + 5]
            if digits.isascii() and digits.isdigit():
                n = max(n, int(digits))
    return n


def part_output_path(out: str | os.PathLike[str], part: int, parts: int, max_records: int | None = None) -> Path:
    """Output of part ``part`` of ``parts``: ``OUT`` itself for one part, else a per-part name.

    ``x.rlm`` becomes ``x.part00003of00008.rlm``; a folder ``OUT`` gets ``OUT/part00003of00008.rlm``
    (or the shard folder ``OUT/part00003of00008/`` with ``max_records``). The names avoid the
    ``NAME-00001-of-00008.rlm`` shard pattern.
    """
    p = Path(out)
    if parts == 1:
        return p
    tag = _part_tag(part, parts)
    if p.suffix == ".rlm":
        return p.with_name(f"{p.stem}.{tag}.rlm")
    return p / tag if max_records is not None else p / f"{tag}.rlm"


def _part_tag(part: int, parts: int) -> str:
    return f"part{part:05d}of{parts:05d}"


def combined_index_path(out: str | os.PathLike[str]) -> Path:
    """Where the index joining every part of ``out`` goes: ``x.index.json`` or ``OUT/OUT.index.json``."""
    p = Path(out)
    return p.with_name(f"{p.stem}.index.json") if p.suffix == ".rlm" else p / f"{p.name}.index.json"


# ------------------------------------------------------------------------------------ index json
#: the metadata every shard of a dataset shares
STRUCTURAL_KEYS = ("num_classes", "k", "score_kind", "encoding")


def shard_structure(meta: dict[str, Any]) -> tuple[str, ...]:
    """The :data:`STRUCTURAL_KEYS` of a file's metadata, comparable between shards."""
    return tuple(json.dumps(meta.get(k), sort_keys=True) for k in STRUCTURAL_KEYS)


def read_index_json(data: bytes | str) -> dict[str, Any]:
    """Parse and validate the text of a ``NAME.index.json``."""
    if len(data) > MAX_INDEX_JSON_BYTES:
        raise FormatError("shard index JSON is too large")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"shard index is not valid JSON: {exc}") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("shards"), list) and isinstance(obj.get("metadata"), dict)):
        raise FormatError("shard index must be an object with 'shards' (list) and 'metadata' (object)")
    fmt.check_version_string(obj.get("format_version"), "shard index")
    total = obj.get("records")
    if total is not None and not _is_count(total, fmt.LIMITS.max_records * len(obj["shards"])):
        raise FormatError(f"shard index has a bad total record count {total!r:.40}")
    seen = set()
    for entry in obj["shards"]:
        if not isinstance(entry, dict):
            raise FormatError("each shard entry must be an object")
        f, n = entry.get("file"), entry.get("records")
        if not isinstance(f, str) or not SHARD_ENTRY_RE.match(f):
            raise FormatError(f"bad shard file name {f!r}: a relative path ending in .rlm without '..'")
        if f in seen:
            raise FormatError(f"shard {f!r} is listed twice")
        seen.add(f)
        if not _is_count(n, fmt.LIMITS.max_records):
            raise FormatError(f"shard {f!r} has a bad record count {n!r:.40}, not in [0, {fmt.LIMITS.max_records}]")
        size = entry.get("bytes")
        if size is not None and not _is_count(size, _MAX_SHARD_BYTES):
            raise FormatError(f"shard {f!r} has a bad size {size!r:.40}, not in [0, {_MAX_SHARD_BYTES}]")
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise FormatError(f"shard {f!r} has a bad sha256 {sha!r}")
        _check_range(f, n, entry.get("first_key"), entry.get("last_key"))
    fmt.check_metadata(obj["metadata"])
    return obj


def _is_count(value: Any, bound: int) -> TypeGuard[int]:
    """Whether ``value`` is an integer (not a bool) in ``[0, bound]``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= bound


def _check_range(file: str, records: int, first: Any, last: Any) -> None:
    """``first_key``/``last_key`` of an index entry: both or neither; none for an empty shard."""
    if first is None and last is None:
        return
    if records == 0:
        raise FormatError(f"shard {file!r} holds no records but lists a key range")
    for v in (first, last):
        if not isinstance(v, str):
            raise FormatError(f"shard {file!r}: first_key and last_key must both be strings, got {v!r}")
        try:
            n = len(v.encode("utf-8"))
        except UnicodeEncodeError:
            raise FormatError(f"shard {file!r}: key range {v!r} is not valid UTF-8") from None
        if n > fmt.LIMITS.max_key_bytes:
            raise FormatError(f"shard {file!r}: a key range bound is longer than {fmt.LIMITS.max_key_bytes} bytes")
    if first > last or (records == 1 and first != last):
        raise FormatError(
            f"shard {file!r}: first_key {first!r} and last_key {last!r} are not a range of {records} keys"
        )


# ------------------------------------------------------------------------------------ local files
def folder_contents(folder: str | os.PathLike[str]) -> tuple[Path | None, list[Path]]:
    """The dataset a folder holds: ``(index, [])`` for its single visible ``*.index.json``, else
    ``(None, files)`` with its visible ``.rlm`` files when they are unambiguous (spec §12.1): loose
    files (no shard or part names), or exactly one complete set of shards or parts and nothing else,
    in set order. :class:`FormatError` otherwise, naming the index that is missing."""
    entries = sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))
    indices = [p for p in entries if p.name.endswith(INDEX_SUFFIX)]
    if len(indices) > 1:
        raise FormatError(f"{folder} holds several datasets ({', '.join(p.name for p in indices)}); open one index")
    if indices:
        return indices[0], []
    files = [p for p in entries if p.suffix == ".rlm" and p.is_file()]
    if not files:
        raise FormatError(f"{folder} holds no .rlm files and no {INDEX_SUFFIX}")
    return None, _one_complete_set(Path(folder), files)


def _one_complete_set(folder: Path, files: list[Path]) -> list[Path]:
    """``files`` in order when they are loose files or one complete set of shards or parts (a
    dataset whose index is not written yet is neither)."""
    sets: dict[tuple[str, str, int, int], dict[int, Path]] = {}
    loose = []
    for f in files:
        shard = parse_shard_name(f.name)
        part = _PART_RE.match(f.name)
        if shard is not None:
            sets.setdefault(("shard", shard[0], shard[3], shard[2]), {})[shard[1]] = f
        elif part is not None:
            key = ("part", part.group("name") or folder.name, 1, int(part.group("total")))
            sets.setdefault(key, {})[int(part.group("index"))] = f
        else:
            loose.append(f)
    if not sets:
        return files
    kind, name, _, total = next(iter(sets))
    names = {n for _, n, _, _ in sets}
    index = f"{name}{INDEX_SUFFIX}" if len(names) == 1 else "index JSON"
    if len(sets) > 1 or loose:
        listed = sorted(names) + [f.name for f in loose]
        raise FormatError(
            f"{folder} has no {index} and its .rlm files are not one dataset ({', '.join(listed[:4])}"
            f"{', ...' if len(listed) > 4 else ''}: several datasets or generations, or one being published); "
            "open an index"
        )
    members = next(iter(sets.values()))
    first = 1 if kind == "shard" else 0
    wanted = range(first, first + total)
    missing = [i for i in wanted if i not in members]
    if missing or len(members) != total:
        what = f"{kind} {missing[0]} is missing" if missing else f"{kind} numbers beyond {total}"
        raise FormatError(
            f"{folder} has no {index} and holds {len(members)} of the {total} {kind}s of {name!r} "
            f"({what}): a dataset being published or copied; open {index} once it is written"
        )
    return [members[i] for i in sorted(members)]


def _index_shard_names(index_path: str) -> list[str]:
    """Shard files listed by a shard index JSON (relative to the index's folder)."""
    with open(index_path, "rb") as fh:
        return [e["file"] for e in read_index_json(fh.read())["shards"]]


def local_dataset_files(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The files that make up the dataset at ``path``: ``[(name relative to the dataset, local path)]``.

    ``path`` is one ``.rlm`` file, an index JSON (then the index comes first, followed by its
    shards in order), or a folder: its single index JSON, else its ``.rlm`` files (:func:`folder_contents`).
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
