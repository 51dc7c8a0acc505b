"""Batches for the teacher: which images go together, and how they reach the device as one tensor.

DataLoader workers read, decode and resize files (:func:`.decode.load_item`); on CUDA, RGB and
grayscale JPEGs pass through as bytes and are decoded here in batches by nvJPEG and resized on the
device. Bad images never stop a batch: they are reported through a ``fail`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .decode import DecodedItem, decode_jpegs, load_item, load_rgb, resize_image
from .sources import ImageItem

__all__ = ["TeacherInput", "assemble", "batch_loader", "plan_batches"]

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
    items: Sequence[ImageItem], plan: list[list[int]], spec: TeacherInput, *, jpeg_passthrough: bool, workers: int,
    pin_memory: bool,
) -> DataLoader[DecodedItem]:
    """A DataLoader yielding one collated batch per entry of ``plan`` (lists of positions in ``items``)."""
    return DataLoader(
        _ImageDataset(items, spec, jpeg_passthrough),
        batch_sampler=plan,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
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
        t = batch["tensor"].to(device, non_blocking=True).float()
        for row, index in enumerate(i for i, kd in zip(indices, kinds, strict=True) if kd == "tensor"):
            frames[index] = t[row]
    jpeg_index = [i for i, kd in zip(indices, kinds, strict=True) if kd == "jpeg"]
    if jpeg_index:
        decoded = decode_jpegs(batch["jpeg"], device)
        for index, data, img in zip(jpeg_index, batch["jpeg"], decoded, strict=True):
            if img is None:  # nvJPEG refused it: decode on the CPU instead
                try:
                    arr = load_rgb(data.cpu().numpy().tobytes(), max_pixels=spec.max_pixels)
                except Exception as exc:  # noqa: BLE001 - ImageDecodeError or anything PIL raises
                    fail(index, getattr(exc, "reason", "corrupt"), str(exc))
                    continue
                img = torch.from_numpy(arr).permute(2, 0, 1).to(device)
            try:
                frames[index] = resize_image(img, spec.size, spec.crop_mode, spec.crop_pct, finish=False)
            except Exception as exc:  # noqa: BLE001 - e.g. out of device memory on a giant image
                fail(index, "error", f"resize on {device}: {type(exc).__name__}: {exc}")
    keep = [i for i in indices if i in frames]
    if not keep:
        return [], None
    x = torch.stack([frames[i] for i in keep])
    if jpeg_index:  # one rounding pass for the device-resized frames (worker frames are already integral)
        x.round_().clamp_(0, 255)
    return keep, x
