"""The annotation run: images → teacher → top-k per location → label-map dataset.

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
(``relabel-maps merge`` can also join them into one file). ``--shard i/n`` splits the same way.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InvalidArgumentError
from ..layout import combined_index_path, part_output_path
from ..writer import Writer
from .batches import TeacherInput, assemble, batch_loader, plan_batches, plan_loader, shm_free_bytes
from .decode import DEFAULT_MAX_PIXELS
from .device import ChunkedStep, default_batch_size, dist_info, select_device
from .outputs import (
    check_finished,
    failures_path,
    finished_output,
    remove_finished,
    write_combined_index,
)
from .sinks import FailureLog, RecordSink, failed_keys
from .sources import ImageItem, list_images, shard_items
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
    total: int  # images in this part of the source
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
) -> AnnotateSummary:
    """Annotate the images of ``source`` with ``teacher`` and write a label-map dataset to ``out``.

    Args:
        source: folder (walked recursively; keys are relative POSIX paths) or single image.
        out: ``x.rlm`` for one file, or a folder for shards (also when ``max_records`` is set).
        teacher: a :class:`Teacher`, or a preset / timm model name (loaded with ``checkpoint``,
            ``pretrained``).
        k: classes stored per location. ``store_lse``: store the log-sum-exp per location, which
            makes probabilities exact.
        shard: ``(i, n)``: annotate only the ``i``-th of ``n`` contiguous parts of the sorted keys;
            combined with ``torchrun`` ranks (each rank takes its own sub-part and output).
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
    cover the source is reported as complete.
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

    all_items = list(items) if items is not None else list_images(source, file_list=file_list, globs=globs)
    part_items = shard_items(all_items, part, parts)
    if limit is not None:
        part_items = part_items[: max(0, int(limit))]
    target = part_output_path(out, part, parts, max_records)
    fail_path = failures_path(target, failures, part, parts)

    t0 = time.perf_counter()
    finished = finished_output(target, max_records)
    if finished is not None and not overwrite:
        keys = [it.key for it in part_items]
        failed_before = failed_keys(fail_path)
        done = check_finished(finished, keys, failed_before)
        index = write_combined_index(out, parts, max_records)
        return AnnotateSummary(
            outputs=done.files, failures_path=str(fail_path), total=len(part_items), annotated=0,
            skipped=len(part_items) - len(failed_before.intersection(keys)), failed=0,
            seconds=time.perf_counter() - t0, bytes_written=done.nbytes, records=done.records, device=str(dev),
            precision=prec, index=str(index) if index else None,
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
                  "annotate.part": [part, parts]},
        max_records=max_records,
    )
    if level is not None:
        writer_kwargs["level"] = level
    if overwrite:  # start over: drop partial files of earlier runs, then the finished output
        Writer(target, **writer_kwargs, resume=False, overwrite=True).abort()
        remove_finished(target, max_records)
    writer = Writer(target, **writer_kwargs, resume=True)

    is_cuda = dev.type == "cuda"
    cl = channels_last if channels_last is not None else is_cuda
    step = get_step(teacher, k, prec, store_lse, cl, compile and can_compile(dev))
    retry = None if prec == "fp32" else get_step(teacher, k, "fp32", store_lse, cl, False)
    if batch_size is None:
        batch_size = default_batch_size(get_step(teacher, k, prec, store_lse, cl, False), teacher.input_size)
    plan = plan_batches(len(part_items), batch_size, lambda i: part_items[i].key in writer)
    skipped = len(part_items) - sum(len(b) for b in plan)
    report: Callable[..., None] = progress or _no_progress
    report(skipped, total=len(part_items), skipped=skipped)
    fail_log = FailureLog(fail_path)
    sink = RecordSink(writer, queue_size, report)
    spec = TeacherInput(teacher.input_size, teacher.crop_mode, teacher.crop_pct, max_pixels)

    def fail(index: int, reason: str, detail: str) -> None:
        it = part_items[index]
        fail_log.add(it.key, it.path, reason, detail)
        report(1, failed=1)

    run = _Run(ChunkedStep(step, batch_size), retry, sink, fail, [it.key for it in part_items])
    ok = False
    sink.start()
    try:
        if plan:
            frame_bytes = 3 * spec.size[0] * spec.size[1]
            loader = plan_loader(_default_workers(is_cuda) if workers is None else max(0, int(workers)),
                                 batch_size, frame_bytes, shm_free_bytes())
            if loader.note:
                warnings.warn(loader.note, RuntimeWarning, stacklevel=2)
            batches = batch_loader(
                part_items, plan, spec, jpeg_passthrough=bool(gpu_decode if gpu_decode is not None else is_cuda),
                loader=loader, pin_memory=is_cuda,
            )
            for batch in batches:
                keep, x = assemble(batch, spec, dev, fail)
                if x is not None:
                    run.add(keep, x)
            run.flush()
        sink.finish()
        outputs = writer.close()
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

    index = write_combined_index(out, parts, max_records)
    return AnnotateSummary(
        outputs=outputs,
        failures_path=str(fail_path),
        total=len(part_items),
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
    )


def _no_progress(n: int, **counts: int) -> None:
    """The ``progress`` callable of a run nobody watches."""


class _Run:
    """Batches from the device step to the writer, one batch behind on CUDA: a batch's results are
    checked once the next batch is queued, so the device stays busy while the host waits for them.

    Images whose maps hold a non-finite value are recomputed with the fp32 ``retry`` step; those
    still non-finite (or with no retry step) are reported through ``fail`` and never written."""

    def __init__(self, step: ChunkedStep, retry: TopKStep | None, sink: RecordSink,
                 fail: Callable[[int, str, str], None], keys: Sequence[str]) -> None:
        self.step, self.sink, self.fail, self.keys = step, sink, fail, keys
        self.retry = None if retry is None else ChunkedStep(retry, step.chunk)
        self.pending: tuple[list[int], torch.Tensor, StepOut, torch.cuda.Event | None] | None = None
        self.annotated = 0
        self.retried = 0

    def add(self, positions: list[int], x: torch.Tensor) -> None:
        """Queue a batch (item positions, ``(n, 3, H, W)`` frames) and finish the one before it."""
        host, event = to_host(self.step(x))
        self.flush()
        self.pending = positions, x, host, event
        if event is None:  # on the host already: nothing to overlap with
            self.flush()

    def flush(self) -> None:
        """Check the pending batch and hand it to the writer."""
        if self.pending is None:
            return
        positions, x, (vals, idx, lse, finite), event = self.pending
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
                self.fail(positions[row], "non-finite", "the teacher's logits hold NaN or infinity (also in fp32)")
            if bad:
                keep = sorted(set(range(len(positions))) - set(bad))
                positions = [positions[row] for row in keep]
                vals, idx, lse = vals[keep], idx[keep], None if lse is None else lse[keep]
        if positions:
            self.sink.put(([self.keys[p] for p in positions], (vals, idx, lse)))
            self.annotated += len(positions)


def _default_workers(is_cuda: bool) -> int:
    """Decode workers: the node's cores shared by the ranks on it (CUDA), few on a CPU-only run."""
    cpus = os.cpu_count() or 1
    if is_cuda:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(2, min(16, cpus // local_world))
    return 0 if cpus <= 2 else min(4, cpus // 2)
