"""Cross-entropy against soft targets, optionally mixed with the hard label."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidArgumentError

__all__ = ["soft_target_cross_entropy", "SoftTargetCrossEntropy"]


def soft_target_cross_entropy(
    logits: Tensor,
    soft_targets: Tensor,
    target: Tensor | None = None,
    alpha: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy against soft targets (class dimension 1), optionally mixed with the hard label:
    ``t = (1 - alpha) * soft_targets + alpha * one_hot(target)``. ``target`` holds class indices, or
    already (mixed) one-hot rows ``(B, C)`` as returned by :class:`LabelMapMixup`.

    The targets and the loss are computed in float32 (float64 when either input is) whatever the
    logits' dtype: bfloat16 targets would shift each row's sum by ~2e-3, and a bfloat16 log-softmax
    rounds every term. The gradient reaches the logits in their own dtype."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha must lie in [0, 1], got {alpha}")
    dtype = torch.promote_types(torch.promote_types(soft_targets.dtype, logits.dtype), torch.float32)
    t = soft_targets.to(dtype)
    if alpha > 0.0:
        if target is None:
            raise InvalidArgumentError("alpha > 0 needs the hard target")
        if target.is_floating_point():
            one_hot = target.to(t.dtype)
        else:
            one_hot = torch.nn.functional.one_hot(target.long(), logits.shape[1]).to(t.dtype)
        if t.ndim > 2:
            one_hot = one_hot.reshape(one_hot.shape + (1,) * (t.ndim - 2))
        t = (1.0 - alpha) * t + alpha * one_hot
    loss = -(t * torch.log_softmax(logits.to(dtype), dim=1)).sum(1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise InvalidArgumentError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class SoftTargetCrossEntropy(torch.nn.Module):
    """Module form of :func:`soft_target_cross_entropy`."""

    def __init__(self, alpha: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.alpha, self.reduction = alpha, reduction

    def forward(self, logits: Tensor, soft_targets: Tensor, target: Tensor | None = None) -> Tensor:
        return soft_target_cross_entropy(logits, soft_targets, target, self.alpha, self.reduction)
