"""Batches for the teacher: which images go together, and how they reach the device as one tensor.

DataLoader workers read, decode and resize files (:func:`.decode.load_item`), or decode the bytes a
stream source read (:func:`.decode.decode_item`: tar members, Parquet cells; a background thread reads
the part's samples in source order and cuts them into fixed windows, :func:`stream_loader`); on CUDA, RGB and
grayscale JPEGs pass through as bytes and are decoded here in batches by nvJPEG and resized on the
device, with the same resize as the workers'. Bad images never stop a batch: they are reported
through a ``fail`` callback, and so is an image the device has no memory left for (after a giant
image's resize has been retried on the CPU).

The workers hand their batches over through shared memory (``/dev/shm``): :func:`plan_loader` keeps
the batches in flight within half of what is free there, lowering the prefetch depth and then the
worker count, instead of letting a small container ``/dev/shm`` end the run with a bus error.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .decode import DecodedItem, ImageDecodeError, decode_item, decode_jpegs, load_item, load_rgb, resize_image
from .sources import ImageItem, RawSample

__all__ = ["FailFn", "LoaderPlan", "TeacherInput", "assemble", "batch_loader", "plan_batches", "plan_loader",
           "shm_free_bytes", "stream_loader", "windows"]

#: the share of the free ``/dev/shm`` the batches in flight may take
SHM_SHARE = 0.5
#: batches each worker prepares ahead (DataLoader ``prefetch_factor``) when memory allows
PREFETCH = 4

#: ``fail(key, path, reason, detail)``: report an image that cannot be annotated (``key`` is ``None``
#: for a problem of a whole source unit, e.g. an empty tar shard)
FailFn = Callable[[str | None, str, str, str], None]


def plan_batches(n_items: int, batch_size: int, done: Callable[[int], bool]) -> list[list[int]]:
    """Batches of item positions in fixed windows of ``batch_size``, leaving out finished items.

    Fixed windows over the full, sorted key list mean a resumed run feeds the teacher the same
    batches as an uninterrupted one.
    """
    out = []
    for start in range(0, n_items, batch_size):
        batch = [i for i in range(start, min(n_items, start + batch_size)) if not done(i)]
        if batch:
            out.append(batch)
    return out


def windows(samples: Iterable[RawSample], batch_size: int) -> Iterator[list[RawSample]]:
    """A stream's samples in fixed windows of ``batch_size`` consecutive samples (unit problems, whose
    key is ``None``, ride along with the window they come in; ``done`` samples keep their place), so
    a resumed run feeds the teacher the batches of an uninterrupted one, less the stored images."""
    window: list[RawSample] = []
    keyed = 0
    for s in samples:
        window.append(s)
        keyed += s.key is not None
        if keyed == batch_size:
            yield window
            window, keyed = [], 0
    if window:
        yield window


@dataclass(frozen=True)
class TeacherInput:
    """How an image becomes teacher input: ``size`` ``(H, W)``, the frame's ``crop_mode`` and
    ``crop_pct`` (:mod:`relabel_maps.frame`), the pixel limit above which it is skipped, and whether
    large JPEGs are decoded at a reduced scale (``draft``, :mod:`.decode`)."""

    size: tuple[int, int]
    crop_mode: str
    crop_pct: float
    max_pixels: int
    draft: bool = False


class _ImageDataset(Dataset[DecodedItem]):
    """Map-style dataset of :class:`DecodedItem` (never raises for a bad image): indexed by a position
    in ``items`` (folder sources) or by a :class:`RawSample` itself (stream sources: the bytes travel
    to the worker with the index)."""

    def __init__(self, items: Sequence[ImageItem], spec: TeacherInput, jpeg_passthrough: bool) -> None:
        self.items, self.spec, self.jpeg_passthrough = list(items), spec, jpeg_passthrough

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int | RawSample) -> DecodedItem:
        s = self.spec
        options = dict(size=s.size, crop_mode=s.crop_mode, crop_pct=s.crop_pct, max_pixels=s.max_pixels,
                       jpeg_passthrough=self.jpeg_passthrough, draft=s.draft)
        if not isinstance(i, RawSample):
            it = self.items[i]
            return load_item(i, it.key, it.path, **options)  # type: ignore[arg-type]
        key = i.key if i.key is not None else ""
        if i.done:
            return DecodedItem(-1, key, i.path, "skip")
        if i.data is None:
            return DecodedItem(-1, key, i.path, "error", reason=i.reason or "missing-image", detail=i.detail)
        return decode_item(-1, key, i.path, i.data, **options)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LoaderPlan:
    """DataLoader ``workers`` and ``prefetch`` factor; ``note`` says why they are lower than asked."""

    workers: int
    prefetch: int | None
    note: str | None = None


def shm_free_bytes(path: str = "/dev/shm") -> int | None:
    """Free bytes of the shared-memory file system the workers use (``None`` where there is none)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def plan_loader(workers: int, batch_size: int, frame_bytes: int, shm_free: int | None) -> LoaderPlan:
    """Workers and prefetch depth whose batches in flight (``workers x prefetch x batch_size x
    frame_bytes`` bytes of shared memory) fit in :data:`SHM_SHARE` of ``shm_free``.

    The prefetch depth goes down first (to 1), then the worker count; when not even one batch fits,
    decoding moves to the main process (no shared memory, slow) and the note says how to fix it.
    """
    if workers <= 0:
        return LoaderPlan(0, None)
    if shm_free is None:
        return LoaderPlan(workers, PREFETCH)
    budget = shm_free * SHM_SHARE
    per_batch = batch_size * frame_bytes
    mib = 1 << 20
    asked = workers * PREFETCH * per_batch
    if asked <= budget:
        return LoaderPlan(workers, PREFETCH)
    fix = "enlarge /dev/shm (e.g. docker run --shm-size=8g) or lower --batch-size/--workers"
    if per_batch > budget:
        return LoaderPlan(0, None, (
            f"/dev/shm has {shm_free / mib:.0f} MiB free, less than two batches of {batch_size} frames "
            f"({per_batch / mib:.0f} MiB each) need: decoding in the main process, which is slow; {fix}"))
    prefetch = max(1, min(PREFETCH, int(budget // (workers * per_batch))))
    kept = max(1, min(workers, int(budget // (prefetch * per_batch))))
    return LoaderPlan(kept, prefetch, (
        f"/dev/shm has {shm_free / mib:.0f} MiB free, {workers} workers x prefetch {PREFETCH} would hold "
        f"{asked / mib:.0f} MiB of batches: using {kept} workers x prefetch {prefetch}; {fix}"))


def _collate(batch: list[DecodedItem]) -> dict[str, Any]:
    tensors = [b for b in batch if b.kind == "tensor"]
    return {
        "index": [b.index for b in batch],
        "key": [b.key for b in batch],
        "path": [b.path for b in batch],
        "kind": [b.kind for b in batch],
        "tensor": torch.stack([b.data for b in tensors]) if tensors else None,
        "jpeg": [b.data for b in batch if b.kind == "jpeg"],
        "errors": [(b.key or None, b.path, b.reason, b.detail) for b in batch if b.kind == "error"],
        "skipped": sum(b.kind == "skip" for b in batch),
    }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_loader(
    items: Sequence[ImageItem], plan: list[list[int]], spec: TeacherInput, *, jpeg_passthrough: bool,
    loader: LoaderPlan, pin_memory: bool,
) -> DataLoader[DecodedItem]:
    """A DataLoader yielding one collated batch per entry of ``plan`` (lists of positions in ``items``)."""
    return _loader(items, plan, spec, jpeg_passthrough, loader, pin_memory)


def stream_loader(
    batches: Iterable[list[RawSample]], spec: TeacherInput, *, jpeg_passthrough: bool, loader: LoaderPlan,
    pin_memory: bool, prefetch: int = 4,
) -> DataLoader[DecodedItem]:
    """A DataLoader yielding one collated batch per window of a stream source (:func:`windows`). A
    background thread reads the windows ``prefetch`` (at least as many as the workers have in flight)
    ahead, so the device loop never waits for the files; workers only decode."""
    ahead = max(prefetch, loader.workers * (loader.prefetch or 1) + 1)
    return _loader([], _Prefetch(batches, ahead), spec, jpeg_passthrough, loader, pin_memory)


class _Prefetch:
    """Iterate ``source`` in a daemon thread, at most ``depth`` items ahead; its error is raised here.

    Iterable once (the DataLoader iterates its batch sampler once per pass)."""

    _END = object()

    def __init__(self, source: Iterable[Any], depth: int) -> None:
        self.source, self.depth = source, max(1, depth)

    def __iter__(self) -> Iterator[Any]:
        q: queue.Queue[Any] = queue.Queue(self.depth)
        stop = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                for item in self.source:
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                failure.append(exc)
            q.put(self._END)

        thread = threading.Thread(target=run, name="relabel-maps-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is self._END:
                    if failure:
                        raise failure[0]
                    return
                yield item
        finally:
            stop.set()


def _loader(items: Sequence[ImageItem], plan: Iterable[Any], spec: TeacherInput, jpeg_passthrough: bool,
            loader: LoaderPlan, pin_memory: bool) -> DataLoader[DecodedItem]:
    return DataLoader(
        _ImageDataset(items, spec, jpeg_passthrough),
        batch_sampler=plan,
        num_workers=loader.workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if loader.workers else None,
        prefetch_factor=loader.prefetch if loader.workers else None,
        persistent_workers=False,
    )


def assemble(batch: dict[str, Any], spec: TeacherInput, device: torch.device,
             fail: FailFn) -> tuple[list[str], torch.Tensor | None]:
    """Build the ``(n, 3, H, W)`` uint8-valued float batch on ``device``; returns the keys kept, in order."""
    for key, path, reason, detail in batch["errors"]:
        fail(key, path, reason, detail)
    kinds, keys = batch["kind"], batch["key"]
    frames: dict[int, torch.Tensor] = {}
    if batch["tensor"] is not None:
        t = batch["tensor"].to(device, non_blocking=True)
        for row, j in enumerate(j for j, kd in enumerate(kinds) if kd == "tensor"):
            frames[j] = t[row]
    jpeg_rows = [j for j, kd in enumerate(kinds) if kd == "jpeg"]
    if jpeg_rows:
        decoded = decode_jpegs(batch["jpeg"], device)
        for j, data, img in zip(jpeg_rows, batch["jpeg"], decoded, strict=True):
            try:
                frames[j] = _device_frame(img, data, spec, device)
            except ImageDecodeError as exc:
                fail(keys[j], _path(batch, j), exc.reason, exc.detail)
            except torch.cuda.OutOfMemoryError as exc:
                fail(keys[j], _path(batch, j), "out-of-memory", f"{device}: {exc}".splitlines()[0])
            except Exception as exc:  # noqa: BLE001 - a bad image must never stop the run
                fail(keys[j], _path(batch, j), "error", f"{type(exc).__name__}: {exc}")
    keep = sorted(frames)
    if not keep:
        return [], None
    return [keys[j] for j in keep], torch.stack([frames[j] for j in keep]).float()


def _path(batch: dict[str, Any], row: int) -> str:
    return str(batch["path"][row])


def _device_frame(img: torch.Tensor | None, data: torch.Tensor, spec: TeacherInput,
                  device: torch.device) -> torch.Tensor:
    """The uint8 teacher frame on ``device`` of a JPEG the device decoder decoded (``img``) or refused
    (``None``: PIL decodes it on the CPU). Both resize with :func:`.decode.resize_image`; a resize
    the device has no memory for runs on the CPU instead."""
    s = spec
    if img is None:
        arr = load_rgb(data.numpy().tobytes(), max_pixels=s.max_pixels)
        frame = resize_image(torch.from_numpy(arr).permute(2, 0, 1), s.size, s.crop_mode, s.crop_pct)
        return frame.to(torch.uint8).to(device, non_blocking=True)
    try:
        return resize_image(img, s.size, s.crop_mode, s.crop_pct).to(torch.uint8)
    except torch.cuda.OutOfMemoryError:
        pass  # leave the handler first, so the failed attempt's memory is released
    frame = resize_image(img.cpu(), s.size, s.crop_mode, s.crop_pct)
    return frame.to(torch.uint8).to(device, non_blocking=True)
