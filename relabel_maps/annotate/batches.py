"""Batches for the teacher: which images go together, and how they reach the device as one tensor.

DataLoader workers read, decode and resize files (:func:`.decode.load_item`); on CUDA, RGB and
grayscale JPEGs pass through as bytes and are decoded here in batches by nvJPEG and resized on the
device, with the same resize as the workers'. Bad images never stop a batch: they are reported
through a ``fail`` callback, and so is an image the device has no memory left for (after a giant
image's resize has been retried on the CPU).

The workers hand their batches over through shared memory (``/dev/shm``): :func:`plan_loader` keeps
the batches in flight within half of what is free there, lowering the prefetch depth and then the
worker count, instead of letting a small container ``/dev/shm`` end the run with a bus error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .decode import DecodedItem, ImageDecodeError, decode_jpegs, load_item, load_rgb, resize_image
from .sources import ImageItem

__all__ = ["LoaderPlan", "TeacherInput", "assemble", "batch_loader", "plan_batches", "plan_loader", "shm_free_bytes"]

#: the share of the free ``/dev/shm`` the batches in flight may take
SHM_SHARE = 0.5
#: batches each worker prepares ahead (DataLoader ``prefetch_factor``) when memory allows
PREFETCH = 4

#: ``fail(position, reason, detail)``: report an image that cannot be annotated
FailFn = Callable[[int, str, str], None]


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


@dataclass(frozen=True)
class TeacherInput:
    """How an image becomes teacher input: ``size`` ``(H, W)``, the frame's ``crop_mode`` and
    ``crop_pct`` (:mod:`relabel_maps.frame`), and the pixel limit above which it is skipped."""

    size: tuple[int, int]
    crop_mode: str
    crop_pct: float
    max_pixels: int


class _ImageDataset(Dataset[DecodedItem]):
    """Map-style dataset of :class:`DecodedItem` (never raises for a bad image)."""

    def __init__(self, items: Sequence[ImageItem], spec: TeacherInput, jpeg_passthrough: bool) -> None:
        self.items, self.spec, self.jpeg_passthrough = list(items), spec, jpeg_passthrough

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> DecodedItem:
        it, s = self.items[i], self.spec
        return load_item(i, it.key, it.path, size=s.size, crop_mode=s.crop_mode, crop_pct=s.crop_pct,
                         max_pixels=s.max_pixels, jpeg_passthrough=self.jpeg_passthrough)


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
        "kind": [b.kind for b in batch],
        "tensor": torch.stack([b.data for b in tensors]) if tensors else None,
        "jpeg": [b.data for b in batch if b.kind == "jpeg"],
        "errors": [(b.index, b.reason, b.detail) for b in batch if b.kind == "error"],
    }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_loader(
    items: Sequence[ImageItem], plan: list[list[int]], spec: TeacherInput, *, jpeg_passthrough: bool,
    loader: LoaderPlan, pin_memory: bool,
) -> DataLoader[DecodedItem]:
    """A DataLoader yielding one collated batch per entry of ``plan`` (lists of positions in ``items``)."""
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
             fail: FailFn) -> tuple[list[int], torch.Tensor | None]:
    """Build the ``(n, 3, H, W)`` uint8-valued float batch on ``device``; returns the item positions kept."""
    for index, reason, detail in batch["errors"]:
        fail(index, reason, detail)
    kinds, indices = batch["kind"], batch["index"]
    frames: dict[int, torch.Tensor] = {}
    if batch["tensor"] is not None:
        t = batch["tensor"].to(device, non_blocking=True)
        for row, index in enumerate(i for i, kd in zip(indices, kinds, strict=True) if kd == "tensor"):
            frames[index] = t[row]
    jpeg_index = [i for i, kd in zip(indices, kinds, strict=True) if kd == "jpeg"]
    if jpeg_index:
        decoded = decode_jpegs(batch["jpeg"], device)
        for index, data, img in zip(jpeg_index, batch["jpeg"], decoded, strict=True):
            try:
                frames[index] = _device_frame(img, data, spec, device)
            except ImageDecodeError as exc:
                fail(index, exc.reason, exc.detail)
            except torch.cuda.OutOfMemoryError as exc:
                fail(index, "out-of-memory", f"{device}: {exc}".splitlines()[0])
            except Exception as exc:  # noqa: BLE001 - a bad image must never stop the run
                fail(index, "error", f"{type(exc).__name__}: {exc}")
    keep = [i for i in indices if i in frames]
    if not keep:
        return [], None
    return keep, torch.stack([frames[i] for i in keep]).float()


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
