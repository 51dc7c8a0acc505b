"""The fully-convolutional head: a timm classifier's own head applied at every feature location.

The features at each location are cut out as their own ``1 x 1`` feature map (or a one-token
sequence for ViT-style models) and passed through the model's ``forward_head``. Pooling a single
location is the identity, so each location gets exactly the head the model was trained with
(ConvNeXt's head norm and pre-logits MLP, ViT/EVA ``fc_norm``, DeiT's averaged distillation head,
...). Class, register and distillation tokens are dropped; patch tokens are reshaped to the patch
grid. For GAP + linear heads (ResNet, EfficientNet, RegNet, NFNet, Swin) the spatial mean of the
map equals the model's logits exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = ["dense_head", "token_grid"]


def dense_head(model: Any, feats: torch.Tensor, image_size: Sequence[int] | None = None) -> torch.Tensor:
    """Apply ``model.forward_head`` at every location of ``forward_features`` output.

    Args:
        model: a timm classifier.
        feats: its ``forward_features`` output: ``(B, C, h, w)`` (NCHW models), ``(B, h, w, C)``
            (models with ``output_fmt == "NHWC"``, e.g. Swin) or ``(B, N, C)`` tokens (ViT, DeiT, EVA).
        image_size: the input's ``(H, W)``; used to find the patch grid of token models.

    Returns:
        ``(B, num_classes, h, w)`` logits.
    """
    if feats.ndim == 4:
        is_nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        nhwc = feats if is_nhwc else feats.permute(0, 2, 3, 1)  # a free view for channels_last features
        b, h, w, c = nhwc.shape
        flat = nhwc.reshape(b * h * w, c)
        out = model.forward_head(flat[:, None, None, :] if is_nhwc else flat[:, :, None, None])
    elif feats.ndim == 3:
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        tokens = feats[:, prefix:]
        b, n, c = tokens.shape
        h, w = token_grid(model, n, image_size)
        # Every position holds the same patch token, so any pooling the head does (class token,
        # average, max, attention pool, DeiT's averaged class+distillation heads) sees that token.
        seq = tokens.reshape(b * n, 1, c).expand(b * n, prefix + 1, c)
        out = model.forward_head(seq)
    else:
        raise InvalidArgumentError(f"unsupported feature shape {tuple(feats.shape)} from {type(model).__name__}")
    if isinstance(out, (tuple, list)):  # distilled models in training mode
        out = (out[0] + out[1]) / 2
    if out.ndim != 2 or out.shape[0] != b * h * w:
        raise InvalidArgumentError(
            f"{type(model).__name__}: cannot apply the classifier head per location (head output "
            f"{tuple(out.shape)})"
        )
    return out.reshape(b, h, w, out.shape[1]).permute(0, 3, 1, 2)


def token_grid(model: Any, n: int, image_size: Sequence[int] | None) -> tuple[int, int]:
    """The ``(h, w)`` patch grid holding ``n`` patch tokens of ``model`` at input ``image_size``."""
    pe = getattr(model, "patch_embed", None)
    candidates: list[tuple[int, int]] = []
    if pe is not None and image_size is not None and hasattr(pe, "dynamic_feat_size"):
        try:
            gh, gw = pe.dynamic_feat_size((int(image_size[0]), int(image_size[1])))
            candidates.append((int(gh), int(gw)))
        except Exception:  # noqa: BLE001 - older/other patch embeds
            pass
    if pe is not None and getattr(pe, "grid_size", None) is not None:
        gh, gw = pe.grid_size
        candidates.append((int(gh), int(gw)))
    for gh, gw in candidates:
        if gh * gw == n:
            return gh, gw
    side = int(round(n**0.5))
    if side * side == n:
        return side, side
    raise InvalidArgumentError(f"{type(model).__name__}: cannot arrange {n} patch tokens into a grid")
