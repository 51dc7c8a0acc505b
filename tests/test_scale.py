"""benchmarks/bench_scale.py end to end on a small dataset: every figure it reports is produced, the
batch writer's files equal the one-by-one writer's, and both reader variants find every key."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_scale  # noqa: E402

import relabel_maps as rm  # noqa: E402


def test_synthetic_maps_look_like_label_maps():
    maps = bench_scale.synthetic_maps(70)
    idx, sc = maps["indices"], maps["scores"]
    assert idx.shape == sc.shape == (70, 5, 15, 15) and idx.dtype == np.uint16 and sc.dtype == np.float32
    assert (np.diff(sc, axis=1) <= 0).all() and int(idx.max()) < 1000
    distinct = [len(np.unique(m)) for m in idx]
    assert 100 < np.mean(distinct) < 250  # many classes per image, as real teachers' maps
    assert 20 < np.mean([len(np.unique(m[0])) for m in idx]) < 80  # top-1 classes form regions
    assert 4 < sc[:, 0].mean() < 10
    assert bench_scale.key_of(1299) < bench_scale.key_of(1300) < bench_scale.key_of(1301)


@pytest.mark.slow
def test_bench_scale_small(tmp_path, capsys):
    out = tmp_path / "ds"
    result = bench_scale.main([
        "-n", "1500", "--maps", "synthetic", "--shard-records", "400", "--write-sample", "600",
        "--baseline-sample", "80", "--levels", "3", "--encodings", "compact,f16", "--lookups", "200",
        "--workers", "2", "--worker-lookups", "100", "--out", str(out), "--json", str(tmp_path / "r.json"),
    ])
    text = capsys.readouterr().out
    assert "add_many" in text and "random lookup, cold" in text and "worker 1" in text
    hows = [(w["encoding"], w["level"], w["how"]) for w in result["writes"]]
    assert hows[0] == ("compact", 19, "add, one by one (previous default level)")
    assert ("compact", 3, "add_many") in hows and ("f16", 3, "add_many") in hows
    assert all(w["records_per_s"] > 0 and w["bytes_per_record"] > 100 for w in result["writes"])
    assert result["dataset"]["records"] == 1500 and result["dataset"]["shards"] == 4
    assert [r["variant"] for r in result["reads"]] == ["new", "new-fileobj", "old"]
    for r in result["reads"]:
        assert r["shards"] == 4
        assert len(r["workers_kb"]) == 2 and all(w["USS"] > 0 and w["Pss"] > 0 for w in r["workers_kb"])
        assert r["parent_kb"]["Anonymous"] > 0 and r["warm_lookup_us"] > 0 and r["cold_lookup_us"] > 0
    with rm.open(out) as maps:
        assert len(maps) == 1500 and maps[bench_scale.key_of(1234)].key == bench_scale.key_of(1234)
    assert (tmp_path / "r.json").stat().st_size > 500
