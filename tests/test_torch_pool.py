"""Batched pooling on torch tensors (relabel_maps.torch.pool_batch) against the numpy reference."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from relabel_maps import LabelMap  # noqa: E402
from relabel_maps.errors import InvalidArgumentError, InvalidBoxError, InvalidLabelMapError  # noqa: E402
from relabel_maps.pooling import pool_dense  # noqa: E402
from relabel_maps.torch import LabelMapBatch, pool_batch, stack_label_maps  # noqa: E402

C = 40


def make_map(rng, kind="logits", counts=False, lse=True, k=5, h=7, w=9, num_classes=C):
    idx = np.stack([rng.choice(num_classes, k, replace=False) for _ in range(h * w)], 1).reshape(k, h, w)
    if kind == "probabilities":
        sc = rng.dirichlet(np.ones(k + 3), (h, w))[..., :k].transpose(2, 0, 1)
    else:
        sc = rng.normal(0, 3, (k, h, w))
    cnt = rng.integers(1, k + 1, (h, w)) if counts else None
    log_z = np.log(np.exp(sc).sum(0) + (num_classes - k) * 0.05) if (lse and kind == "logits") else None
    return LabelMap.from_arrays(
        idx, sc.astype(np.float32), num_classes=num_classes, score_kind=kind, lse=log_z, counts=cnt
    )


def random_boxes(rng, n):
    boxes = []
    for _ in range(n):
        x0, x1 = sorted(rng.uniform(0, 1, 2))
        y0, y1 = sorted(rng.uniform(0, 1, 2))
        boxes.append((x0, y0, max(x1, x0 + 1e-3), max(y1, y0 + 1e-3)))
    boxes[0] = (0.0, 0.0, 1.0, 1.0)
    return boxes


CASES = [
    (kind, counts, fill, size, temperature)
    for kind in ("logits", "probabilities")
    for counts in (False, True)
    for fill in ("zero", "topk", "uniform")
    for size in (1, 2, 3, 7)
    for temperature in ((1.0,) if fill == "uniform" else (1.0, 2.5))
]


def check_against_reference(device, kind, counts, fill, size, temperature, seed):
    rng = np.random.default_rng(seed)
    maps = [make_map(rng, kind, counts) for _ in range(6)]
    boxes = random_boxes(rng, len(maps))
    flips = [bool(v) for v in rng.integers(0, 2, len(maps))]
    batch = stack_label_maps(maps, boxes, flips, device=device)
    got = batch.pool(size=size, fill=fill, temperature=temperature).cpu().numpy()
    ref = np.stack([
        pool_dense(m, b, flip=f, size=size, fill=fill, temperature=temperature)
        for m, b, f in zip(maps, boxes, flips, strict=True)
    ])
    assert got.shape == ((len(maps), C) if size == 1 else (len(maps), C, size, size))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind,counts,fill,size,temperature", CASES)
def test_pool_batch_matches_numpy_reference(kind, counts, fill, size, temperature):
    seed = zlib.crc32(repr((kind, counts, fill, size)).encode())  # the same in every process, unlike hash()
    check_against_reference("cpu", kind, counts, fill, size, temperature, seed=seed)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,counts,fill,size,temperature", CASES[::3])
def test_pool_batch_matches_numpy_reference_cuda(kind, counts, fill, size, temperature):
    check_against_reference("cuda", kind, counts, fill, size, temperature, seed=7)


def test_many_random_boxes_and_sampling_ratios():
    rng = np.random.default_rng(3)
    lm = make_map(rng, h=15, w=15)
    n = 200
    boxes = random_boxes(rng, n)
    # boxes reaching the grid edges and tiny boxes exercise the clamping rules
    boxes[1] = (0.0, 0.0, 1e-3, 1e-3)
    boxes[2] = (0.999, 0.5, 1.0, 1.0)
    flips = rng.integers(0, 2, n).astype(bool)
    batch = stack_label_maps([lm] * n, boxes, flips)
    for sampling_ratio in (-1, 1, 2):
        for size in (1, 4):
            got = batch.pool(size=size, sampling_ratio=sampling_ratio).numpy()
            ref = np.stack([
                pool_dense(lm, b, flip=bool(f), size=size, sampling_ratio=sampling_ratio)
                for b, f in zip(boxes, flips, strict=True)
            ])
            np.testing.assert_allclose(got, ref, atol=1e-5)


def test_flip_mirrors_bins_only():
    rng = np.random.default_rng(1)
    lm = make_map(rng)
    batch = stack_label_maps([lm, lm], [(0.1, 0.2, 0.8, 0.9)] * 2, [False, True])
    one = batch.pool(size=1)
    np.testing.assert_allclose(one[0].numpy(), one[1].numpy(), atol=1e-6)
    three = batch.pool(size=3)
    np.testing.assert_allclose(three[1].numpy(), three[0].flip(-1).numpy(), atol=1e-6)


def test_whole_box_is_spatial_mean_of_logits():
    rng = np.random.default_rng(2)
    lm = make_map(rng, h=6, w=6)
    got = pool_batch(
        torch.from_numpy(lm.indices.astype(np.int64))[None], torch.from_numpy(lm.scores)[None],
        torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, C, activate=False,
    )[0]
    np.testing.assert_allclose(got.numpy(), lm.dense().mean((1, 2)), atol=1e-5)


def test_pool_batch_no_dense_intermediate_scales_with_entries():
    # 10k classes would need a 10k x 15 x 15 dense map per sample; the sparse path only allocates the output
    rng = np.random.default_rng(4)
    lm = make_map(rng, h=15, w=15, num_classes=10_000)
    batch = stack_label_maps([lm] * 4)
    out = batch.pool()
    ref = pool_dense(lm)
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-5)


def test_lse_required_for_uniform_logits_and_errors():
    rng = np.random.default_rng(5)
    lm = make_map(rng, lse=False)
    batch = stack_label_maps([lm])
    with pytest.raises(InvalidArgumentError, match="lse"):
        batch.pool(fill="uniform")
    with pytest.raises(InvalidArgumentError):
        batch.pool(fill="nope")
    with pytest.raises(InvalidArgumentError):
        batch.pool(temperature=0.0)
    with pytest.raises(InvalidArgumentError):
        batch.pool(size=0)
    with pytest.raises(InvalidBoxError):
        batch.pool(boxes=torch.tensor([[0.5, 0.0, 0.4, 1.0]]))
    with pytest.raises(InvalidBoxError):
        batch.pool(boxes=torch.tensor([[float("nan"), 0.0, 0.4, 1.0]]))
    with pytest.raises(InvalidBoxError):
        batch.pool(boxes=torch.zeros(2, 4))
    with pytest.raises(InvalidLabelMapError):
        pool_batch(batch.indices[0], batch.scores[0], batch.boxes, None, C)


def test_stack_pads_ragged_k_and_moves_devices():
    rng = np.random.default_rng(6)
    a, b = make_map(rng, k=3), make_map(rng, k=5)
    batch = stack_label_maps([a, b], [(0, 0, 1, 1), (0.2, 0.2, 0.6, 0.7)])
    assert batch.indices.shape == (2, 5, 7, 9) and batch.counts is not None
    assert batch.counts[0].max().item() == 3 and len(batch) == 2
    got = batch.to("cpu").pool().numpy()
    np.testing.assert_allclose(got[0], pool_dense(a), atol=1e-5)
    np.testing.assert_allclose(got[1], pool_dense(b, (0.2, 0.2, 0.6, 0.7)), atol=1e-5)
    with pytest.raises(InvalidArgumentError):
        stack_label_maps([a, make_map(rng, h=3, w=3)])
    with pytest.raises(InvalidArgumentError):
        stack_label_maps([])
    assert isinstance(batch, LabelMapBatch)


def test_peaked_logit_maps_stay_within_1e5():
    # teacher logits of ~35 make the softmax sensitive to accumulation error: the float32 default holds 1e-5
    rng = np.random.default_rng(8)
    maps = []
    for _ in range(16):
        idx = np.stack([np.r_[7, rng.choice(np.arange(8, 1000), 4, replace=False)] for _ in range(225)], 1)
        sc = rng.normal(15, 2, (5, 225)) + np.r_[10, 0, 0, 0, 0][:, None]  # class 7 on top everywhere
        scores = sc.reshape(5, 15, 15).astype(np.float32)
        maps.append(LabelMap.from_arrays(idx.reshape(5, 15, 15), scores, num_classes=1000))
    boxes = random_boxes(rng, len(maps))
    got = stack_label_maps(maps, boxes).pool().numpy()
    ref = np.stack([pool_dense(m, b) for m, b in zip(maps, boxes, strict=True)])
    assert ref.max() > 0.9
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # float64 accumulation follows the reference's own rounding more closely still; float32 holds
    # because the softmax runs over the contiguous class dimension, where torch's CPU softmax is accurate
    exact = stack_label_maps(maps, boxes).pool(dtype=torch.float64).numpy()
    np.testing.assert_allclose(exact, ref, atol=1e-6)
    ref = np.stack([pool_dense(m, b, fill="topk") for m, b in zip(maps, boxes, strict=True)])  # float32 by default
    np.testing.assert_allclose(stack_label_maps(maps, boxes).pool(fill="topk").numpy(), ref, atol=1e-5)
