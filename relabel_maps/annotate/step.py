"""The device step: normalise a batch, run the teacher, keep the top-k (+ log-sum-exp) per location.

Everything runs on the device (bf16 autocast + channels_last + optional ``torch.compile`` on CUDA,
float32 on CPU) and only the top-k results are copied back, into pinned memory without blocking.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InvalidArgumentError
from .teacher import Teacher

__all__ = ["PRECISIONS", "TopKStep", "can_compile", "get_step", "resolve_precision", "to_host"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: top-k values ``(n, k, h, w)`` float32, indices int32, log-sum-exp ``(n, h, w)`` or ``None``
TopK = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def resolve_precision(precision: str, device_type: str) -> str:
    """``precision`` with ``"auto"`` resolved: bf16 autocast on CUDA, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def can_compile(device: torch.device) -> bool:
    """Whether ``torch.compile`` is available for ``device``."""
    return hasattr(torch, "compile") and device.type in ("cuda", "cpu")


class TopKStep:
    """Normalise a uint8-valued batch, run the teacher, and return top-k (+ lse) on the device."""

    def __init__(self, teacher: Teacher, k: int, precision: str, store_lse: bool, channels_last: bool,
                 compile: bool) -> None:
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
        self.fn: Callable[[torch.Tensor], TopK] = torch.compile(self._run, dynamic=False) if compile else self._run

    def _run(self, x: torch.Tensor) -> TopK:
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

    def __call__(self, x: torch.Tensor) -> TopK:
        with torch.inference_mode():
            return self.fn(x)


def get_step(teacher: Teacher, k: int, precision: str, store_lse: bool, channels_last: bool,
             compile: bool) -> TopKStep:
    """The device step for these settings, kept on the teacher so a compiled step compiles only
    once (benchmarks and repeated runs reuse it)."""
    config = (k, precision, store_lse, channels_last, compile, str(teacher.device))
    if config not in teacher.steps:
        teacher.steps[config] = TopKStep(teacher, k, precision, store_lse, channels_last, compile)
    step: TopKStep = teacher.steps[config]
    return step


def to_host(result: TopK) -> tuple[TopK, torch.cuda.Event | None]:
    """Copy a step's results to the host: on CUDA into pinned memory without blocking, with an
    event to wait on before reading them; elsewhere they already are on the host."""
    vals, idx, lse = result
    if vals.device.type != "cuda":
        return result, None

    def pinned(t: torch.Tensor) -> torch.Tensor:
        h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        h.copy_(t, non_blocking=True)
        return h

    host = (pinned(vals), pinned(idx), None if lse is None else pinned(lse))
    event = torch.cuda.Event()
    event.record()
    return host, event
