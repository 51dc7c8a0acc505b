"""Merging datasets (ranks/runs) into one."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import relabel_maps
from relabel_maps.errors import InvalidArgumentError, WriterError
from relabel_maps.merge import merge

C = 20


def make(path, keys, *, seed=0, max_records=2, encoding="f16", teacher="t", **kw):
    rng = np.random.default_rng(seed)
    with relabel_maps.Writer(path, num_classes=C, k=2, encoding=encoding, teacher={"name": teacher},
                             max_records=max_records, **kw) as w:
        for key in keys:
            idx = np.stack([rng.choice(C, 2, replace=False) for _ in range(6)], -1).reshape(2, 2, 3)
            w.add(key, idx, -np.sort(-rng.normal(size=(2, 2, 3)).astype(np.float32), axis=0))
    return str(path)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_merge_ranks_copies_shards_byte_for_byte(tmp_path):
    r0 = make(tmp_path / "rank0", ["a0", "a1", "a2"], seed=0)
    r1 = make(tmp_path / "rank1", ["b0", "b1"], seed=1)
    result = merge([r0, r1], tmp_path / "all")
    assert (result.records, result.shards, result.duplicates, result.rewritten) == (5, 3, 0, 0)
    names = sorted(os.listdir(tmp_path / "all"))
    assert names == ["all-00001-of-00003.rlm", "all-00002-of-00003.rlm", "all-00003-of-00003.rlm", "all.index.json"]
    assert sha(tmp_path / "all" / "all-00001-of-00003.rlm") == sha(tmp_path / "rank0" / "rank0-00001-of-00002.rlm")
    assert sha(tmp_path / "all" / "all-00003-of-00003.rlm") == sha(tmp_path / "rank1" / "rank1-00001-of-00001.rlm")
    with relabel_maps.open(tmp_path / "all") as m, relabel_maps.open(r0) as a, relabel_maps.open(r1) as b:
        assert sorted(m) == ["a0", "a1", "a2", "b0", "b1"]
        assert m["a2"] == a["a2"] and m["b1"] == b["b1"]
        assert m.verify() == []


@pytest.mark.parametrize("policy", ["first", "last"])
def test_merge_duplicates(tmp_path, policy):
    r0 = make(tmp_path / "r0", ["x", "y", "z"], seed=0)
    r1 = make(tmp_path / "r1", ["y", "w"], seed=1)
    with pytest.raises(WriterError, match="1 key"):
        merge([r0, r1], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = merge([r0, r1], tmp_path / "out", on_duplicate=policy)
    assert result.records == 4 and result.duplicates == 1 and result.rewritten == 1
    winner = r0 if policy == "first" else r1
    with relabel_maps.open(tmp_path / "out") as m, relabel_maps.open(winner) as src:
        assert sorted(m) == ["w", "x", "y", "z"] and m["y"] == src["y"]
        assert m.verify() == []


def test_merge_with_links(tmp_path):
    r0 = make(tmp_path / "r0", ["x", "y", "z"], seed=0)
    result = merge([r0], tmp_path / "linked", link=True)
    assert result.records == 3
    src = os.stat(tmp_path / "r0" / "r0-00001-of-00002.rlm")
    dst = os.stat(tmp_path / "linked" / "linked-00001-of-00002.rlm")
    assert (src.st_ino, src.st_dev) == (dst.st_ino, dst.st_dev)


def test_merge_into_single_file_and_overwrite(tmp_path):
    r0 = make(tmp_path / "r0", ["x", "y"], seed=0)
    one = make(tmp_path / "one.rlm", ["z"], seed=2, max_records=None)
    out = tmp_path / "merged.rlm"
    assert merge([r0, one], out).records == 3
    with pytest.raises(WriterError, match="exists"):
        merge([r0, one], out)
    merge([r0, one], out, overwrite=True)
    with relabel_maps.open(out) as m, relabel_maps.open(one) as o:
        assert list(m) == ["x", "y", "z"] and m["z"] == o["z"]


def test_merge_incompatible_inputs(tmp_path):
    r0 = make(tmp_path / "r0", ["x"], seed=0)
    r1 = make(tmp_path / "r1", ["y"], seed=0, teacher="other")
    with pytest.raises(InvalidArgumentError, match="differ in teacher: name 't' against 'other'"):
        merge([r0, r1], tmp_path / "out")
    with pytest.raises(InvalidArgumentError, match="on_duplicate"):
        merge([r0], tmp_path / "out", on_duplicate="newest")
    with pytest.raises(InvalidArgumentError, match="given twice"):
        merge([r0, r0], tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        merge([tmp_path / "missing"], tmp_path / "out")


def test_item7_merge_keeps_a_merge_tmp_it_did_not_create(tmp_path):
    r0 = make(tmp_path / "r0", ["x", "y", "z"], seed=0)
    theirs = tmp_path / ".all.merge-tmp"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("not the merge's")
    merge([r0], tmp_path / "all")
    assert (theirs / "keep.txt").read_text() == "not the merge's"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".all.merge-tmp"]


def test_merge_overwrite_publishes_a_new_generation(tmp_path):
    """Merging over an existing dataset replaces it the way a writer does: new names, the index last,
    the old shards removed after; a failing merge leaves the old dataset as it was."""
    r0 = make(tmp_path / "r0", ["x", "y", "z"], seed=0)
    r1 = make(tmp_path / "r1", ["w"], seed=1)
    merge([r0], tmp_path / "all")
    with pytest.raises(WriterError, match="exists"):
        merge([r1], tmp_path / "all")
    result = merge([r1], tmp_path / "all", overwrite=True)
    assert sorted(os.listdir(tmp_path / "all")) == ["all-00001-of-00001.g00002.rlm", "all.index.json"]
    assert result.paths == [str(tmp_path / "all" / n) for n in ("all-00001-of-00001.g00002.rlm", "all.index.json")]
    with relabel_maps.open(tmp_path / "all") as m:
        assert list(m) == ["w"]
    with pytest.raises(InvalidArgumentError):  # fails while building: the dataset is untouched
        merge([r1, r1], tmp_path / "all", overwrite=True)
    assert sorted(os.listdir(tmp_path / "all")) == ["all-00001-of-00001.g00002.rlm", "all.index.json"]


@pytest.mark.parametrize("output", ["out", "out.rlm"])
def test_item8_merge_of_different_encodings_reencodes(tmp_path, output):
    """0.1.0 refused an f16 and a compact dataset with a message about the "label space"."""
    a = make(tmp_path / "a", ["x", "y", "z"], seed=0, encoding="f16")
    b = make(tmp_path / "b", ["w"], seed=1, encoding="compact", max_records=None)
    c = make(tmp_path / "c", ["v"], seed=2, encoding="f32", max_records=None)
    result = merge([a, b, c], tmp_path / output)
    assert result.records == 5 and result.reencoded == 2
    with relabel_maps.open(tmp_path / output) as m, relabel_maps.open(b) as mb, relabel_maps.open(c) as mc:
        assert m.metadata["encoding"]["name"] == "f16" and m.verify() == []
        assert sorted(m) == ["v", "w", "x", "y", "z"]
        for key, src in (("w", mb), ("v", mc)):
            assert np.array_equal(m[key].indices, src[key].indices)
            np.testing.assert_allclose(m[key].scores, src[key].scores, atol=2e-3)  # rounded to float16
    compact = merge([a, c], tmp_path / "compact", encoding="compact")
    assert compact.reencoded == 3  # a's two shards and c
    with relabel_maps.open(tmp_path / "compact") as m:
        assert m.metadata["encoding"]["name"] == "compact" and m.verify() == []


def test_item8_merge_of_mismatched_inputs_says_exactly_why(tmp_path):
    a = make(tmp_path / "a", ["x"], seed=0)
    with relabel_maps.Writer(tmp_path / "b.rlm", num_classes=C + 1, k=2, teacher={"name": "t"}) as w:
        w.add("y", np.array([[[0]], [[1]]]), np.array([[[1.0]], [[0.0]]], np.float32))
    with pytest.raises(InvalidArgumentError, match=r"differ in num_classes: 20 against 21"):
        merge([a, tmp_path / "b.rlm"], tmp_path / "out")
    named = make(tmp_path / "named", ["z"], seed=1, class_names=[f"c{i}" for i in range(C)])
    other = make(tmp_path / "other", ["w"], seed=1, class_names=[f"d{i}" for i in range(C)])
    with pytest.raises(InvalidArgumentError, match="other class_names"):
        merge([named, other], tmp_path / "out")
    result = merge([a, named], tmp_path / "out")  # names of one input, none in the other: kept
    with relabel_maps.open(tmp_path / "out") as m:
        assert m.metadata["class_names"][:2] == ["c0", "c1"] and result.rewritten == 1


def test_item8_merged_shard_parts_are_one_whole(tmp_path):
    """0.1.0 kept the first part's `annotate.part: [0, 2]` in the merge of both parts."""
    parts = [make(tmp_path / f"p{i}", [f"k{i}"], seed=i, metadata={"annotate.part": [i, 2]}) for i in range(2)]
    merge(parts, tmp_path / "all")
    with relabel_maps.open(tmp_path / "all") as m:
        assert m.metadata["annotate.part"] == [0, 1] and "merge.parts" not in m.metadata
        assert all(m.shard(s).metadata["annotate.part"] == [0, 1] for s in range(len(m.shard_names)))
    merge(parts[1:], tmp_path / "one")  # a single part stays what it is
    with relabel_maps.open(tmp_path / "one") as m:
        assert m.metadata["annotate.part"] == [1, 2]
    third = make(tmp_path / "p3", ["k3"], seed=3, metadata={"annotate.part": [1, 3]})
    merge([parts[0], third], tmp_path / "some.rlm")
    with relabel_maps.open(tmp_path / "some.rlm") as m:
        assert "annotate.part" not in m.metadata and m.metadata["merge.parts"] == [[0, 2], [1, 3]]
