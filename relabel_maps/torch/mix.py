"""CutMix and Mixup whose targets come from the label maps (timm-style batch mixing)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..pooling import resolve_fill
from .pool import LabelMapBatch, finish_pooled

__all__ = ["cut_boxes", "mix_soft_targets", "LabelMapMixup"]


def cut_boxes(boxes: Tensor, flips: Tensor, cut: Tensor) -> Tensor:
    """Boxes of a region of each crop, in each crop's teacher frame.

    ``boxes`` ``(B, 4)`` are the crops in their teacher frames, ``flips`` ``(B,)`` their mirror flags
    and ``cut`` ``(4,)`` or ``(B, 4)`` the region ``(x0, y0, x1, y1)`` normalised to the network's
    input image (as displayed, i.e. after any mirroring)."""
    cut = torch.as_tensor(cut, dtype=boxes.dtype, device=boxes.device).expand(boxes.shape[0], 4)
    flips = flips.to(boxes.device).bool()
    u0 = torch.where(flips, 1.0 - cut[:, 2], cut[:, 0])  # the mirrored crop shows column 1-u at u
    u1 = torch.where(flips, 1.0 - cut[:, 0], cut[:, 2])
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.stack(
        [boxes[:, 0] + u0 * bw, boxes[:, 1] + cut[:, 1] * bh, boxes[:, 0] + u1 * bw, boxes[:, 1] + cut[:, 3] * bh], 1
    )


def mix_soft_targets(
    batch: LabelMapBatch,
    perm: Tensor,
    lam: float,
    cut: Sequence[float] | Tensor | None = None,
    *,
    fill: str | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Soft targets ``(B, C)`` (size-1 labels) of a mixed batch.

    * Mixup (``cut is None``): ``lam * soft_i + (1 - lam) * soft_perm[i]``.
    * CutMix: image ``i`` shows crop ``perm[i]`` inside ``cut`` (normalised ``(x0, y0, x1, y1)`` in the
      input image) and its own crop elsewhere. The pasted region is pooled over its own box in
      ``perm[i]``'s teacher frame; the base region (crop minus cut, not a box) is pooled as
      ``(whole - a * cut) / (1 - a)`` of the linear pooled quantity, ``a`` the cut's area fraction.
      The two soft labels are mixed by area; ``lam`` is ignored (pass the area-corrected one to mix
      images consistently).

    With a class map on the batch, each part's label is mapped to the dataset's classes before the mix.
    """
    perm = torch.as_tensor(perm, device=batch.boxes.device, dtype=torch.long)
    mode = resolve_fill(fill, batch.score_kind)
    if cut is None:
        soft = batch.pool(fill=mode, temperature=temperature)
        return lam * soft + (1.0 - lam) * soft[perm]
    cut_t = torch.as_tensor(cut, dtype=torch.float32, device=batch.boxes.device).reshape(4)
    area = float((cut_t[2] - cut_t[0]).clamp(0, 1) * (cut_t[3] - cut_t[1]).clamp(0, 1))
    whole = batch.pool(fill=mode, temperature=temperature, activate=False)
    if area <= 0.0:
        return batch.map_classes(finish_pooled(whole, mode))
    cut_in_frames = cut_boxes(batch.boxes, batch.flips, cut_t)
    inner = batch.pool(fill=mode, temperature=temperature, boxes=cut_in_frames, activate=False)
    pasted = batch.map_classes(finish_pooled(inner, mode))[perm]
    if area >= 1.0 - 1e-6:
        return pasted
    base_lin = (whole - area * inner) / (1.0 - area)
    if mode != "zero":  # pooled probability mass of the remainder: non-negative up to rounding
        base_lin = base_lin.clamp(min=0.0)
    base = batch.map_classes(finish_pooled(base_lin, mode))
    return (1.0 - area) * base + area * pasted


class LabelMapMixup:
    """timm-style batch Mixup / CutMix whose targets come from the label maps.

    ``images, soft = mixer(images, batch)`` mixes ``images`` (B, C, H, W) in place with the reversed
    batch (timm's ``flip(0)`` pairing) and returns the matching soft targets. CutMix boxes are drawn as
    in timm (side ``sqrt(1 - lam)``, clipped) and the mixing weight is the actual pasted area.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        fill: str | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.fill, self.temperature = fill, temperature
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _beta(self, alpha: float) -> float:
        # Beta(a, a) from two Gamma draws with the module's generator (reproducible with a seed)
        a = torch.full((2,), alpha, dtype=torch.float64)
        g = torch._standard_gamma(a, generator=self.generator)
        return float(g[0] / g.sum())

    def sample(self, height: int, width: int) -> tuple[float, tuple[int, int, int, int] | None]:
        """``(lam, cut)``: the mixing weight and, for CutMix, the pasted rectangle ``(x0, y0, x1, y1)``
        in pixels (``lam`` then is the area-corrected weight of the base image)."""
        if self._rand() >= self.prob or (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0):
            return 1.0, None
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self._rand() < self.switch_prob)
        if not use_cutmix:
            return self._beta(self.mixup_alpha), None
        lam = self._beta(self.cutmix_alpha)
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(height * ratio), int(width * ratio)
        cy = int(torch.randint(0, height, (), generator=self.generator))
        cx = int(torch.randint(0, width, (), generator=self.generator))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
        return 1.0 - (y1 - y0) * (x1 - x0) / float(height * width), (x0, y0, x1, y1)

    def __call__(self, images: Tensor, batch: LabelMapBatch, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """Mix ``images`` in place; return ``(images, soft_targets)``, plus the equally mixed one-hot
        ``target`` as ``(B, C)`` when ``target`` (class indices) is given: ``(images, soft, hard)``.

        ``soft`` ``(B, C)`` are the label maps' mixed soft labels (over a class map's classes when the
        batch has one); ``hard`` mixes the one-hot ``target`` the same way, so ``target`` must index the
        same classes (:func:`relabel_maps.classmap.hard_label_index` checks an ImageFolder's)."""
        height, width = images.shape[-2:]
        lam, cut = self.sample(height, width)
        perm = torch.arange(images.shape[0] - 1, -1, -1, device=images.device)
        norm = None
        if cut is None:
            if lam < 1.0:
                other = images.flip(0).mul_(1.0 - lam)  # a copy, taken before mixing in place
                images.mul_(lam).add_(other)
        else:
            x0, y0, x1, y1 = cut
            images[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
            norm = (x0 / width, y0 / height, x1 / width, y1 / height)
        soft = mix_soft_targets(batch, perm, lam, norm, fill=self.fill, temperature=self.temperature)
        if target is None:
            return images, soft
        one_hot = torch.nn.functional.one_hot(target.long().to(soft.device), batch.num_outputs).to(soft.dtype)
        return images, soft, lam * one_hot + (1.0 - lam) * one_hot[perm.to(soft.device)]
