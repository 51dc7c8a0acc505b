"""WebDataset tar shards as a stream source: one unit per shard, read with WebDataset's own tar
iteration and grouping (``webdataset.tariterators``), so ``__key__`` is exactly what a WebDataset
training pipeline sees.

A sample's image is its first member whose extension (after the key's first ``.``, lower-cased, as
WebDataset names sample fields) is an image type (``jpg``, ``jpeg``, ``png``, ``webp``, ...); other
members (``cls``, ``json``, ...) are ignored. Reported, never raised: a sample without an image
(``missing-image``), an empty shard (``empty-shard``), a shard that stops parsing mid-way
(``corrupt-shard``: the samples before the damage are kept) and a member name repeated within a
sample (``duplicate-member``).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

from ...errors import require
from .base import IMAGE_SUFFIXES, FileRef, RawSample, StreamSource, Unit
from .files import is_transport_error, open_file, resilient

__all__ = ["TarSource"]

_META = ("__key__", "__url__", "__local_path__")


class TarSource(StreamSource):
    """Tar shards ``files`` (local or ``hf://``), one unit each, in the order given."""

    kind = "tar"

    def __init__(self, files: Sequence[FileRef]) -> None:
        require("webdataset", "sources")
        super().__init__([Unit(f) for f in files], {"key": "__key__"})

    def read(self, unit: Unit) -> Iterator[RawSample]:
        return resilient(unit.file.url, lambda: self._samples(unit))

    def _samples(self, unit: Unit) -> Iterator[RawSample]:
        wds = require("webdataset.tariterators", "sources")
        problems: list[Exception] = []

        def handler(exc: Exception) -> bool:
            if is_transport_error(exc, unit.file.url):
                raise exc  # the connection failed, not the shard: resilient() reopens it
            problems.append(exc)
            return True

        count = 0
        with open_file(unit.file.url) as stream:
            members = wds.tar_file_expander([{"url": unit.name, "stream": stream}], handler=handler, eof_value={})
            for sample in wds.group_by_keys(members, handler=handler):
                count += 1
                yield _image_sample(sample, unit.name)
        reported: set[str] = set()
        for problem in (_shard_problem(exc, unit.name, count) for exc in problems):
            if problem.detail not in reported:  # a cut stream may raise twice (member, then next header)
                reported.add(problem.detail)
                yield problem
        if not problems and count == 0:
            yield RawSample(None, unit.name, reason="empty-shard", detail="the shard holds no samples")


def _image_sample(sample: dict[str, Any], shard: str) -> RawSample:
    key = str(sample["__key__"])
    fields = [name for name in sample if name not in _META]
    for name in fields:
        if name in IMAGE_SUFFIXES:
            return RawSample(key, f"{shard}:{key}.{name}", bytes(sample[name]))
    listed = ", ".join(fields) or "none"
    return RawSample(key, f"{shard}:{key}", reason="missing-image", detail=f"no image member (members: {listed})")


def _shard_problem(first: Exception, shard: str, samples: int) -> RawSample:
    text = str(first.args[0]) if first.args else type(first).__name__
    if isinstance(first, ValueError) and "duplicate file name" in text:
        return RawSample(None, shard, reason="duplicate-member", detail=text.split(" @ ")[0])
    if isinstance(first, tarfile.ReadError) and "empty file" in text and samples == 0:
        return RawSample(None, shard, reason="empty-shard", detail="the file is empty")
    kept = f"; the {samples} samples before it were read" if samples else ""
    detail = f"{type(first).__name__}: {text.split(' @ ')[0]}{kept}"
    return RawSample(None, shard, reason="corrupt-shard", detail=detail)
