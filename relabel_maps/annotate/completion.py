"""What a finished output of a stream source covers, so that re-running a finished part does not
read its tar shards or Parquet files again.

A folder source lists its keys for free and compares them with the output; a stream source would
have to read every shard to learn its keys. Instead, a part that finishes records next to its
output (``.NAME.source.json``, a hidden working file) the fingerprint of its units (names, sizes,
row groups) and the ``limit`` and globs it ran with. A re-run that finds the same record reports
the output as complete; any other (a trial run with ``limit``, other files) reads the source and
extends the output, skipping the keys it holds. The record is not part of the output's metadata,
which a resumed or extended run must repeat exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..layout import dataset_location, is_sharded, source_record_path, temp_path

__all__ = ["completion_state", "covers", "forget", "record"]


def completion_state(fingerprint: str, limit: int | None, globs: Sequence[str]) -> dict[str, Any]:
    """What a run over a part covers: its units' fingerprint, its ``limit`` and its globs."""
    return {"fingerprint": fingerprint, "limit": limit, "globs": sorted(globs)}


def _path(target: Path, max_records: int | None) -> Path:
    return source_record_path(*dataset_location(target, sharded=is_sharded(target, max_records=max_records)))


def record(target: Path, max_records: int | None, state: dict[str, Any]) -> None:
    """Record (atomically) that the finished output at ``target`` covers ``state``."""
    path = _path(target, max_records)
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(state, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def covers(target: Path, max_records: int | None, state: dict[str, Any]) -> bool:
    """Whether the finished output at ``target`` was recorded as covering ``state``: the same state, or
    the whole of the same units (no ``limit``, no globs), which covers any part of them."""
    try:
        stored = json.loads(_path(target, max_records).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("fingerprint") != state["fingerprint"]:
        return False
    whole = stored.get("limit") is None and not stored.get("globs")
    return whole or bool(stored == json.loads(json.dumps(state, sort_keys=True)))


def forget(target: Path, max_records: int | None) -> None:
    """Drop the record (the output is about to be replaced or extended)."""
    _path(target, max_records).unlink(missing_ok=True)
