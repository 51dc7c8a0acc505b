"""The annotation pipeline: images → teacher → top-k per location → label-map dataset.

Stages overlap so the device never waits:

* DataLoader workers read files, decode and resize them (PIL, every format); on CUDA, RGB and
  grayscale JPEGs pass through as bytes instead and are decoded in batches by nvJPEG and resized
  on the GPU.
* The main thread normalises on the device, runs the teacher (bf16 autocast +
  channels_last + optional ``torch.compile`` on CUDA; float32 on CPU), takes top-k and the
  log-sum-exp on the device and copies only those back (pinned memory, non-blocking).
* A background thread encodes, compresses and writes records with :class:`relabel_maps.Writer`
  and flushes after every batch, through a bounded queue (back-pressure instead of unbounded memory).

Resume: the writer journals every flushed record; a re-run skips stored keys. Batches are cut
from the full, sorted key list in fixed windows, so a resumed run feeds the teacher the same
batches as an uninterrupted one. Multi-GPU: under ``torchrun`` each rank takes its own part of
the keys and writes its own output; the part that finishes last writes one index over all parts
(``relabel-maps merge`` can also join them into one file). ``--shard i/n`` splits the same way.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InvalidArgumentError, WriterError, require
from .decode import DEFAULT_MAX_PIXELS, DecodedItem, decode_jpegs, load_item, load_rgb, resize_image
from .sources import ImageItem, list_images, shard_items
from .teachers import Teacher, load_teacher

__all__ = [
    "AnnotateSummary",
    "annotate",
    "combined_index_path",
    "dist_info",
    "part_output_path",
    "plan_batches",
    "write_combined_index",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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


# ---------------------------------------------------------------------- planning
def dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the ``torchrun`` environment (``(0, 1, 0)`` otherwise)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise InvalidArgumentError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


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


def _dataset_name(target: Path) -> tuple[Path, str]:
    """``(folder, NAME)`` of a sharded output at ``target``, as :class:`relabel_maps.Writer` derives them."""
    return (target.parent, target.stem) if target.suffix == ".rlm" and not target.is_dir() else (target, target.name)


def _shard_files(folder: Path, name: str) -> list[Path]:
    """The finished shard files ``NAME-0000i-of-0000n.rlm`` of dataset ``name`` in ``folder``, sorted."""
    from ..format import SHARD_NAME_RE

    return sorted(f for f in folder.iterdir() if (m := SHARD_NAME_RE.match(f.name)) and m.group("name") == name)


def combined_index_path(out: str | os.PathLike[str]) -> Path:
    """Where the index joining every part of ``out`` goes: ``x.index.json`` or ``OUT/OUT.index.json``."""
    p = Path(out)
    return p.with_name(f"{p.stem}.index.json") if p.suffix == ".rlm" else p / f"{p.name}.index.json"


def write_combined_index(out: str | os.PathLike[str], parts: int, max_records: int | None = None) -> Path | None:
    """Once every part of a multi-part run has finished, write one index over all their files.

    Safe to call from every rank: it does nothing until all parts are finished, and the index is
    written atomically with the same content by whichever part finishes last. Parts hold
    contiguous ranges of the sorted keys, so the joined dataset keeps the global key order.
    """
    if parts <= 1:
        return None
    from ..shards import write_index

    files: list[Path] = []
    for part in range(parts):
        target = part_output_path(out, part, parts, max_records)
        finished = _finished_output(target, max_records)
        if finished is None:
            return None
        if finished.is_file():
            files.append(finished)
            continue
        files += _shard_files(finished, _dataset_name(target)[1])
    index = combined_index_path(out)
    write_index(files, index)
    return index


def plan_batches(n_items: int, batch_size: int, done: Callable[[int], bool]) -> list[list[int]]:
    """Batches of item positions in fixed windows of ``batch_size``, leaving out finished items."""
    out = []
    for start in range(0, n_items, batch_size):
        batch = [i for i in range(start, min(n_items, start + batch_size)) if not done(i)]
        if batch:
            out.append(batch)
    return out


# ---------------------------------------------------------------------- data loading
class _ImageDataset:
    """Map-style dataset of :class:`DecodedItem` (never raises for a bad image)."""

    def __init__(self, items: Sequence[ImageItem], size: Sequence[int], resize: str, max_pixels: int,
                 jpeg_passthrough: bool) -> None:
        self.items, self.size, self.resize = list(items), tuple(size), resize
        self.max_pixels, self.jpeg_passthrough = max_pixels, jpeg_passthrough

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> DecodedItem:
        it = self.items[i]
        return load_item(i, it.key, it.path, size=self.size, resize=self.resize, max_pixels=self.max_pixels,
                         jpeg_passthrough=self.jpeg_passthrough)


def _collate(batch: list[DecodedItem]) -> dict[str, Any]:
    import torch

    tensors = [b for b in batch if b.kind == "tensor"]
    return {
        "index": [b.index for b in batch],
        "kind": [b.kind for b in batch],
        "tensor": torch.stack([b.data for b in tensors]) if tensors else None,
        "jpeg": [b.data for b in batch if b.kind == "jpeg"],
        "errors": [(b.index, b.reason, b.detail) for b in batch if b.kind == "error"],
    }


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


# ---------------------------------------------------------------------- writing
class _Sink(threading.Thread):
    """Background writer: waits for a batch's device→host copy, adds its records, flushes."""

    def __init__(self, writer: Any, maxsize: int, on_written: Callable[[int], None]) -> None:
        super().__init__(name="relabel-maps-writer", daemon=True)
        self.writer = writer
        self.q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self.error: BaseException | None = None
        self.on_written = on_written

    def put(self, job: tuple) -> None:
        while True:
            if self.error is not None:
                raise WriterError(f"writing failed: {self.error}") from self.error
            try:
                self.q.put(job, timeout=0.5)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is not None:
                continue  # drain after a failure so the producer never blocks
            try:
                keys, idx, vals, lse, event = job
                if event is not None:
                    event.synchronize()
                idx_np = idx.numpy()  # Writer.add casts to the file's index dtype
                vals_np = vals.numpy()
                lse_np = lse.numpy() if lse is not None else None
                for j, key in enumerate(keys):
                    self.writer.add(key, idx_np[j], vals_np[j], lse=None if lse_np is None else lse_np[j])
                self.writer.flush()
                self.on_written(len(keys))
            except BaseException as exc:  # noqa: BLE001 - reported to the producer
                self.error = exc

    def finish(self) -> None:
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise WriterError(f"writing failed: {self.error}") from self.error


class _FailureLog:
    """JSON-lines failure report, one object per skipped image, flushed line by line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = open(path, "w", encoding="utf-8")
        self.count = 0
        self.reasons: dict[str, int] = {}

    def add(self, key: str, path: str, reason: str, detail: str) -> None:
        self.f.write(json.dumps({"key": key, "path": path, "reason": reason, "detail": detail},
                                ensure_ascii=False) + "\n")
        self.f.flush()
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def close(self) -> None:
        self.f.close()


class _Progress:
    """rich progress bar with img/s, ETA, skipped and failed counts (no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, skipped: int, description: str) -> None:
        self.bar = None
        self.failed = 0
        self.skipped = skipped
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"),
            TimeRemainingColumn(),
            TextColumn("skipped {task.fields[skipped]} failed {task.fields[failed]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.t0 = time.perf_counter()
        self.done = 0
        self.row = self.bar.add_task(description, total=total, completed=skipped, rate="-", skipped=skipped, failed=0)
        self.bar.start()

    def advance(self, written: int = 0, failed: int = 0) -> None:
        if self.bar is None:
            return
        self.done += written + failed
        self.failed += failed
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.row, advance=written + failed, rate=f"{rate:7.1f}", failed=self.failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------- device step
def _resolve_precision(precision: str, device_type: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


class _Step:
    """Normalise a uint8-valued batch, run the teacher, and return top-k (+ lse) on the device."""

    def __init__(self, teacher: Teacher, k: int, precision: str, store_lse: bool, channels_last: bool,
                 compile: bool) -> None:
        import torch

        self.torch = torch
        self.teacher, self.k, self.store_lse = teacher, k, store_lse
        self.device = teacher.device
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.channels_last = channels_last
        if channels_last:
            teacher.model.to(memory_format=torch.channels_last)
        std = torch.tensor(teacher.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(teacher.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = mean / std
        self.compiled = bool(compile)
        self.fn = torch.compile(self._run, dynamic=False) if compile else self._run

    def _run(self, x: Any) -> tuple[Any, Any, Any]:
        torch = self.torch
        x = x * self.scale - self.shift
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                logits = self.teacher.logits(x, amp=True)
        else:
            logits = self.teacher.logits(x)
        logits = logits.float()
        vals, idx = logits.topk(self.k, dim=1, largest=True, sorted=True)
        lse = torch.logsumexp(logits, dim=1) if self.store_lse else None
        return vals, idx.to(torch.int32), lse

    def __call__(self, x: Any) -> tuple[Any, Any, Any]:
        with self.torch.inference_mode():
            return self.fn(x)


def get_step(teacher: Teacher, k: int, precision: str, store_lse: bool, channels_last: bool, compile: bool) -> _Step:
    """The device step for these settings, kept on the teacher so a compiled step compiles only
    once (benchmarks and repeated runs reuse it)."""
    config = (k, precision, store_lse, channels_last, compile, str(teacher.device))
    if config not in teacher.steps:
        teacher.steps[config] = _Step(teacher, k, precision, store_lse, channels_last, compile)
    return teacher.steps[config]


def _assemble(batch: dict[str, Any], items: Sequence[ImageItem], size: Sequence[int], resize: str,
              device: Any, max_pixels: int, fail: Callable[[int, str, str], None]) -> tuple[list[int], Any]:
    """Build the ``(n, 3, H, W)`` float batch on ``device``; returns the item positions kept."""
    import torch

    for index, reason, detail in batch["errors"]:
        fail(index, reason, detail)
    kinds, indices = batch["kind"], batch["index"]
    frames: dict[int, Any] = {}
    if batch["tensor"] is not None:
        t = batch["tensor"].to(device, non_blocking=True).float()
        for row, index in enumerate(i for i, kd in zip(indices, kinds) if kd == "tensor"):
            frames[index] = t[row]
    jpeg_index = [i for i, kd in zip(indices, kinds) if kd == "jpeg"]
    if jpeg_index:
        decoded = decode_jpegs(batch["jpeg"], device)
        for index, data, img in zip(jpeg_index, batch["jpeg"], decoded):
            if img is None:  # nvJPEG refused it: decode on the CPU instead
                try:
                    arr = load_rgb(data.cpu().numpy().tobytes(), max_pixels=max_pixels)
                except Exception as exc:  # noqa: BLE001 - ImageDecodeError or anything PIL raises
                    fail(index, getattr(exc, "reason", "corrupt"), str(exc))
                    continue
                img = torch.from_numpy(arr).permute(2, 0, 1).to(device)
            try:
                frames[index] = resize_image(img, size, resize, finish=False)
            except Exception as exc:  # noqa: BLE001 - e.g. out of device memory on a giant image
                fail(index, "error", f"resize on {device}: {type(exc).__name__}: {exc}")
    keep = [i for i in indices if i in frames]
    if not keep:
        return [], None
    x = torch.stack([frames[i] for i in keep])
    if jpeg_index:  # one rounding pass for the GPU-resized frames (worker frames are already integral)
        x.round_().clamp_(0, 255)
    return keep, x


# ---------------------------------------------------------------------- the run
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
    progress: bool = False,
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

    Re-running the same call resumes: finished keys are skipped, and a finished output whose keys
    cover the source is reported as complete.
    """
    torch = require("torch", "torch")
    from .. import Writer

    rank, world, local_rank = dist_info()
    shard_i, shard_n = shard
    parts, part = shard_n * world, shard_i * world + rank
    if batch_size < 1 or k < 1:
        raise InvalidArgumentError("batch_size and k must be positive")
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if isinstance(teacher, str):
        teacher = load_teacher(teacher, checkpoint=checkpoint, pretrained=pretrained, device=dev)
    else:
        teacher.model.to(dev)
    if k > teacher.num_classes:
        raise InvalidArgumentError(f"k={k} exceeds the teacher's {teacher.num_classes} classes")
    prec = _resolve_precision(precision, dev.type)

    all_items = list(items) if items is not None else list_images(source, file_list=file_list, globs=globs)
    part_items = shard_items(all_items, part, parts)
    if limit is not None:
        part_items = part_items[: max(0, int(limit))]
    target = part_output_path(out, part, parts, max_records)
    fail_path = Path(failures) if failures is not None else Path(str(target).rstrip("/\\") + ".failures.jsonl")
    if parts > 1 and failures is not None:
        fail_path = fail_path.with_name(f"{fail_path.stem}.{_part_tag(part, parts)}{fail_path.suffix}")

    t0 = time.perf_counter()
    finished = _finished_output(target, max_records)
    if finished is not None and not overwrite:
        summary = _already_complete(finished, part_items, fail_path, t0, str(dev), prec)
        index = write_combined_index(out, parts, max_records)
        summary.index = str(index) if index else None
        return summary

    grid = teacher.grid_size()
    writer_kwargs: dict[str, Any] = dict(
        num_classes=teacher.num_classes,
        k=k,
        score_kind="logits",
        encoding=encoding,
        teacher=teacher.metadata(grid),
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
        _remove_finished(target, max_records)
    writer = Writer(target, **writer_kwargs, resume=True)

    plan = plan_batches(len(part_items), batch_size, lambda i: part_items[i].key in writer)
    todo = sum(len(b) for b in plan)
    skipped = len(part_items) - todo
    fail_log = _FailureLog(fail_path)
    bar = _Progress(progress, len(part_items), skipped, f"annotate {teacher.preset or teacher.name}")
    sink = _Sink(writer, queue_size, lambda n: bar.advance(written=n))
    is_cuda = dev.type == "cuda"
    step = get_step(teacher, k, prec, store_lse, channels_last if channels_last is not None else is_cuda,
                    compile and _can_compile(dev))
    use_gpu_jpeg = bool(gpu_decode if gpu_decode is not None else is_cuda)
    n_workers = _default_workers(is_cuda) if workers is None else max(0, int(workers))

    def fail(index: int, reason: str, detail: str) -> None:
        it = part_items[index]
        fail_log.add(it.key, it.path, reason, detail)
        bar.advance(failed=1)

    annotated = 0
    ok = False
    sink.start()
    try:
        if plan:
            dataset = _ImageDataset(part_items, teacher.input_size, teacher.resize, max_pixels, use_gpu_jpeg)
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=plan,
                num_workers=n_workers,
                collate_fn=_collate,
                pin_memory=is_cuda,
                worker_init_fn=_worker_init if n_workers else None,
                prefetch_factor=4 if n_workers else None,
                persistent_workers=False,
            )
            for batch in loader:
                keep, x = _assemble(batch, part_items, teacher.input_size, teacher.resize, dev, max_pixels, fail)
                if not keep:
                    continue
                n = len(keep)
                if step.compiled and n < batch_size:  # keep one static shape: no recompilation
                    x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
                vals, idx, lse = step(x)
                vals, idx = vals[:n], idx[:n]
                lse = lse[:n] if lse is not None else None
                sink.put((
                    [part_items[i].key for i in keep],
                    *_to_host((idx, vals, lse), is_cuda),
                ))
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
        bar.close()

    records = len(writer)
    nbytes = sum(os.path.getsize(p) for p in outputs if p.endswith(".rlm"))
    return AnnotateSummary(
        outputs=outputs,
        failures_path=str(fail_path),
        total=len(part_items),
        annotated=annotated,
        skipped=skipped,
        failed=fail_log.count,
        seconds=time.perf_counter() - t0,
        bytes_written=nbytes,
        records=records,
        device=str(dev),
        precision=prec,
        failure_reasons=dict(fail_log.reasons),
        index=str(index) if (index := write_combined_index(out, parts, max_records)) else None,
    )


def _to_host(tensors: tuple[Any, Any, Any], is_cuda: bool) -> tuple[Any, Any, Any, Any]:
    """Copy top-k results to the host: pinned + non-blocking on CUDA, with an event to wait on."""
    if not is_cuda:
        return (*tensors, None)
    import torch

    host = []
    for t in tensors:
        if t is None:
            host.append(None)
            continue
        h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        h.copy_(t, non_blocking=True)
        host.append(h)
    event = torch.cuda.Event()
    event.record()
    return (*host, event)


def _can_compile(dev: Any) -> bool:
    import torch

    return hasattr(torch, "compile") and dev.type in ("cuda", "cpu")


def _default_workers(is_cuda: bool) -> int:
    """Decode workers: the node's cores shared by the ranks on it (CUDA), few on a CPU-only run."""
    cpus = os.cpu_count() or 1
    if is_cuda:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(2, min(16, cpus // local_world))
    return 0 if cpus <= 2 else min(4, cpus // 2)


def _finished_output(target: Path, max_records: int | None) -> Path | None:
    """The finished dataset at ``target`` (file, or folder index), if there is one."""
    sharded = max_records is not None or target.suffix != ".rlm" or target.is_dir()
    if not sharded:
        return target if target.is_file() else None
    folder, name = _dataset_name(target)
    index = folder / f"{name}.index.json"
    return folder if index.is_file() else None


def _remove_finished(target: Path, max_records: int | None) -> None:
    finished = _finished_output(target, max_records)
    if finished is None:
        return
    if finished.is_file():
        finished.unlink()
        return
    name = _dataset_name(target)[1]
    for p in [finished / f"{name}.index.json", *_shard_files(finished, name)]:  # the index first: no longer "finished"
        p.unlink()


def _already_complete(finished: Path, items: Sequence[ImageItem], fail_path: Path, t0: float, device: str,
                      precision: str) -> AnnotateSummary:
    import relabel_maps

    with relabel_maps.open(finished) as maps:
        stored = set(maps.keys())
        missing = [it.key for it in items if it.key not in stored]
        failed_before = _failed_keys(fail_path)
        missing = [key for key in missing if key not in failed_before]
        if missing:
            raise WriterError(
                f"{finished} is a finished dataset without {len(missing)} of the source's images "
                f"(e.g. {missing[0]!r}); write to a new output or pass --overwrite"
            )
        paths = sorted(str(p) for p in (finished.glob("*.rlm") if finished.is_dir() else [finished]))
        nbytes = sum(os.path.getsize(p) for p in paths)
        return AnnotateSummary(
            outputs=paths, failures_path=str(fail_path), total=len(items), annotated=0,
            skipped=len(items) - len(failed_before & {it.key for it in items}), failed=0,
            seconds=time.perf_counter() - t0, bytes_written=nbytes, records=len(maps), device=device,
            precision=precision,
        )


def _failed_keys(path: Path) -> set[str]:
    keys: set[str] = set()
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    keys.add(json.loads(line)["key"])
                except (ValueError, KeyError, TypeError):
                    continue
    return keys

