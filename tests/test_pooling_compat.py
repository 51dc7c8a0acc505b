"""Compatibility mode vs an independent re-implementation of the released ReLabel training path.

The reference below is written from the released naver-ai/relabel_imagenet code (utils/relabel_functions.py
``get_labelmaps``/``get_relabel``, the coordinate handling of utils/data_loader.py ``relabel_batch_fn`` and
``RandomResizedCropWithCoords``), run on the CPU instead of CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from relabel_maps import InvalidBoxError, LabelMap
from relabel_maps.pooling import from_official_coords, pool, relabel_compat, to_official_coords

if TYPE_CHECKING:
    from torch import Tensor

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def official_label_maps(label_maps_topk: Tensor, num_batches: int) -> Tensor:
    """get_labelmaps: scatter the [B, 2, 5, H, W] top-k tensors into dense zeros [B, 1000, H, W]."""
    size = label_maps_topk[0].size()
    label_maps = torch.zeros([num_batches, 1000, size[2], size[3]])
    for label_map, topk in zip(label_maps, label_maps_topk, strict=True):
        label_map.scatter_(0, topk[1][:, :, :].long(), topk[0][:, :, :])
    return label_maps


def official_relabel(label_maps: Tensor, batch_coords: Tensor, num_batches: int) -> Tensor:
    """get_relabel: RoIAlign (torchvision defaults: aligned=False) of coords * W - 0.5, softmax."""
    boxes = torch.cat([torch.arange(num_batches).view(num_batches, 1).float(),
                       batch_coords.float() * label_maps.size(3) - 0.5], 1)
    out = torchvision.ops.roi_align(input=label_maps, boxes=boxes, output_size=(1, 1))
    return torch.nn.functional.softmax(out.squeeze(), 1)


def official_coords(rng: np.random.Generator, img_w: int, img_h: int) -> tuple[float, float, float, float]:
    """RandomResizedCropWithCoords: (i / H, j / W, h / H, w / W) of torchvision's crop parameters."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    img = torch.zeros(3, img_h, img_w)
    i, j, h, w = torchvision.transforms.RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    return (i / img_h, j / img_w, h / img_h, w / img_w)


def random_topk(rng: np.random.Generator, h: int = 15, w: int = 15, k: int = 5) -> np.ndarray:
    """A released-style [2, k, H, W] float32 tensor: scores, then class indices stored as floats."""
    logits = rng.normal(size=(1000, h, w)).astype(np.float32) * 3
    logits[rng.integers(1000, size=4)] += 6  # a few dominant classes, as in real maps
    idx = np.argsort(-logits, axis=0)[:k]
    return np.stack([np.take_along_axis(logits, idx, 0), idx.astype(np.float32)])


def test_compat_matches_released_code() -> None:
    rng = np.random.default_rng(0)
    batch = 64
    topk = np.stack([random_topk(rng) for _ in range(batch)])
    sizes = [(int(rng.integers(200, 800)), int(rng.integers(200, 800))) for _ in range(batch)]
    crops = [official_coords(rng, w, h) for w, h in sizes]
    # relabel_batch_fn: default-collated list of 4 (B,) tensors -> (B, 4) -> (y0, x0, y1, x1)
    collated = [torch.tensor([c[i] for c in crops], dtype=torch.float64) for i in range(4)]
    coords = torch.cat(collated, 0).view(4, -1).transpose(1, 0)
    coords[:, 2:] += coords[:, :2]
    coords = coords.float()
    ref = official_relabel(official_label_maps(torch.from_numpy(topk), batch), coords, batch).numpy()
    worst = 0.0
    for b in range(batch):
        lm = LabelMap.from_arrays(topk[b, 1].astype(np.int64), topk[b, 0], num_classes=1000)
        got = relabel_compat(lm, coords[b].tolist())
        assert got.shape == (1000,) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - ref[b]).max()))
        # the flip never reaches the released pooler
        np.testing.assert_array_equal(relabel_compat(lm, coords[b].tolist(), flip=True), got)
    assert worst <= 1e-5, worst


def test_compat_small_crops_hit_min_roi_size() -> None:
    """aligned=False clamps the RoI to at least one cell; the reference shows the same numbers."""
    rng = np.random.default_rng(1)
    topk = random_topk(rng)[None]
    maps = official_label_maps(torch.from_numpy(topk), 1)
    lm = LabelMap.from_arrays(topk[0, 1].astype(np.int64), topk[0, 0], num_classes=1000)
    for coords in [(0.40, 0.41, 0.43, 0.45), (0.0, 0.0, 0.02, 0.03), (0.95, 0.9, 1.0, 0.99)]:
        ref = official_relabel(maps.repeat(2, 1, 1, 1), torch.tensor([coords, coords]), 2)[0].numpy()
        np.testing.assert_allclose(relabel_compat(lm, coords), ref, atol=1e-5)


def test_compat_is_the_transposed_box() -> None:
    """For crops of at least one cell, compat == pool(fill="zero") of the transposed map and box."""
    rng = np.random.default_rng(2)
    topk = random_topk(rng)
    lm = LabelMap.from_arrays(topk[1].astype(np.int64), topk[0], num_classes=1000)
    lm_t = LabelMap(np.ascontiguousarray(lm.indices.transpose(0, 2, 1)),
                    np.ascontiguousarray(lm.scores.transpose(0, 2, 1)), num_classes=1000)
    for box in [(0.1, 0.3, 0.6, 0.9), (0.0, 0.0, 1.0, 1.0), (0.25, 0.05, 0.95, 0.5)]:
        coords = to_official_coords(box)
        np.testing.assert_allclose(relabel_compat(lm, coords), pool(lm_t, box, fill="zero"), atol=1e-6)
    # symmetric crops (about the diagonal) give the same label either way
    sym = (0.2, 0.2, 0.7, 0.7)
    np.testing.assert_allclose(relabel_compat(lm, to_official_coords(sym)), pool(lm, sym), atol=1e-6)


def test_official_coords_round_trip() -> None:
    box = (0.1, 0.2, 0.7, 0.95)
    coords = to_official_coords(box, flip=True)
    assert coords == (0.2, 0.1, 0.95, 0.7)
    assert from_official_coords(coords) == (box, False)
    with pytest.raises(InvalidBoxError):
        to_official_coords((0.5, 0.2, 0.4, 0.9))
    with pytest.raises(InvalidBoxError):
        relabel_compat(LabelMap.from_arrays(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2)), num_classes=1000),
                       (0.0, float("nan"), 1.0, 1.0))


def test_compat_ignores_padding_entries() -> None:
    """A variable-k map's padding entries carry nothing: the same label as the map without counts
    whose padding scores are 0."""
    rng = np.random.default_rng(3)
    k, h, w, c = 4, 6, 6, 1000
    counts = rng.integers(1, k + 1, size=(h, w)).astype(np.uint8)
    pad = np.arange(k)[:, None, None] >= counts[None]
    idx = np.where(pad, 0, np.stack([rng.permutation(c)[:k] for _ in range(h * w)], axis=1).reshape(k, h, w))
    sc = np.where(pad, 0.0, -np.sort(-rng.normal(0, 3, (k, h, w)), axis=0)).astype(np.float32)
    variable = LabelMap.from_arrays(idx, sc, num_classes=c, counts=counts, sort=False)
    fixed = LabelMap.from_arrays(idx, np.where(pad, np.float32(0.0), variable.scores), num_classes=c, sort=False)
    coords = (0.1, 0.2, 0.8, 0.7)
    np.testing.assert_array_equal(relabel_compat(variable, coords), relabel_compat(fixed, coords))


def test_pooling_re_exports_the_compat_module() -> None:
    from relabel_maps import compat, pooling

    assert pooling.relabel_compat is compat.relabel_compat
    assert pooling.to_official_coords is compat.to_official_coords
    assert pooling.from_official_coords is compat.from_official_coords
