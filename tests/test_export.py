"""Parquet export: read back with pyarrow, equal to the library's pooled values."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import relabel_maps  # noqa: E402
from relabel_maps.export import export_parquet, parquet_bytes, summarize  # noqa: E402

C = 25


def make(path, *, names=True, score_kind="logits", lse=False, n=6, seed=0, grids=((4, 5), (3, 3))):
    rng = np.random.default_rng(seed)
    with relabel_maps.Writer(
        path, num_classes=C, k=4, score_kind=score_kind, encoding="f32",
        class_names=[f"n{i}" for i in range(C)] if names else None, max_records=4,
    ) as w:
        for i in range(n):
            h, wd = grids[i % len(grids)]
            idx = np.stack([rng.choice(C, 4, replace=False) for _ in range(h * wd)], -1).reshape(4, h, wd)
            if score_kind == "probabilities":
                p = rng.dirichlet(np.ones(C), size=h * wd)
                top = -np.sort(-p, axis=1)[:, :4]
                scores = top.T.reshape(4, h, wd).astype(np.float32)
            else:
                scores = -np.sort(-rng.normal(0, 2, (4, h, wd)).astype(np.float32), axis=0)
            extra = {"lse": (np.log(np.exp(scores).sum(0) + (C - 4) * np.exp(-3.0))).astype(np.float32)} if lse else {}
            w.add(f"k{i}", idx, scores, **extra)
    return str(path)


def expected_rows(path, top=5, fill=None):
    rows = []
    with relabel_maps.open(path) as maps:
        for key in maps:
            lm = maps[key]
            p = lm.pool((0, 0, 1, 1), fill=fill)
            order = np.argsort(-p, kind="stable")[:top]
            rows.append((key, lm.height, lm.width, order.tolist(), p[order], float(np.mean(lm.top1() == order[0]))))
    return rows


@pytest.mark.parametrize("fill", [None, "topk"])
def test_parquet_equals_library(tmp_path, fill):
    path = make(tmp_path / "maps")
    out = tmp_path / "s.parquet"
    with relabel_maps.open(path) as maps:
        assert export_parquet(maps, out, fill=fill) == 6
    table = pq.read_table(out)
    assert table.column_names == [
        "key", "grid_height", "grid_width", "top_classes", "top_scores", "top_names", "top1_share"
    ]
    assert table.schema.field("top_scores").type == pa.list_(pa.float32())
    got = table.to_pylist()
    for row, (key, h, w, classes, scores, share) in zip(got, expected_rows(path, fill=fill), strict=True):
        assert row["key"] == key and (row["grid_height"], row["grid_width"]) == (h, w)
        assert row["top_classes"] == classes
        np.testing.assert_allclose(row["top_scores"], scores, rtol=0, atol=1e-7)
        assert row["top_names"] == [f"n{c}" for c in classes]
        assert row["top1_share"] == pytest.approx(share, abs=1e-7)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_parquet_probabilities_no_names_top3(tmp_path):
    path = make(tmp_path / "p", names=False, score_kind="probabilities")
    data = parquet_bytes(relabel_maps.open(path), top=3)
    table = pq.read_table(io.BytesIO(data))
    assert "top_names" not in table.column_names
    for row, exp in zip(table.to_pylist(), expected_rows(path, top=3), strict=True):
        assert row["top_classes"] == exp[3]
        np.testing.assert_allclose(row["top_scores"], exp[4], atol=1e-7)


def test_export_is_deterministic(tmp_path):
    path = make(tmp_path / "m")
    with relabel_maps.open(path) as maps:
        assert parquet_bytes(maps) == parquet_bytes(maps)


def test_summarize_share_and_errors():
    idx = np.zeros((1, 2, 2), np.uint16)
    idx[0, 0, 0] = 3
    lm = relabel_maps.LabelMap.from_arrays(idx, np.full((1, 2, 2), 4.0, np.float32), num_classes=C)
    s = summarize(lm, top=2)
    assert s["top_classes"][0] == 0 and s["top1_share"] == pytest.approx(0.75)
    with pytest.raises(relabel_maps.InvalidArgumentError):
        summarize(lm, top=0)
