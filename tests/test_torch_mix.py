"""CutMix/Mixup with label maps, and the soft-target loss."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from torchvision.transforms import v2  # noqa: E402

from relabel_maps import LabelMap  # noqa: E402
from relabel_maps.errors import InvalidArgumentError  # noqa: E402
from relabel_maps.pooling import pool_dense  # noqa: E402
from relabel_maps.torch import (  # noqa: E402
    CropBox,
    LabelMapMixup,
    RandomHorizontalFlipWithBox,
    RandomResizedCropWithBox,
    SoftTargetCrossEntropy,
    cut_boxes,
    mix_soft_targets,
    soft_target_cross_entropy,
    stack_label_maps,
)


def test_cut_boxes_compose_crop_and_cut_with_flips():
    boxes = torch.tensor([[0.2, 0.1, 0.6, 0.5], [0.2, 0.1, 0.6, 0.5]], dtype=torch.float64)
    flips = torch.tensor([False, True])
    got = cut_boxes(boxes, flips, torch.tensor([0.0, 0.5, 0.25, 1.0]))
    # unflipped: left quarter of the crop; flipped: the displayed left quarter is the crop's right quarter
    np.testing.assert_allclose(got.numpy(), [[0.2, 0.3, 0.3, 0.5], [0.5, 0.3, 0.6, 0.5]])


def _smooth_map(seed, c=4, h=8, w=12) -> LabelMap:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    phase = rng.uniform(0, 3, 4)
    fields = np.stack([4 * xx + phase[0], 4 * yy - phase[1], 3 * np.sin(3 * xx + 2 * yy + phase[2]), -2 * xx * yy])[:c]
    idx = np.broadcast_to(np.arange(c)[:, None, None], (c, h, w))
    return LabelMap.from_arrays(idx, fields.astype(np.float32), num_classes=c)


def test_cutmix_targets_equal_brute_force_region_averages():
    """Two images' high-resolution logit fields go through random crops and flips; image 0 gets a
    patch of image 1. Expected target: area-weighted mix of the softmax of the mean logits over the
    visible base region and over the pasted region, measured on the transformed pixels."""
    torch.manual_seed(0)
    maps = [_smooth_map(0), _smooth_map(1)]
    hires = [torch.nn.functional.interpolate(torch.from_numpy(m.dense())[None], size=(64, 96), mode="bilinear",
                                             align_corners=False)[0] for m in maps]
    t = v2.Compose([RandomResizedCropWithBox(32, scale=(0.2, 1.0)), RandomHorizontalFlipWithBox()])
    for trial in range(6):
        seen, boxes, flips = [], [], []
        for h in hires:
            img, box = t(h, CropBox.from_size(96, 64))
            b, f = box.to_frame()
            seen.append(img), boxes.append(b), flips.append(f)
        batch = stack_label_maps(maps, boxes, flips)
        x0, y0, x1, y1 = (4, 8, 20, 28) if trial % 2 else (0, 0, 16, 32)
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        area = float(inside.float().mean())
        perm = torch.tensor([1, 0])
        got = mix_soft_targets(batch, perm, 1 - area, (x0 / 32, y0 / 32, x1 / 32, y1 / 32))
        for i in range(2):
            base = torch.softmax(seen[i][:, ~inside].mean(1), 0)
            pasted = torch.softmax(seen[int(perm[i])][:, inside].mean(1), 0)
            expect = (1 - area) * base + area * pasted
            np.testing.assert_allclose(got[i].numpy(), expect.numpy(), atol=0.01)
        assert torch.allclose(got.sum(1), torch.ones(2), atol=1e-5)


def test_mixup_and_edge_cases():
    maps = [_smooth_map(2), _smooth_map(3), _smooth_map(4)]
    batch = stack_label_maps(maps, [(0.1, 0.1, 0.9, 0.9)] * 3, [False, True, False])
    soft = batch.pool()
    perm = torch.tensor([2, 0, 1])
    mixed = (0.3 * soft + 0.7 * soft[perm]).numpy()
    np.testing.assert_allclose(mix_soft_targets(batch, perm, 0.3).numpy(), mixed, atol=1e-6)
    np.testing.assert_allclose(mix_soft_targets(batch, perm, 1.0, (0, 0, 0, 0)).numpy(), soft.numpy(), atol=1e-6)
    np.testing.assert_allclose(mix_soft_targets(batch, perm, 0.0, (0, 0, 1, 1)).numpy(), soft[perm].numpy(), atol=1e-6)


def test_cutmix_on_probability_maps_stays_normalised():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(6), (4, 4))[..., :3].transpose(2, 0, 1).astype(np.float32)
    idx = np.stack([rng.choice(8, 3, replace=False) for _ in range(16)], 1).reshape(3, 4, 4)
    lm = LabelMap.from_arrays(idx, probs, num_classes=8, score_kind="probabilities")
    batch = stack_label_maps([lm, lm], [(0, 0, 1, 1), (0.2, 0.2, 0.7, 0.9)], [False, True])
    got = mix_soft_targets(batch, torch.tensor([1, 0]), 0.75, (0.5, 0.5, 1.0, 1.0))
    assert torch.allclose(got.sum(1), torch.ones(2), atol=1e-5) and bool((got >= 0).all())
    # pasted quarter of sample 1 (flipped): its displayed bottom-right is the crop's bottom-left
    inner = pool_dense(lm, (0.2, 0.55, 0.45, 0.9))
    whole = pool_dense(lm)
    outer = (whole - 0.25 * pool_dense(lm, (0.5, 0.5, 1.0, 1.0))) / 0.75
    np.testing.assert_allclose(got[0].numpy(), 0.75 * outer / outer.sum() + 0.25 * inner, atol=1e-5)


def test_mixer_mixes_images_and_targets_consistently():
    maps = [_smooth_map(s) for s in range(4)]
    batch = stack_label_maps(maps, [(0.0, 0.0, 1.0, 1.0), (0.1, 0.2, 0.5, 0.9), (0.3, 0.3, 0.9, 0.8), (0, 0.5, 0.5, 1)],
                             [False, True, False, True])
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()
    mixer = LabelMapMixup(mixup_alpha=0.0, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(1))
    twin = LabelMapMixup(mixup_alpha=0.0, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(1))
    lam, cut = twin.sample(16, 16)
    mixed, target = mixer(images, batch)
    x0, y0, x1, y1 = cut
    assert (x1 - x0) * (y1 - y0) > 0
    assert float(mixed[0, 0, y0, x0]) == 3.0 and abs(float(mixed[0].mean()) - 3 * (1 - lam)) < 1e-5
    expect = mix_soft_targets(batch, torch.tensor([3, 2, 1, 0]), lam, (x0 / 16, y0 / 16, x1 / 16, y1 / 16))
    np.testing.assert_allclose(target.numpy(), expect.numpy(), atol=1e-6)
    mixup = LabelMapMixup(mixup_alpha=0.4, cutmix_alpha=0.0, generator=torch.Generator().manual_seed(2))
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()
    mixed, target = mixup(images, batch)
    lam = 1 - float(mixed[0, 0, 0, 0]) / 3
    expect = mix_soft_targets(batch, torch.tensor([3, 2, 1, 0]), lam).numpy()
    np.testing.assert_allclose(target.numpy(), expect, atol=1e-5)
    off = LabelMapMixup(prob=0.0)
    images2 = images.clone()
    _, target = off(images2, batch)
    assert torch.equal(images2, images)
    np.testing.assert_allclose(target.numpy(), batch.pool().numpy(), atol=1e-6)


def test_soft_target_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    soft = torch.softmax(torch.randn(5, 7), 1)
    target = torch.tensor([0, 3, 6, 2, 1])
    ref = torch.nn.functional.cross_entropy(logits, soft)
    assert torch.allclose(soft_target_cross_entropy(logits, soft), ref, atol=1e-6)
    mixed = 0.7 * soft + 0.3 * torch.nn.functional.one_hot(target, 7)
    reference = torch.nn.functional.cross_entropy(logits, mixed)
    assert torch.allclose(soft_target_cross_entropy(logits, soft, target, alpha=0.3), reference, atol=1e-6)
    hard = soft_target_cross_entropy(logits, soft, target, alpha=1.0, reduction="none")
    assert torch.allclose(hard, torch.nn.functional.cross_entropy(logits, target, reduction="none"), atol=1e-6)
    module = SoftTargetCrossEntropy(alpha=0.3)
    assert torch.allclose(module(logits, soft, target), soft_target_cross_entropy(logits, soft, target, 0.3))
    # dense (B, C, S, S) targets with dense predictions
    dense_logits, dense_soft = torch.randn(2, 7, 3, 3), torch.softmax(torch.randn(2, 7, 3, 3), 1)
    assert torch.allclose(soft_target_cross_entropy(dense_logits, dense_soft, reduction="sum"),
                          torch.nn.functional.cross_entropy(dense_logits, dense_soft, reduction="sum"), atol=1e-5)
    with pytest.raises(InvalidArgumentError):
        soft_target_cross_entropy(logits, soft, alpha=0.5)
    with pytest.raises(InvalidArgumentError):
        soft_target_cross_entropy(logits, soft, target, alpha=2.0)
    with pytest.raises(InvalidArgumentError):
        soft_target_cross_entropy(logits, soft, reduction="avg")


def test_mixer_mixes_hard_targets_alike():
    maps = [_smooth_map(s) for s in range(3)]
    batch = stack_label_maps(maps)
    images = torch.zeros(3, 3, 8, 8)
    target = torch.tensor([0, 1, 3])
    mixer = LabelMapMixup(mixup_alpha=0.0, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(3))
    lam, _ = LabelMapMixup(mixup_alpha=0.0, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(3)).sample(8, 8)
    _, soft, hard = mixer(images, batch, target)
    one_hot = torch.nn.functional.one_hot(target, 4).float()
    np.testing.assert_allclose(hard.numpy(), (lam * one_hot + (1 - lam) * one_hot.flip(0)).numpy(), atol=1e-6)
    logits = torch.randn(3, 4)
    expect = torch.nn.functional.cross_entropy(logits, 0.6 * soft + 0.4 * hard)
    assert torch.allclose(soft_target_cross_entropy(logits, soft, hard, alpha=0.4), expect, atol=1e-6)
