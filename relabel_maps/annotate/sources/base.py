"""Stream sources: WebDataset tar shards and Parquet files, local or ``hf://``, read as samples.

A stream source is an ordered list of :class:`Unit`\\ s, the pieces a run is split by: one tar
shard, or one row group of a Parquet file. ``--shard i/n`` and ``torchrun`` ranks take contiguous,
near-equal runs of whole units (:func:`relabel_maps.annotate.sources.shard_items`), so every rank
reads its files sequentially. A unit yields :class:`RawSample`\\ s: a key (:mod:`relabel_maps.samplekeys`)
with the encoded image bytes, or with the reason it has none.

:class:`PartStream` turns a part's units into the sample stream the annotator batches, in source
order: the first sample of a key claims it and a later one is a ``duplicate-key`` failure (the
``seen`` set is rebuilt on every run, so a resumed run reports the same failures); samples an
earlier run stored are passed on as ``done`` markers (counted, never decoded), so the batches of
a resumed run are the fixed windows of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .folder import IMAGE_EXTENSIONS, matches

__all__ = ["IMAGE_SUFFIXES", "FileRef", "PartStream", "RawSample", "StreamSource", "Unit"]

#: WebDataset member suffixes taken as the sample's image (the first such member wins)
IMAGE_SUFFIXES = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class RawSample:
    """One sample of a stream source.

    ``key`` is ``None`` for a problem of the unit itself (an empty or unreadable shard). ``data``
    holds the encoded image; without it, ``reason``/``detail`` say why (``missing-image``,
    ``duplicate-key``, ...) unless ``done`` (an earlier run stored the key). ``path`` locates the
    sample in the source for the failure report (``train-0001.tar:n01/x.jpg``, ``x.parquet#row=12``).
    """

    key: str | None
    path: str
    data: bytes | None = None
    reason: str = ""
    detail: str = ""
    done: bool = False


@dataclass(frozen=True)
class FileRef:
    """A source file: ``url`` (a local path or an ``hf://`` URL pinned to a commit), ``name`` (its path
    relative to the source root, for messages) and ``size`` in bytes."""

    url: str
    name: str
    size: int


@dataclass(frozen=True)
class Unit:
    """A piece of a source: a tar shard (``row_group == -1``) or a Parquet row group, with its row
    count and first row in the file when known up front."""

    file: FileRef
    row_group: int = -1
    rows: int | None = None
    first_row: int = 0

    @property
    def name(self) -> str:
        return self.file.name if self.row_group < 0 else f"{self.file.name}#rowgroup={self.row_group}"


class StreamSource:
    """Base class of the tar and Parquet sources: ``units`` in source order, and :meth:`read`."""

    kind = ""

    def __init__(self, units: Sequence[Unit], description: dict[str, Any]) -> None:
        self.units = list(units)
        #: what outputs record about the source (``annotate.source``): kind, key rule, image column
        self.description = {"kind": self.kind, **description}

    def read(self, unit: Unit) -> Iterator[RawSample]:
        """The samples of ``unit`` in order."""
        raise NotImplementedError

    @staticmethod
    def fingerprint(units: Sequence[Unit]) -> str:
        """A digest of ``units`` (file names, sizes, row groups and their rows): equal for the same
        files, whatever machine or mirror (local copy or ``hf://``) they are read from."""
        listing = [[u.file.name, u.file.size, u.row_group, u.rows] for u in units]
        return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()

    def known_total(self, units: Sequence[Unit]) -> int | None:
        """The samples ``units`` hold when every unit's count is known up front, else ``None``."""
        counts = [u.rows for u in units]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


class PartStream:
    """The samples of a part's ``units`` in source order, ready to batch (see the module doc).

    ``is_done(key)``: an earlier run stored ``key``. ``globs`` keep only matching keys; ``limit``
    stops after that many keyed samples. ``samples`` counts the keyed samples passed on so far.
    """

    def __init__(
        self,
        source: StreamSource,
        units: Sequence[Unit],
        is_done: Callable[[str], bool],
        globs: Sequence[str] = (),
        limit: int | None = None,
    ) -> None:
        self.source, self.units, self.is_done = source, list(units), is_done
        self.globs, self.limit = tuple(globs), limit
        self.samples = 0

    def __iter__(self) -> Iterator[RawSample]:
        seen: set[str] = set()
        for unit in self.units:
            for s in self.source.read(unit):
                if s.key is None:
                    yield s
                    continue
                if self.globs and not matches(s.key, self.globs):
                    continue
                if self.limit is not None and self.samples >= self.limit:
                    return
                self.samples += 1
                if s.key in seen:
                    yield dataclasses.replace(s, data=None, reason="duplicate-key",
                                              detail="an earlier sample of the source has this key")
                    continue
                seen.add(s.key)
                if not s.reason and self.is_done(s.key):
                    yield dataclasses.replace(s, data=None, done=True)
                else:
                    yield s
