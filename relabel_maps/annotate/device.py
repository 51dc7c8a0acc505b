"""Which device a rank runs on, how many images fit in one forward pass, and what to do when they do not.

* :func:`dist_info` / :func:`select_device`: the ``torchrun`` environment and this rank's device. A
  launcher that shows each process only its own GPU leaves one visible device whatever the rank, so
  the local rank selects a device modulo the visible count.
* :func:`default_batch_size`: on CUDA, measured from the free memory (two probe passes give the
  memory per image); :data:`CPU_BATCH_SIZE` elsewhere.
* :class:`ChunkedStep`: runs a batch through a step, halving the images per pass on device
  out-of-memory (with a warning naming the batch size to pass) instead of ending the run.
"""

from __future__ import annotations

import os
import warnings

import torch

from ..errors import InvalidArgumentError
from .step import DeviceMemoryError, StepOut, TopKStep

__all__ = ["CPU_BATCH_SIZE", "MAX_AUTO_BATCH", "ChunkedStep", "choose_batch_size", "default_batch_size",
           "dist_info", "select_device"]

#: images per forward pass on the CPU (and the rounding unit of a measured CUDA batch size)
CPU_BATCH_SIZE = 32
#: the largest batch size chosen from free memory
MAX_AUTO_BATCH = 128
#: share of the free device memory a measured batch size may plan to use
MEMORY_SHARE = 0.8


def dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the ``torchrun`` environment (``(0, 1, 0)`` otherwise);
    without ``LOCAL_RANK`` the local rank is ``RANK`` (:func:`select_device` reduces it modulo the
    visible devices)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InvalidArgumentError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def select_device(device: str | None, local_rank: int) -> torch.device:
    """The run's device: ``device``, else this rank's GPU when there is one, else the CPU.

    A CUDA device without an index is ``cuda:(local_rank mod visible devices)``; it becomes the
    current device.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    return dev


def choose_batch_size(free_bytes: int, per_image_bytes: int, fixed_bytes: int, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch whose measured memory (``fixed + n * per_image``) fits in :data:`MEMORY_SHARE`
    of ``free_bytes``, at most ``cap``, rounded down to a multiple of 8 from 8 up (at least 1)."""
    room = free_bytes * MEMORY_SHARE - max(0, fixed_bytes)
    n = int(room // max(1, per_image_bytes)) if room > 0 else 1
    n = max(1, min(cap, n))
    return n - n % 8 if n >= 8 else n


def default_batch_size(step: TopKStep, input_size: tuple[int, int]) -> int:
    """:data:`CPU_BATCH_SIZE` off CUDA; on CUDA the batch :func:`choose_batch_size` picks from the
    free memory and the peak memory of two probe passes (1 and 2 images) through ``step``."""
    dev = step.device
    if dev.type != "cuda":
        return CPU_BATCH_SIZE
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step(torch.zeros((n, 3, *input_size), device=dev))
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
    free, _ = torch.cuda.mem_get_info(dev)
    per_image = max(1, peaks[1] - peaks[0])
    return choose_batch_size(free, per_image, peaks[0] - per_image)


class ChunkedStep:
    """Run batches through ``step`` at most ``chunk`` images per pass; on device out-of-memory, halve
    ``chunk`` (warning once per size) and go on, down to one image (then :class:`DeviceMemoryError`).

    With a compiled step every pass is padded to ``chunk`` images (one static shape per size)."""

    def __init__(self, step: TopKStep, chunk: int) -> None:
        self.step, self.chunk = step, max(1, int(chunk))

    def __call__(self, x: torch.Tensor) -> StepOut:
        outs: list[StepOut] = []
        start = 0
        while start < len(x):
            part = x[start : start + self.chunk]
            out = self._try(part)
            if out is None:
                self._shrink()
                continue
            outs.append(out)
            start += len(part)
        if len(outs) == 1:
            return outs[0]
        lse = None if outs[0][2] is None else torch.cat([o[2] for o in outs if o[2] is not None])
        return (torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), lse,
                torch.cat([o[3] for o in outs]))

    def _try(self, part: torch.Tensor) -> StepOut | None:
        n = len(part)
        if self.step.compiled and n < self.chunk:  # keep one static shape: no recompilation
            part = torch.cat([part, part.new_zeros((self.chunk - n, *part.shape[1:]))])
        try:
            vals, idx, lse, finite = self.step(part)
        except torch.cuda.OutOfMemoryError:
            return None  # handled outside the except block, once the failed pass's memory is released
        return vals[:n], idx[:n], None if lse is None else lse[:n], finite[:n]

    def _shrink(self) -> None:
        dev = self.step.device
        if self.chunk == 1:
            raise DeviceMemoryError(
                f"out of memory on {dev} with one image per forward pass: free the device, or use a smaller "
                f"teacher or input size"
            )
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        self.chunk //= 2
        warnings.warn(
            f"out of memory on {dev}: continuing with {self.chunk} images per forward pass (start with "
            f"--batch-size {self.chunk} to skip this)", RuntimeWarning, stacklevel=3,
        )
