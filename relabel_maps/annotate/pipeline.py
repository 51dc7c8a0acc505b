"""The annotation run: images → teacher → top-k per location → label-map dataset.

Stages overlap so the device never waits: DataLoader workers decode (:mod:`.batches`,
:mod:`.decode`), the main thread runs the device step (:mod:`.step`), and a background thread
writes records (:mod:`.sinks`).

Resume: the writer journals every flushed record; a re-run skips stored keys. Batches are cut
from the full, sorted key list in fixed windows, so a resumed run feeds the teacher the same
batches as an uninterrupted one. Multi-GPU: under ``torchrun`` each rank takes its own part of
the keys and writes its own output; the part that finishes last writes one index over all parts
(``relabel-maps merge`` can also join them into one file). ``--shard i/n`` splits the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InvalidArgumentError
from ..layout import combined_index_path, part_output_path
from ..writer import Writer
from .batches import TeacherInput, assemble, batch_loader, plan_batches
from .decode import DEFAULT_MAX_PIXELS
from .outputs import (
    check_finished,
    failures_path,
    finished_output,
    remove_finished,
    write_combined_index,
)
from .sinks import FailureLog, RecordSink, failed_keys
from .sources import ImageItem, list_images, shard_items
from .step import can_compile, get_step, resolve_precision, to_host
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


def dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the ``torchrun`` environment (``(0, 1, 0)`` otherwise)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise InvalidArgumentError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


def annotate(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    teacher: Teacher | str,
    *,
    k: int = 5,
    batch_size: int = 32,
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
    if batch_size < 1 or k < 1:
        raise InvalidArgumentError("batch_size and k must be positive")
    if progress is not None and not callable(progress):
        raise InvalidArgumentError("progress must be a callable (or None)")
    rank, world, local_rank = dist_info()
    shard_i, shard_n = shard
    parts, part = shard_n * world, shard_i * world + rank
    dev = _device(device, local_rank)
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
                  "annotate.part": [part, parts]},
        max_records=max_records,
    )
    if level is not None:
        writer_kwargs["level"] = level
    if overwrite:  # start over: drop partial files of earlier runs, then the finished output
        Writer(target, **writer_kwargs, resume=False, overwrite=True).abort()
        remove_finished(target, max_records)
    writer = Writer(target, **writer_kwargs, resume=True)

    plan = plan_batches(len(part_items), batch_size, lambda i: part_items[i].key in writer)
    skipped = len(part_items) - sum(len(b) for b in plan)
    report: Callable[..., None] = progress or _no_progress
    report(skipped, total=len(part_items), skipped=skipped)
    fail_log = FailureLog(fail_path)
    sink = RecordSink(writer, queue_size, report)
    is_cuda = dev.type == "cuda"
    step = get_step(teacher, k, prec, store_lse, channels_last if channels_last is not None else is_cuda,
                    compile and can_compile(dev))
    spec = TeacherInput(teacher.input_size, teacher.crop_mode, teacher.crop_pct, max_pixels)

    def fail(index: int, reason: str, detail: str) -> None:
        it = part_items[index]
        fail_log.add(it.key, it.path, reason, detail)
        report(1, failed=1)

    annotated = 0
    ok = False
    sink.start()
    try:
        if plan:
            loader = batch_loader(
                part_items, plan, spec, jpeg_passthrough=bool(gpu_decode if gpu_decode is not None else is_cuda),
                workers=_default_workers(is_cuda) if workers is None else max(0, int(workers)), pin_memory=is_cuda,
            )
            for batch in loader:
                keep, x = assemble(batch, spec, dev, fail)
                if x is None:
                    continue
                n = len(keep)
                if step.compiled and n < batch_size:  # keep one static shape: no recompilation
                    x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
                vals, idx, lse = step(x)
                result = (vals[:n], idx[:n], None if lse is None else lse[:n])
                sink.put(([part_items[i].key for i in keep], *to_host(result)))
                annotated += n
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
        annotated=annotated,
        skipped=skipped,
        failed=fail_log.count,
        seconds=time.perf_counter() - t0,
        bytes_written=sum(os.path.getsize(p) for p in outputs if p.endswith(".rlm")),
        records=len(writer),
        device=str(dev),
        precision=prec,
        failure_reasons=dict(fail_log.reasons),
        index=str(index) if index else None,
    )


def _no_progress(n: int, **counts: int) -> None:
    """The ``progress`` callable of a run nobody watches."""


def _device(device: str | None, local_rank: int) -> torch.device:
    """The run's device: ``device``, else this rank's GPU when there is one, else the CPU."""
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def _default_workers(is_cuda: bool) -> int:
    """Decode workers: the node's cores shared by the ranks on it (CUDA), few on a CPU-only run."""
    cpus = os.cpu_count() or 1
    if is_cuda:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(2, min(16, cpus // local_world))
    return 0 if cpus <= 2 else min(4, cpus // 2)
