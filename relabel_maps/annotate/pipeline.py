"""The annotation run: images → teacher → top-k per location → label-map dataset.

Sources (:mod:`.sources`): a folder tree or file list (keys: relative paths), or a stream source:
WebDataset tar shards or Parquet files, local or ``hf://`` (keys: :mod:`relabel_maps.samplekeys`),
split between parts by whole shards or row groups and read sequentially by a background thread;
workers only decode (:func:`.batches.stream_loader`).

Stages overlap so the device never waits: DataLoader workers decode (:mod:`.batches`,
:mod:`.decode`), the main thread runs the device step (:mod:`.step`), and a background thread
writes records (:mod:`.sinks`).

Precision: ``auto`` is the measured default of :mod:`.step` (IEEE fp32, TF32 off; fp16/bf16/tf32 are
faster and move the maps, see ``benchmarks/bench_precision.py``). Images whose maps hold a non-finite
value in a reduced precision are recomputed in fp32; an image still non-finite is reported as a
failure (reason ``non-finite``) and never written.
The file's metadata records what ran: ``annotate.precision``, ``annotate.tf32`` and
``annotate.fp32_retry``; the summary counts the images recomputed (``fp32_retries``).

Resume: the writer journals every flushed record; a re-run skips stored keys. Batches are cut
from the full, sorted key list in fixed windows, so a resumed run feeds the teacher the same
batches as an uninterrupted one. Multi-GPU: under ``torchrun`` each rank takes its own part of
the keys and writes its own output; the part that finishes last writes one index over all parts
(``relabel-maps merge`` can also join them into one file). ``--shard i/n`` splits the same way. A
stream source's duplicate keys are settled in source order: within a part as the samples come, and
across parts when the last part finishes (:mod:`.combine`), so the joined dataset equals one part's run.
A finished stream output records what it covers (:mod:`.completion`): re-running it with the same
files and options reports it complete without reading the source again.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidArgumentError
from ..layout import combined_index_path, part_output_path
from ..opener import open as open_maps
from ..writer import Writer
from .batches import (
    FailFn,
    TeacherInput,
    assemble,
    batch_loader,
    plan_batches,
    plan_loader,
    shm_free_bytes,
    stream_loader,
    windows,
)
from .combine import combine_parts
from .completion import completion_state, covers, forget, record
from .decode import DEFAULT_MAX_PIXELS
from .device import ChunkedStep, default_batch_size, dist_info, select_device
from .outputs import (
    FinishedOutput,
    check_finished,
    dataset_path,
    failures_path,
    finished_output,
    remove_finished,
    reopen_finished,
    write_combined_index,
)
from .sinks import FailureLog, RecordSink, failed_keys
from .sources import (
    ImageItem,
    PartStream,
    StreamSource,
    is_stream_source,
    list_images,
    open_stream_source,
    shard_items,
)
from .step import StepOut, TopKStep, can_compile, get_step, resolve_precision, to_host
from .teacher import Teacher, load_teacher

__all__ = [
    "AnnotateSummary",
    "annotate",
    "combined_index_path",
    "dist_info",
    "part_output_path",
    "plan_batches",
    "write_combined_index",
]


@dataclass
class AnnotateSummary:
    """What a run did."""

    outputs: list[str]
    failures_path: str
    total: int  # images in this part of the source (stream sources: the samples read)
    annotated: int  # written by this run
    skipped: int  # already stored (resume)
    failed: int
    seconds: float
    bytes_written: int  # size of the finished output files
    records: int  # records in the finished output
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 0  # images per forward pass at the start (0: nothing to annotate)
    fp32_retries: int = 0  # images recomputed in fp32 because their maps held a non-finite value
    failure_reasons: dict[str, int] = field(default_factory=dict)
    index: str | None = None  # the index joining all parts, once every part has finished
    dataset: str | None = None  # what to open: that index, else this part's own file (or its folder's index)
    part: tuple[int, int] = (0, 1)  # (part, parts) of a --shard / multi-rank run

    @property
    def images_per_second(self) -> float:
        return self.annotated / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_image(self) -> float:
        return self.bytes_written / self.records if self.records else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["images_per_second"] = round(self.images_per_second, 3)
        d["bytes_per_image"] = round(self.bytes_per_image, 1)
        return d


def annotate(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    teacher: Teacher | str,
    *,
    k: int = 5,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    compile: bool = False,
    channels_last: bool | None = None,
    encoding: str | None = None,
    level: int | None = None,
    store_lse: bool = True,
    max_records: int | None = None,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    globs: Sequence[str] = (),
    file_list: str | os.PathLike[str] | None = None,
    items: Sequence[ImageItem] | None = None,
    failures: str | os.PathLike[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    gpu_decode: bool | None = None,
    queue_size: int = 8,
    overwrite: bool = False,
    progress: Callable[..., None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    split: str | None = None,
    image_column: str | None = None,
    key_column: str | None = None,
    draft: bool = True,
) -> AnnotateSummary:
    """Annotate the images of ``source`` with ``teacher`` and write a label-map dataset to ``out``.

    Args:
        source: folder (walked recursively; keys are relative POSIX paths) or single image; or tar
            shards / Parquet files: a file, a folder of them, a brace pattern, a glob, or
            ``hf://datasets/owner/name[@rev][/path]`` (keys: :mod:`relabel_maps.samplekeys`).
        split: with a folder or repo of tar/Parquet files, the split to read (``datasets``' rules).
        image_column, key_column: Parquet: the image column (default ``image``) and the column (or
            ``column.field``) holding the keys (default: ``{file stem}/{row}``).
        draft: decode JPEGs much larger than the teacher input at a reduced scale (:mod:`.decode`);
            off whenever JPEGs are decoded on the device.
        out: ``x.rlm`` for one file, or a folder for shards (also when ``max_records`` is set).
        teacher: a :class:`Teacher`, or a preset / timm model name (loaded with ``checkpoint``,
            ``pretrained``).
        k: classes stored per location. ``store_lse``: store the log-sum-exp per location, which
            makes probabilities exact.
        shard: ``(i, n)``: annotate only the ``i``-th of ``n`` contiguous parts of the sorted keys (stream
            sources: of the shards / row groups); combined with ``torchrun`` ranks (each rank takes its
            own sub-part and output).
        batch_size: images per forward pass; default: measured from the free memory on CUDA (at most
            128), 32 elsewhere. On device out-of-memory the run continues with half as many.
        precision: ``"auto"`` (= ``"fp32"``: IEEE float32, no TF32), ``"tf32"``, ``"fp16"`` or
            ``"bf16"`` (autocast backbone, float32 head); faster, and they change the maps (:mod:`.step`).
        limit: only the first ``limit`` keys (after sharding).
        failures: JSON-lines failure report path (default: next to the output).
        max_pixels: images with more pixels are skipped as decompression bombs.
        gpu_decode: decode RGB/grayscale JPEGs in batches on ``device`` with torchvision (nvJPEG on
            CUDA; default: on for CUDA devices only) instead of with PIL in the workers.
        progress: called as images are done, as ``progress(n, total=None, skipped=0, failed=0)``:
            ``n`` more images of this part are finished, of which ``skipped`` were already stored
            and ``failed`` could not be annotated; ``total`` (first call only) is the part's image
            count. It may be called from the writer thread.

    Re-running the same call resumes: finished keys are skipped, and a finished output whose keys
    cover the source is reported as complete; one that lacks some (a trial run with ``limit``, new
    images) is extended with them.
    """
    if (batch_size is not None and batch_size < 1) or k < 1:
        raise InvalidArgumentError("batch_size and k must be positive")
    if progress is not None and not callable(progress):
        raise InvalidArgumentError("progress must be a callable (or None)")
    rank, world, local_rank = dist_info()
    shard_i, shard_n = shard
    parts, part = shard_n * world, shard_i * world + rank
    dev = select_device(device, local_rank)
    if isinstance(teacher, str):
        teacher = load_teacher(teacher, checkpoint=checkpoint, pretrained=pretrained, device=dev)
    else:
        teacher.model.to(dev)
    if k > teacher.num_classes:
        raise InvalidArgumentError(f"k={k} exceeds the teacher's {teacher.num_classes} classes")
    prec = resolve_precision(precision, dev.type)

    stream: StreamSource | None = None
    if items is None and is_stream_source(source):
        if file_list is not None:
            raise InvalidArgumentError("a file list selects images of a folder; use globs with tar or Parquet sources")
        stream = open_stream_source(source, split=split, image_column=image_column, key_column=key_column)
    elif split is not None or image_column is not None or key_column is not None:
        raise InvalidArgumentError("split, image_column and key_column apply to tar shards and Parquet files")
    part_items: list[ImageItem] = []
    plan: list[list[int]] = []
    if stream is None:
        all_items = list(items) if items is not None else list_images(source, file_list=file_list, globs=globs)
        part_items = shard_items(all_items, part, parts)
        if limit is not None:
            part_items = part_items[: max(0, int(limit))]
    else:
        part_units = shard_items(stream.units, part, parts)
        covered = completion_state(stream.fingerprint(part_units), limit, globs)
    target = part_output_path(out, part, parts, max_records)
    fail_path = failures_path(target, failures, part, parts)
    is_cuda = dev.type == "cuda"
    passthrough = bool(gpu_decode if gpu_decode is not None else is_cuda)

    t0 = time.perf_counter()
    finished = finished_output(target, max_records)
    if finished is not None and not overwrite:
        if stream is None:
            keys = [it.key for it in part_items]
            failed_before = failed_keys(fail_path)
            result = check_finished(finished, keys, failed_before)
            total, skipped = len(part_items), len(part_items) - len(failed_before.intersection(keys))
        else:  # complete when recorded so: reading the shards again would cost as much as the run
            result = _finished_files(finished) if covers(target, max_records, covered) else None
            total = skipped = result.records if result is not None else 0
        if result is not None:
            index = _combine(stream, out, parts, max_records, failures)
            return AnnotateSummary(
                outputs=result.files, failures_path=str(fail_path), total=total, annotated=0, skipped=skipped,
                failed=0, seconds=time.perf_counter() - t0, bytes_written=result.nbytes, records=result.records,
                device=str(dev), precision=prec, index=str(index) if index else None,
                dataset=dataset_path(target, max_records, index), part=(part, parts),
            )

    writer_kwargs: dict[str, Any] = dict(
        num_classes=teacher.num_classes,
        k=k,
        score_kind="logits",
        encoding=encoding,
        teacher=teacher.metadata(teacher.grid_size()),
        class_set=teacher.class_set,
        class_names=teacher.class_names,
        metadata={"annotate.store_lse": bool(store_lse), "annotate.precision": prec,
                  "annotate.tf32": prec == "tf32", "annotate.fp32_retry": prec != "fp32",
                  "annotate.part": [part, parts], "annotate.draft": bool(draft and not passthrough),
                  **({} if stream is None else {"annotate.source": stream.description})},
        max_records=max_records,
    )
    if level is not None:
        writer_kwargs["level"] = level
    lock = None
    if overwrite:  # start over: drop partial files of earlier runs, then the finished output
        lock = Writer(target, **writer_kwargs, resume=False, overwrite=True).abort(keep_lock=True)
        try:
            remove_finished(target, max_records)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
    if finished is not None and not overwrite:  # keys are missing: extend the finished output
        writer = reopen_finished(target, finished, writer_kwargs)
    else:  # the lock held since the start-over: no other job can take the output in between
        writer = Writer(target, **writer_kwargs, resume=True, lock=lock)

    cl = channels_last if channels_last is not None else is_cuda
    step = get_step(teacher, k, prec, store_lse, cl, compile and can_compile(dev))
    retry = None if prec == "fp32" else get_step(teacher, k, "fp32", store_lse, cl, False)
    if batch_size is None:
        batch_size = default_batch_size(get_step(teacher, k, prec, store_lse, cl, False), teacher.input_size)
    report: Callable[..., None] = progress or _no_progress
    if stream is None:
        plan = plan_batches(len(part_items), batch_size, lambda i: part_items[i].key in writer)
        skipped = len(part_items) - sum(len(b) for b in plan)
        report(skipped, total=len(part_items), skipped=skipped)
    else:
        samples = PartStream(stream, part_units, set(writer).__contains__, globs, limit)
        skipped = 0
        report(0, total=None if globs or limit is not None else stream.known_total(part_units))
    fail_log = FailureLog(fail_path)
    sink = RecordSink(writer, queue_size, report)
    spec = TeacherInput(teacher.input_size, teacher.crop_mode, teacher.crop_pct, max_pixels,
                        draft=bool(draft and not passthrough))

    def fail(key: str | None, path: str, reason: str, detail: str) -> None:
        fail_log.add(key, path, reason, detail)  # type: ignore[arg-type]  # key None: a whole unit failed
        report(1, failed=1)

    run = _Run(ChunkedStep(step, batch_size), retry, sink, fail)
    ok = False
    sink.start()
    try:
        if stream is not None or plan:
            frame_bytes = 3 * spec.size[0] * spec.size[1]
            loader = plan_loader(_default_workers(is_cuda) if workers is None else max(0, int(workers)),
                                 batch_size, frame_bytes, shm_free_bytes())
            if loader.note:
                warnings.warn(loader.note, RuntimeWarning, stacklevel=2)
            if stream is None:
                batches = batch_loader(part_items, plan, spec, jpeg_passthrough=passthrough, loader=loader,
                                       pin_memory=is_cuda)
            else:
                batches = stream_loader(windows(samples, batch_size), spec, jpeg_passthrough=passthrough,
                                        loader=loader, pin_memory=is_cuda)
            for batch in batches:
                if batch["skipped"]:
                    skipped += batch["skipped"]
                    report(batch["skipped"], skipped=batch["skipped"])
                keep, x = assemble(batch, spec, dev, fail)
                if x is not None:
                    paths = dict(zip(batch["key"], batch["path"], strict=True))
                    run.add(keep, [paths[key] for key in keep], x)
            run.flush()
        sink.finish()
        if stream is not None:
            forget(target, max_records)
        outputs = writer.close()
        if stream is not None:
            record(target, max_records, covered)
        ok = True
    finally:
        if not ok:
            if sink.is_alive():
                try:
                    sink.finish()
                except Exception:  # noqa: BLE001 - the original error wins
                    pass
            writer.abort()
        fail_log.close()

    index = _combine(stream, out, parts, max_records, failures)
    return AnnotateSummary(
        outputs=outputs,
        failures_path=str(fail_path),
        total=len(part_items) if stream is None else samples.samples,
        annotated=run.annotated,
        skipped=skipped,
        failed=fail_log.count,
        seconds=time.perf_counter() - t0,
        bytes_written=sum(os.path.getsize(p) for p in outputs if p.endswith(".rlm")),
        records=len(writer),
        device=str(dev),
        precision=prec,
        batch_size=batch_size,
        fp32_retries=run.retried,
        failure_reasons=dict(fail_log.reasons),
        index=str(index) if index else None,
        dataset=dataset_path(target, max_records, index),
        part=(part, parts),
    )


def _no_progress(n: int, **counts: int) -> None:
    """The ``progress`` callable of a run nobody watches."""


class _Run:
    """Batches from the device step to the writer, one batch behind on CUDA: a batch's results are
    checked once the next batch is queued, so the device stays busy while the host waits for them.

    Images whose maps hold a non-finite value are recomputed with the fp32 ``retry`` step; those
    still non-finite (or with no retry step) are reported through ``fail`` and never written."""

    def __init__(self, step: ChunkedStep, retry: TopKStep | None, sink: RecordSink, fail: FailFn) -> None:
        self.step, self.sink, self.fail = step, sink, fail
        self.retry = None if retry is None else ChunkedStep(retry, step.chunk)
        self.pending: tuple[list[str], list[str], torch.Tensor, StepOut, torch.cuda.Event | None] | None = None
        self.annotated = 0
        self.retried = 0

    def add(self, keys: list[str], paths: list[str], x: torch.Tensor) -> None:
        """Queue a batch (keys, their source paths, ``(n, 3, H, W)`` frames) and finish the one before it."""
        host, event = to_host(self.step(x))
        self.flush()
        self.pending = keys, paths, x, host, event
        if event is None:  # on the host already: nothing to overlap with
            self.flush()

    def flush(self) -> None:
        """Check the pending batch and hand it to the writer."""
        if self.pending is None:
            return
        keys, paths, x, (vals, idx, lse, finite), event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        bad = [row for row, ok in enumerate(finite.tolist()) if not ok]
        with torch.inference_mode():  # the step's CPU outputs are inference tensors
            if bad and self.retry is not None:
                self.retried += len(bad)
                r_vals, r_idx, r_lse, r_finite = self.retry(x[torch.tensor(bad, device=x.device)])
                vals[bad], idx[bad] = r_vals.cpu(), r_idx.cpu()
                if lse is not None and r_lse is not None:
                    lse[bad] = r_lse.cpu()
                bad = [row for row, ok in zip(bad, r_finite.tolist(), strict=True) if not ok]
            for row in bad:
                self.fail(keys[row], paths[row], "non-finite", "the teacher's logits hold NaN or infinity (even fp32)")
            if bad:
                keep = sorted(set(range(len(keys))) - set(bad))
                keys = [keys[row] for row in keep]
                vals, idx, lse = vals[keep], idx[keep], None if lse is None else lse[keep]
        if keys:
            self.sink.put((keys, (vals, idx, lse)))
            self.annotated += len(keys)


def _finished_files(finished: Path) -> FinishedOutput:
    """The files, size and record count of the finished dataset at ``finished``."""
    with open_maps(finished) as maps:
        records = len(maps)
    files = sorted(str(p) for p in (finished.glob("*.rlm") if finished.is_dir() else [finished]))
    return FinishedOutput(files, sum(os.path.getsize(p) for p in files), records)


def _combine(stream: StreamSource | None, out: str | os.PathLike[str], parts: int, max_records: int | None,
             failures: str | os.PathLike[str] | None) -> Any:
    """The index over all parts once they are finished (stream sources: duplicate keys settled first)."""
    if stream is None:
        return write_combined_index(out, parts, max_records)
    return combine_parts(out, parts, max_records, failures)


def _default_workers(is_cuda: bool) -> int:
    """Decode workers: the node's cores shared by the ranks on it (CUDA), few on a CPU-only run."""
    cpus = os.cpu_count() or 1
    if is_cuda:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(2, min(16, cpus // local_world))
    return 0 if cpus <= 2 else min(4, cpus // 2)
