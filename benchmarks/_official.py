"""The official ReLabel soft-label path, shared by the benchmarks that measure against it.

Storage: one ``torch.save``'d ``[2, k, 15, 15]`` float32 tensor per image (scores, then class indices
stored as floats). Pooling: scatter into a dense ``1000 x 15 x 15`` tensor, ``torchvision.ops.roi_align``
over the crop, softmax over the 1000 classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

C, GRID = 1000, 15


def topk_tensor(indices: np.ndarray, scores: np.ndarray) -> torch.Tensor:
    """The official per-image tensor ``[2, k, H, W]`` float32: scores, then class indices."""
    return torch.from_numpy(np.stack([scores, indices.astype(np.float32)]))


def official_pool(topk: torch.Tensor, roi: torch.Tensor, aligned: bool) -> torch.Tensor:
    """Soft label ``(C,)`` of one ``[2, k, 15, 15]`` tensor: dense scatter, 1x1 ``roi_align`` over
    ``roi`` (``[[0, x0, y0, x1, y1]]`` in grid coordinates), softmax."""
    dense = torch.zeros(1, C, GRID, GRID).scatter_(1, topk[1][None].long(), topk[0][None])
    pooled = torchvision.ops.roi_align(dense, roi, output_size=(1, 1), aligned=aligned)
    return torch.softmax(pooled.view(-1), 0)


def dense_baseline(indices: torch.Tensor, scores: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The same for a batch (any device): ``(B, C)`` soft labels of normalised ``boxes`` (aligned)."""
    b = indices.shape[0]
    dense = torch.zeros(b, C, GRID, GRID, device=scores.device).scatter_(1, indices.long(), scores)
    rois = torch.cat([torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None], boxes * GRID], 1).float()
    pooled = torchvision.ops.roi_align(dense, rois, output_size=(1, 1), aligned=True)
    return torch.softmax(pooled.view(b, C), 1)
