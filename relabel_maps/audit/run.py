"""The audit run: stream over the label maps, choose the thresholds, flag, and write the outputs.

Two passes, neither of which holds per-image data in memory:

1. every record is read (in ``workers`` processes, ``chunk`` records at a time) and turned into
   :class:`~relabel_maps.audit.evidence.Evidence`, which is spilled to a temporary file while the
   statistics that choose the thresholds (:class:`~relabel_maps.audit.flags.DataStats`) accumulate;
2. the spill is read back batch by batch: flags, the table rows, the ReaL-style label sets, the
   per-class counts and confusion pairs, and the gallery's most suspicious images (a bounded heap).

Memory stays flat in the number of images (the label source's own ``key → label`` table aside, and
the ``(N, C)`` pooled probabilities when ``cleanlab=True``). Outputs in ``out``: the table
(``audit.parquet`` or ``.csv``), ``summary.json``, ``real_labels.json`` (``{key: [class, ...]}``) and
``report.html``. ``progress(n)`` is called as records are read.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import InvalidArgumentError
from ..frame import TeacherFrame
from ..opener import open as open_maps
from ..reader import LabelMaps
from .classes import ClassStats
from .compare import Comparison, compare_with_cleanlab
from .evidence import DEFAULT_TOP, Evidence, compute_evidence
from .flags import FLAG_NAMES, DataStats, Flags, Resolved, Thresholds, flag
from .gallery import GalleryHeap, GalleryItem, render_items
from .labels import NO_LABEL, UNKNOWN_LABEL, ClassResolver, DatasetLabels, TableLabels, load_labels, resolve_keys
from .report import write_report
from .table import TableWriter, table_format

__all__ = ["AuditResult", "audit", "DEFAULT_CHUNK"]

#: records per batch (and per task of a worker process)
DEFAULT_CHUNK = 512
_MAX_DEFAULT_WORKERS = 4


@dataclass
class AuditResult:
    """What an audit found and wrote."""

    summary: dict[str, Any]
    paths: dict[str, Path]
    gallery: list[GalleryItem]
    thresholds: Resolved
    comparison: Comparison | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class _EvidenceJob:
    """Reads the records of a range of positions and computes their evidence (picklable)."""

    def __init__(
        self, maps: LabelMaps, labels: DatasetLabels, resolver: ClassResolver, fill: str | None, top: int,
        keep_pooled: bool,
    ) -> None:  # fmt: skip
        self.maps, self.labels, self.resolver = maps, labels, resolver
        self.fill, self.top, self.keep_pooled = fill, top, keep_pooled

    def __call__(self, span: tuple[int, int]) -> Evidence:
        records = [self.maps.at(i) for i in range(*span)]
        keys = [key for key, _ in records]
        labels = resolve_keys(self.labels, self.resolver, keys)
        return compute_evidence(
            [m for _, m in records], labels, keys=keys, fill=self.fill, top=self.top, keep_pooled=self.keep_pooled
        )


_JOB: _EvidenceJob | None = None


def _init_worker(job: _EvidenceJob) -> None:
    global _JOB
    _JOB = job


def _run_worker(span: tuple[int, int]) -> Evidence:
    assert _JOB is not None
    return _JOB(span)


def _evidence_stream(job: _EvidenceJob, n: int, chunk: int, workers: int) -> Iterator[Evidence]:
    """Evidence of every record, in position order, batch by batch."""
    spans = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    if workers <= 1 or len(spans) < 2:
        for span in spans:
            yield job(span)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(job,)) as pool:
        todo = iter(spans)
        pending: deque[Future[Evidence]] = deque()
        for span in todo:
            pending.append(pool.submit(_run_worker, span))
            if len(pending) >= 2 * workers:
                break
        while pending:
            ev = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_run_worker, nxt))
            yield ev


def _spilled(fh: IO[bytes]) -> Iterator[Evidence]:
    fh.seek(0)
    while True:
        try:
            yield pickle.load(fh)
        except EOFError:
            return


_quote = json.encoder.encode_basestring  # a JSON string literal (C speed; non-ASCII kept as is)


class _RealLabelsWriter:
    """``{key: [class, ...]}`` as JSON, streamed, moved into place on close."""

    def __init__(self, path: Path) -> None:
        self.path, self._tmp = path, path.with_name(f".{path.name}.tmp")
        self._fh = open(self._tmp, "w", encoding="utf-8")
        self._fh.write("{")
        self._first = True

    def write(self, ev: Evidence, flags: Flags) -> None:
        if not len(ev):
            return
        sets = [[c for c, keep in zip(cs, ms, strict=True) if keep]
                for cs, ms in zip(ev.top_classes.tolist(), flags.real_mask.tolist(), strict=True)]  # fmt: skip
        body = ",\n".join(f"{_quote(key)}: {s}" for key, s in zip(ev.keys, sets, strict=True))
        self._fh.write(("\n" if self._first else ",\n") + body)
        self._first = False

    def close(self) -> Path:
        self._fh.write("\n}\n")
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._fh.close()
        if self._tmp.exists():
            self._tmp.unlink()


def _default_workers(n: int, chunk: int) -> int:
    return max(1, min(os.cpu_count() or 1, _MAX_DEFAULT_WORKERS, -(-n // chunk)))


def audit(
    maps: str | os.PathLike[str] | LabelMaps,
    labels: str | os.PathLike[str] | DatasetLabels,
    out: str | os.PathLike[str],
    *,
    table: str = "audit.parquet",
    report: bool = True,
    gallery: int = 200,
    thresholds: Thresholds | None = None,
    fill: str | None = None,
    top: int = DEFAULT_TOP,
    workers: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    cleanlab: bool = False,
    progress: Callable[[int], None] | None = None,
    name: str | None = None,
) -> AuditResult:
    """Audit a dataset's labels (``labels``: a path for :func:`load_labels`, or its result) against
    its label maps (``maps``: a path or an open dataset) and write the outputs to the folder ``out``.

    ``table``: the table's file name (``.parquet`` or ``.csv``); ``report``: write ``report.html``
    with the ``gallery`` most suspicious flagged images; ``thresholds``: overrides (``None`` fields
    are chosen from the data); ``fill``: the pooled label's fill mode (default: exact per-location
    probabilities, see :mod:`relabel_maps.audit.evidence`); ``top``: teacher classes per image;
    ``workers``: processes reading the maps (default: the CPU count, at most 4); ``cleanlab``:
    also run cleanlab's ``find_label_issues`` on the pooled probabilities and compare; ``name``: how
    the summary and the report name the maps (default: the path given, or the file's)."""
    if chunk < 1:
        raise InvalidArgumentError(f"chunk must be >= 1, got {chunk}")
    if gallery < 0:
        raise InvalidArgumentError(f"gallery must be >= 0, got {gallery}")
    table_format(table)
    thresholds = thresholds or Thresholds()
    own = not isinstance(maps, LabelMaps)
    dataset = open_maps(maps) if not isinstance(maps, LabelMaps) else maps
    shown = str(name or (maps if own else getattr(dataset, "name", "label maps")))
    try:
        return _audit(dataset, labels, Path(out), table, report, gallery, thresholds, fill, top, workers, chunk,
                      cleanlab, progress, shown)  # fmt: skip
    finally:
        if own:
            dataset.close()


def _audit(
    maps: LabelMaps, labels: str | os.PathLike[str] | DatasetLabels, out: Path, table: str, report: bool,
    gallery: int, thresholds: Thresholds, fill: str | None, top: int, workers: int | None, chunk: int,
    cleanlab: bool, progress: Callable[[int], None] | None, maps_name: str,
) -> AuditResult:  # fmt: skip
    meta = maps.metadata
    c = int(meta["num_classes"])
    resolver = ClassResolver.from_metadata(meta)
    source = load_labels(labels)
    for value in sorted(source.values()):  # resolve the known labels once, before any worker starts
        resolver.resolve(value)
    n = len(maps)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    # pass 1: evidence of every record, spilled; statistics for the thresholds
    t0 = time.perf_counter()
    stats = DataStats(c)
    job = _EvidenceJob(maps, source, resolver, fill, top, cleanlab)
    n_workers = workers if workers is not None else _default_workers(n, chunk)
    with tempfile.TemporaryFile(prefix="relabel-maps-audit-") as spill:
        for ev in _evidence_stream(job, n, chunk, n_workers):
            stats.update(ev)
            pickle.dump(ev, spill, protocol=pickle.HIGHEST_PROTOCOL)
            if progress is not None:
                progress(len(ev))
        resolved = Resolved.choose(thresholds, stats)
        seconds["evidence"] = time.perf_counter() - t0

        # pass 2: flags and outputs
        t0 = time.perf_counter()
        names = [resolver.name(i) for i in range(c)]
        writer = TableWriter(out / table, names)
        real = _RealLabelsWriter(out / "real_labels.json")
        classes = ClassStats(c)
        heap = GalleryHeap(gallery if report else 0)
        counts = Counter({name: 0 for name in ("images", "labelled", "unlabelled", *FLAG_NAMES, "flagged")})
        unknown: Counter[str] = Counter()
        fills: set[str] = set()
        kept: list[tuple[Evidence, Flags]] = []
        try:
            for ev in _spilled(spill):
                fl = flag(ev, resolved)
                given = [source.raw(key) for key in ev.keys]
                writer.write(ev, fl, given)
                real.write(ev, fl)
                classes.update(ev, fl)
                heap.offer(ev, fl, given, resolver.name)
                counts["images"] += len(ev)
                counts["labelled"] += int((ev.label >= 0).sum())
                counts["unlabelled"] += int((ev.label == NO_LABEL).sum())
                for name in FLAG_NAMES:
                    counts[name] += int(getattr(fl, name).sum())
                counts["flagged"] += int(fl.any().sum())
                for i in np.flatnonzero(ev.label == UNKNOWN_LABEL).tolist():
                    unknown[given[i] or ""] += 1
                fills.update(ev.fill)
                if cleanlab:
                    kept.append((ev, fl))
            paths = {"table": writer.close(), "real_labels": real.close()}
        except BaseException:
            writer.abort()
            real.abort()
            raise
    seconds["flags"] = time.perf_counter() - t0

    comparison = None
    if cleanlab and kept:
        all_ev = Evidence.concat([e for e, _ in kept])
        comparison = compare_with_cleanlab(all_ev, Flags.concat([f for _, f in kept]), resolved, resolver.name)

    problems = resolver.problems()
    summary: dict[str, Any] = {
        "source": {
            "maps": maps_name,
            "labels": source.description,
            "teacher": (meta.get("teacher") or {}).get("name"),
            "class_set": meta.get("class_set"),
            "num_classes": c,
        },
        "fill": sorted(fills),
        "counts": dict(counts),
        "thresholds": resolved.as_dict(),
        "classes": {
            **classes.totals(),
            "per_class": classes.per_class(resolver.name),
            "confusions": classes.confusions(resolver.name, limit=200),
        },
        "unknown_labels": [
            {"label": label, "images": count, "reason": problems.get(label, "")}
            for label, count in unknown.most_common()
        ],
        "missing_maps": _missing_maps(source),
        "cleanlab": comparison.as_dict() if comparison is not None else None,
    }
    items = heap.items()
    if report:
        t0 = time.perf_counter()
        render_items(items, maps, source.image_bytes, TeacherFrame.from_metadata(meta))
        paths["report"] = write_report(out / "report.html", summary, items)
        seconds["report"] = time.perf_counter() - t0
    summary["outputs"] = {name: str(path) for name, path in paths.items()}
    summary["outputs"]["summary"] = str(out / "summary.json")
    paths["summary"] = _write_json(out / "summary.json", summary)
    return AuditResult(summary, paths, items, resolved, comparison, seconds)


def _missing_maps(source: DatasetLabels, examples: int = 10) -> dict[str, Any]:
    """Labelled keys that matched no label map (label tables only; a folder's keys come from the maps)."""
    if not isinstance(source, TableLabels):
        return {"count": None, "examples": []}
    missing = source.unmatched()
    return {"count": len(missing), "examples": sorted(missing)[:examples]}


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _write_json(path: Path, obj: Any) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(_finite(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
