"""Pooling: reference RoIAlign vs torchvision, sparse vs dense, flips, fill modes, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from relabel_maps import InvalidArgumentError, InvalidBoxError, LabelMap
from relabel_maps.pooling import (
    FILL_MODES,
    box_weights,
    check_box,
    check_boxes,
    check_pool_options,
    check_size,
    check_temperature,
    default_fill,
    pool,
    pool_dense,
    resolve_fill,
    roi_align,
)

C = 50


def make_map(seed: int, *, k: int = 5, h: int = 15, w: int = 15, c: int = C, kind: str = "logits",
             lse: bool = True, counts: bool = False) -> LabelMap:
    """A top-k map cut from a random dense logit map (so lse is exact)."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(c, h, w)) * 2.0).astype(np.float32)
    idx = np.argsort(-logits, axis=0, kind="stable")[:k]
    sc = np.take_along_axis(logits, idx, axis=0)
    lse_arr = np.log(np.exp(logits.astype(np.float64)).sum(axis=0)).astype(np.float32)
    cnt = rng.integers(1, k + 1, size=(h, w)).astype(np.uint8) if counts else None
    if kind == "probabilities":
        sc = np.exp(sc - lse_arr).astype(np.float32)
    if cnt is not None:  # padding entries: index 0, score 0
        pad = np.arange(k)[:, None, None] >= cnt[None]
        idx = np.where(pad, 0, idx)
        sc = np.where(pad, 0.0, sc).astype(np.float32)
    return LabelMap.from_arrays(idx, sc, num_classes=c, score_kind=kind,
                                lse=lse_arr if lse and kind == "logits" else None, counts=cnt)


def random_box(rng: np.random.Generator) -> tuple[float, float, float, float]:
    x0, y0 = rng.uniform(-0.3, 0.9, size=2)
    return (x0, y0, x0 + rng.uniform(0.02, 0.8), y0 + rng.uniform(0.02, 0.8))


# ------------------------------------------------------------------------------------------ RoIAlign
def _grid_boxes(rng: np.random.Generator, h: int, w: int, n: int) -> list[tuple[float, float, float, float]]:
    """Random boxes in grid coordinates: inside, partly and wholly outside, tiny, zero-size."""
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:  # inside
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            out.append((x0, y0, x0 + rng.uniform(0, w - x0), y0 + rng.uniform(0, h - y0)))
        elif kind == 1:  # partly outside
            x0, y0 = rng.uniform(-3, w), rng.uniform(-3, h)
            out.append((x0, y0, x0 + rng.uniform(0.1, w + 3), y0 + rng.uniform(0.1, h + 3)))
        elif kind == 2:  # wholly outside (left/top, right/bottom)
            s = rng.choice([-1, 1])
            x0 = -8 + rng.uniform(-2, 1) if s < 0 else w + rng.uniform(0.5, 4)
            y0 = rng.uniform(-2, h)
            out.append((x0, y0, x0 + rng.uniform(0.1, 5), y0 + rng.uniform(0.1, 5)))
        elif kind == 3:  # tiny
            x0, y0 = rng.uniform(-1, w), rng.uniform(-1, h)
            out.append((x0, y0, x0 + rng.uniform(1e-4, 0.3), y0 + rng.uniform(1e-4, 0.3)))
        elif kind == 4:  # degenerate but valid: zero width and/or height, integer and half-integer corners
            x0, y0 = float(rng.integers(-1, w + 1)) + rng.choice([0.0, 0.5]), float(rng.integers(-1, h + 1))
            out.append((x0, y0, x0 + rng.choice([0.0, 1.0]), y0 + rng.choice([0.0, 0.5, 2.0])))
        else:  # large, covering everything
            out.append((rng.uniform(-6, 0), rng.uniform(-6, 0), rng.uniform(w, w + 6), rng.uniform(h, h + 6)))
    return out


@pytest.mark.parametrize("h,w", [(15, 15), (9, 13), (1, 6), (7, 1)])
def test_roi_align_matches_torchvision(h: int, w: int) -> None:
    torch = pytest.importorskip("torch")
    tv_roi_align = pytest.importorskip("torchvision.ops").roi_align
    rng = np.random.default_rng(h * 100 + w)
    x = rng.normal(size=(6, h, w)).astype(np.float32)
    xt = torch.from_numpy(x)[None]
    configs = [(al, sr, size, scale) for al in (True, False) for sr in (-1, 1, 2, 3)
               for size in (1, 2, 4, 7, (2, 5)) for scale in (1.0, 0.5)]
    boxes = _grid_boxes(rng, h, w, 320)
    worst, n = 0.0, 0
    for box in boxes:  # a random setting for each box
        al, sr, size, scale = configs[int(rng.integers(len(configs)))]
        scaled = tuple(v / scale for v in box)  # grid coords before the spatial scale
        ours = roi_align(x, scaled, size, spatial_scale=scale, sampling_ratio=sr, aligned=al)
        ref = tv_roi_align(xt, [torch.tensor([scaled], dtype=torch.float32)], size, scale, sr, al)[0].numpy()
        assert ours.shape == ref.shape and ours.dtype == np.float32
        worst = max(worst, float(np.abs(ours.astype(np.float64) - ref).max()))
        n += 1
    assert n == 320  # 4 grids x 320 = 1,280 boxes in all
    assert worst <= 1e-6, worst


def test_box_weights_are_roi_align() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8, 10)).astype(np.float32)
    for box in [(0.5, 1.0, 7.5, 6.0), (-2.0, -1.0, 3.0, 2.0), (9.9, 7.9, 12.0, 9.0)]:
        wts = box_weights(box, 8, 10, (3, 2), sampling_ratio=2, aligned=False)
        assert wts.shape == (6, 80)
        ref = roi_align(x, box, (3, 2), sampling_ratio=2, aligned=False).reshape(3, 6)
        np.testing.assert_allclose(x.reshape(3, 80).astype(np.float64) @ wts.T, ref, atol=1e-6)


def test_whole_box_is_exact_spatial_mean() -> None:
    lm = make_map(2)
    z = lm.dense().astype(np.float64).mean(axis=(1, 2))
    p = np.exp(z - z.max())
    np.testing.assert_allclose(pool(lm), p / p.sum(), atol=1e-7)
    np.testing.assert_allclose(box_weights((0, 0, 15, 15), 15, 15).sum(), 1.0, atol=1e-12)


def test_sample_points_outside_contribute_zero() -> None:
    x = np.ones((1, 4, 4), dtype=np.float32)
    # half the bin's 4 samples lie left of x = -1: they count as 0, the others clamp onto column 0
    out = roi_align(x, (-3.0, 0.0, 1.0, 4.0), 1, sampling_ratio=2, aligned=False)
    assert out[0, 0, 0] == pytest.approx(0.5)
    assert roi_align(x, (10.0, 10.0, 12.0, 12.0), 2)[0].tolist() == [[0.0, 0.0], [0.0, 0.0]]


# ------------------------------------------------------------------------------------------ independent reference
def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


def reference_pool(lm: LabelMap, box, *, flip=False, size=1, fill=None, temperature=1.0, sampling_ratio=-1):
    """Dense per-location values built here from the fill-mode formulas, pooled with torchvision."""
    import torch
    from torchvision.ops import roi_align as tv_roi_align
    fill = fill or ("uniform" if lm.score_kind == "probabilities" else "zero")
    k, h, w = lm.shape
    c = lm.num_classes
    valid = lm.valid()
    s = lm.scores.astype(np.float64)
    dense = np.zeros((c, h, w))
    if fill == "zero":
        vals = s / temperature
    elif fill == "topk":
        if lm.score_kind == "logits":
            z = np.where(valid, s / temperature, -np.inf)
            e = np.exp(z - z.max(axis=0))
        else:
            e = np.where(valid, s ** (1.0 / temperature), 0.0)
        vals = e / e.sum(axis=0)
    else:
        p = s if lm.lse is None else np.exp(s - lm.lse.astype(np.float64))
        p = np.where(valid, p, 0.0)
        n = valid.sum(axis=0)
        dense[:] = np.where(n < c, np.maximum(1.0 - p.sum(axis=0), 0.0) / np.maximum(c - n, 1), 0.0)
        vals = p
    for r in range(k):
        for i in range(h):
            for j in range(w):
                if valid[r, i, j]:
                    dense[lm.indices[r, i, j], i, j] = vals[r, i, j]
    x0, y0, x1, y1 = box
    roi = torch.tensor([[0, x0 * w, y0 * h, x1 * w, y1 * h]], dtype=torch.float32)  # float32, as ReLabel
    pooled = tv_roi_align(torch.from_numpy(dense.astype(np.float32))[None], roi, size, 1.0, sampling_ratio, True)[0]
    pooled = pooled.double().reshape(c, size * size)
    if fill == "zero":
        out = torch.softmax(pooled, dim=0)
    else:
        tot = pooled.sum(dim=0)
        out = torch.where(tot > 0, pooled / tot, torch.full_like(pooled, 1.0 / c))
    probs = out.reshape(c, size, size).numpy()
    if flip:
        probs = probs[:, :, ::-1]
    return probs[:, 0, 0] if size == 1 else probs


MAPS: dict[str, dict[str, Any]] = {
    "logits+lse": dict(seed=3),
    "logits+lse+counts": dict(seed=4, counts=True),
    "probabilities+counts": dict(seed=5, kind="probabilities", counts=True),
    "logits-nonsquare": dict(seed=6, h=9, w=13, k=3),
}


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("fill", ["zero", "topk", "uniform"])
def test_sparse_matches_dense_and_torchvision(name: str, fill: str) -> None:
    lm = make_map(**MAPS[name])
    rng = np.random.default_rng(len(name) * 7 + len(fill))
    worst_dense, worst_ref = 0.0, 0.0
    for i in range(24):
        size = (1, 2, 3, 7)[i % 4]
        flip = bool(i % 3 == 0)
        temperature = 1.0 if fill == "uniform" else (1.0, 0.5, 2.0)[i % 3]
        sr = (-1, 2)[i % 2]
        box = random_box(rng)
        kw: dict[str, Any] = dict(flip=flip, size=size, fill=fill, temperature=temperature, sampling_ratio=sr)
        got = pool(lm, box, **kw)
        assert got.dtype == np.float32 and got.shape == ((C,) if size == 1 else (C, size, size))
        worst_dense = max(worst_dense, float(np.abs(got - pool_dense(lm, box, **kw)).max()))
        if _has_torchvision():  # the independent reference needs torchvision; pool vs pool_dense does not
            worst_ref = max(worst_ref, float(np.abs(got - reference_pool(lm, box, **kw)).max()))
        np.testing.assert_allclose(got.reshape(C, -1).sum(axis=0), 1.0, atol=1e-5)
    assert worst_dense <= 1e-6, worst_dense
    assert worst_ref <= 1e-6, worst_ref


def test_labelmap_pool_delegates() -> None:
    lm = make_map(7)
    box = (0.1, 0.2, 0.6, 0.9)
    np.testing.assert_array_equal(lm.pool(box, size=2, fill="topk"), pool(lm, box, size=2, fill="topk"))


def test_default_fill_per_score_kind() -> None:
    lg, pr = make_map(8), make_map(8, kind="probabilities")
    box = (0.2, 0.1, 0.9, 0.7)
    np.testing.assert_array_equal(pool(lg, box), pool(lg, box, fill="zero"))
    np.testing.assert_array_equal(pool(pr, box), pool(pr, box, fill="uniform"))


def test_uniform_with_lse_equals_probability_map() -> None:
    lg = make_map(9)
    pr = LabelMap(lg.indices, np.exp(lg.scores - lg.lse).astype(np.float32), num_classes=C, score_kind="probabilities")
    box = (0.05, 0.3, 0.55, 0.95)
    np.testing.assert_allclose(pool(lg, box, fill="uniform", size=3), pool(pr, box, size=3), atol=1e-6)


# ------------------------------------------------------------------------------------------ flips
def _mirror(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a[..., ::-1])


def flipped(lm: LabelMap) -> LabelMap:
    indices, scores = np.ascontiguousarray(lm.indices[..., ::-1]), np.ascontiguousarray(lm.scores[..., ::-1])
    return LabelMap(indices, scores, num_classes=lm.num_classes, score_kind=lm.score_kind,
                    lse=_mirror(lm.lse), counts=_mirror(lm.counts))


@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.parametrize("fill", ["zero", "topk", "uniform"])
def test_flip_equals_pooling_the_mirrored_map(size: int, fill: str) -> None:
    lm = make_map(10, h=9, w=12, counts=True)
    rng = np.random.default_rng(size)
    for _ in range(6):
        x0, y0, x1, y1 = random_box(rng)
        got = pool(lm, (x0, y0, x1, y1), flip=True, size=size, fill=fill)
        # the mirrored crop is the crop (1 - x1, y0, 1 - x0, y1) of the mirrored image
        ref = pool(flipped(lm), (1 - x1, y0, 1 - x0, y1), size=size, fill=fill)
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_flip_mirrors_bins_only() -> None:
    lm = make_map(11)
    box = (0.1, 0.2, 0.8, 0.7)
    np.testing.assert_array_equal(pool(lm, box, flip=True), pool(lm, box))
    np.testing.assert_array_equal(pool(lm, box, flip=True, size=4), pool(lm, box, size=4)[:, :, ::-1])


# ------------------------------------------------------------------------------------------ boxes outside
@pytest.mark.parametrize("fill", ["zero", "topk", "uniform"])
def test_wholly_outside_box_gives_uniform(fill: str) -> None:
    lm = make_map(12)
    for box in [(1.2, 0.1, 1.5, 0.5), (-0.9, -0.9, -0.2, -0.3)]:
        np.testing.assert_allclose(pool(lm, box, fill=fill), np.full(C, 1.0 / C), atol=1e-7)


def test_partly_outside_box_uses_roialign_semantics() -> None:
    lm = make_map(13)
    box = (-0.2, 0.3, 0.4, 1.3)
    x0, y0, x1, y1 = box
    z = roi_align(lm.dense(), (x0 * 15, y0 * 15, x1 * 15, y1 * 15), 1)[:, 0, 0].astype(np.float64)
    p = np.exp(z - z.max())
    np.testing.assert_allclose(pool(lm, box), p / p.sum(), atol=1e-6)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "box",
    [(0.5, 0.1, 0.5, 0.9), (0.6, 0.1, 0.5, 0.9), (0.1, 0.9, 0.5, 0.2), (0.0, 0.0, float("nan"), 1.0),
     (0.0, float("-inf"), 1.0, 1.0), (0.0, 0.0, 1.0), (0, 0, 1, 1, 1), "abcd", None, ("a", 0, 1, 1),
     (0.0, 0.0, 1e40, 1.0), (-1e7, 0.0, 1e7, 1.0)],  # float32 overflow; absurdly many sample points
)
def test_invalid_boxes(box) -> None:
    lm = make_map(14)
    with pytest.raises(InvalidBoxError):
        pool(lm, box)
    with pytest.raises(InvalidBoxError):
        lm.pool(box)


@pytest.mark.parametrize(
    "kwargs",
    [dict(fill="softmax"), dict(fill=""), dict(temperature=0.0), dict(temperature=-1.0),
     dict(temperature=float("nan")), dict(temperature=float("inf")), dict(temperature="hot"), dict(size=0),
     dict(size=2.0), dict(size=True), dict(sampling_ratio=1.5), dict(fill="uniform", temperature=2.0)],
)
def test_invalid_arguments(kwargs) -> None:
    with pytest.raises(InvalidArgumentError):
        pool(make_map(15), (0.1, 0.1, 0.9, 0.9), **kwargs)


def test_uniform_needs_probabilities() -> None:
    lm = make_map(16, lse=False)
    with pytest.raises(InvalidArgumentError, match="lse"):
        pool(lm, fill="uniform")
    assert pool(lm, fill="topk").shape == (C,)


def test_check_box_and_check_boxes_agree() -> None:
    """The batch check (used by the torch pooler) accepts and refuses the same boxes as the single one."""
    good = [(0.0, 0.0, 1.0, 1.0), (-0.5, 0.2, 0.1, 0.3), (0.1, 0.1, 0.1000001, 5.0)]
    bad = [(0.5, 0.1, 0.5, 0.9), (0.6, 0.1, 0.5, 0.9), (0.1, 0.9, 0.5, 0.2), (0.0, 0.0, float("nan"), 1.0),
           (0.0, float("-inf"), 1.0, 1.0)]  # fmt: skip
    assert [check_box(b) for b in good] == [tuple(map(float, b)) for b in good]
    out = check_boxes(np.array(good))
    assert out.dtype == np.float64 and out.tolist() == [list(b) for b in good]
    assert check_boxes(np.zeros((0, 4))).shape == (0, 4)
    for b in bad:
        with pytest.raises(InvalidBoxError):
            check_box(b)
        with pytest.raises(InvalidBoxError, match="box 1 "):
            check_boxes(np.array([good[0], b]))
    for shape in [(4,), (2, 3), (1, 2, 4)]:
        with pytest.raises(InvalidBoxError, match="shape"):
            check_boxes(np.zeros(shape))
    with pytest.raises(InvalidBoxError):
        check_boxes(np.array([["a", "b", "c", "d"]]))
    malformed: list[Any] = [(0.0, 0.0, 1.0), "abcd", None, ("a", 0, 1, 1)]
    for m in malformed:
        with pytest.raises(InvalidBoxError):
            check_box(m)


def test_option_checks() -> None:
    assert resolve_fill(None, "logits") == default_fill("logits") == "zero"
    assert resolve_fill(None, "probabilities") == default_fill("probabilities") == "uniform"
    assert [resolve_fill(f, "logits") for f in FILL_MODES] == list(FILL_MODES)
    assert check_temperature(2) == 2.0 and isinstance(check_temperature(2), float)
    assert check_size(3) == 3 and check_size(np.int64(2)) == 2
    assert check_pool_options(None, 0.5, score_kind="logits", has_lse=False) == ("zero", 0.5)
    assert check_pool_options(None, 1.0, score_kind="probabilities", has_lse=False) == ("uniform", 1.0)
    assert check_pool_options("uniform", 1.0, score_kind="logits", has_lse=True) == ("uniform", 1.0)
    with pytest.raises(InvalidArgumentError, match="fill"):
        resolve_fill("softmax", "logits")
    for t in (0.0, -1.0, float("nan"), float("inf"), "hot", None):
        with pytest.raises(InvalidArgumentError, match="temperature"):
            check_temperature(t)  # type: ignore[arg-type]
    for size in (0, -1, 2.0, True, "2"):
        with pytest.raises(InvalidArgumentError, match="size"):
            check_size(size)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="temperature must be 1.0"):
        check_pool_options("uniform", 2.0, score_kind="probabilities", has_lse=False)
    with pytest.raises(InvalidArgumentError, match="lse"):
        check_pool_options("uniform", 1.0, score_kind="logits", has_lse=False)


def test_roi_align_rejects_bad_input() -> None:
    with pytest.raises(InvalidArgumentError):
        roi_align(np.zeros((4, 4), np.float32), (0, 0, 1, 1), 1)
    with pytest.raises(InvalidArgumentError):
        roi_align(np.zeros((1, 4, 4), np.float32), (0, 0, 1, 1), 0)
    with pytest.raises(InvalidBoxError):
        roi_align(np.zeros((1, 4, 4), np.float32), (0, 0, float("nan"), 1), 1)


# ------------------------------------------------------------------------------------------ sparse path properties
def test_sparse_path_never_builds_the_dense_map() -> None:
    import tracemalloc

    rng = np.random.default_rng(17)
    c, k, h, w = 60000, 5, 15, 15  # a dense float64 (C, H, W) array would be ~108 MB
    idx = np.stack([rng.choice(c, size=k, replace=False) for _ in range(h * w)], axis=1).reshape(k, h, w)
    lm = LabelMap.from_arrays(idx, rng.normal(size=(k, h, w)).astype(np.float32), num_classes=c,
                              lse=np.full((h, w), 12.0, np.float32))
    cases: list[dict[str, Any]] = [{}, {"size": 4, "fill": "topk"}, {"size": 2, "fill": "uniform"}]
    for kwargs in cases:
        tracemalloc.start()
        out = pool(lm, (0.1, 0.1, 0.8, 0.9), **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * out.nbytes + 4_000_000, (kwargs, peak)


def test_sparse_matches_dense_random_shapes() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.given(
        seed=st.integers(0, 2**32 - 1), k=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 9),
        c=st.integers(6, 300), size=st.integers(1, 5), fill=st.sampled_from(["zero", "topk", "uniform"]),
        counts=st.booleans(), flip=st.booleans(), sr=st.sampled_from([-1, 1, 3]),
        box=st.tuples(st.floats(-0.5, 1.2), st.floats(-0.5, 1.2), st.floats(0.001, 1.5), st.floats(0.001, 1.5)),
    )
    def check(seed, k, h, w, c, size, fill, counts, flip, sr, box) -> None:
        lm = make_map(seed % 10_000, k=k, h=h, w=w, c=c, counts=counts)
        b = (box[0], box[1], box[0] + box[2], box[1] + box[3])
        kw = dict(flip=flip, size=size, fill=fill, sampling_ratio=sr)
        np.testing.assert_allclose(pool(lm, b, **kw), pool_dense(lm, b, **kw), atol=1e-6, rtol=0)

    check()
