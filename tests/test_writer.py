"""Writer: round trips, determinism, atomicity, shards, dictionary, argument checks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

import relabel_maps as rm
from relabel_maps import format as fmt
from relabel_maps.codecs import CODECS, RecordArrays, get_codec
from relabel_maps.errors import CorruptRecordError, InvalidArgumentError, InvalidLabelMapError, WriterError
from relabel_maps.reader import Reader
from relabel_maps.shards import open_index, write_index

C, K = 100, 4


def sample(seed: int, k: int = K, h: int = 6, w: int = 7, c: int = C):
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(c, k, replace=False) for _ in range(h * w)], 1).reshape(k, h, w)
    return idx, (rng.normal(size=(k, h, w)) * 4).astype(np.float32)


def write(path, n=20, seed=0, **kw):
    kw = {"num_classes": C, "k": K, "encoding": "f32", "level": 3, **kw}
    with rm.Writer(path, **kw) as w:
        for i in range(n):
            w.add(f"img/{i:04d}", *sample(seed + i))
    return w


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_roundtrip_sorts_each_location(tmp_path):
    p = tmp_path / "a.rlm"
    idx, sc = sample(1)
    with rm.Writer(p, num_classes=C, k=K, encoding="f32") as w:
        w.add("x", idx, sc, lse=np.full(sc.shape[1:], 9.0, np.float32))
    assert w.close() == [str(p)]
    with rm.open(p) as maps:
        lm = maps["x"]
        order = np.argsort(-sc, axis=0, kind="stable")
        np.testing.assert_array_equal(lm.indices, np.take_along_axis(idx, order, 0))
        np.testing.assert_array_equal(lm.scores, np.take_along_axis(sc, order, 0))
        assert lm.lse is not None and float(lm.lse[0, 0]) == 9.0 and lm.counts is None
        assert lm.key == "x" and lm.metadata["num_classes"] == C


def test_metadata_contents(tmp_path):
    p = tmp_path / "m.rlm"
    teacher = {"name": "tf_efficientnet_lite0", "input_size": [475, 475], "mean": [0.5] * 3}
    names = [f"c{i}" for i in range(C)]
    with rm.Writer(p, num_classes=C, k=K, encoding="f16", teacher=teacher, class_set="toy-100", class_names=names,
                   metadata={"acme.run": {"id": 3}, "extra": [1, 2]}) as w:
        w.add("a", *sample(0))
    meta = rm.open(p).metadata
    assert meta["format_version"] == "1.1" and meta["encoding"] == {"name": "f16"}
    assert meta["teacher"]["name"] == "tf_efficientnet_lite0" and meta["teacher"]["weights"] is None
    assert meta["teacher"]["grid"] is None and meta["class_names"] == names and meta["class_set"] == "toy-100"
    assert meta["acme.run"] == {"id": 3} and meta["extra"] == [1, 2]
    assert meta["compression"] == {"codec": "zstd", "level": 3, "dictionary": False}  # the default level
    assert meta["tool"] == {"name": "relabel-maps", "version": rm.__version__}


def test_default_encoding_is_compact_when_registered(tmp_path):
    p = tmp_path / "d.rlm"
    with rm.Writer(p, num_classes=C, k=K) as w:
        w.add("a", *sample(0))
    expected = "compact" if "compact" in CODECS else "f16"
    with rm.open(p) as maps:
        assert maps.metadata["encoding"]["name"] == expected
        assert maps["a"].shape == (K, 6, 7)



def test_default_encoding_for_probabilities_is_f16(tmp_path):
    p = tmp_path / "p.rlm"
    idx, sc = sample(2)
    probs = np.exp(sc - 12.0).astype(np.float32)  # small probabilities: ~1e-8 .. 1e-2
    with rm.Writer(p, num_classes=C, k=K, score_kind="probabilities") as w:
        w.add("a", idx, probs)
    with rm.open(p) as maps:
        assert maps.metadata["encoding"] == {"name": "f16"}
        got = maps["a"].scores
        want = np.sort(probs, axis=0)[::-1]
        # float16 keeps the relative precision of small values (a fixed absolute step would not)
        np.testing.assert_allclose(got, want, rtol=2.0**-10, atol=6e-8)
        assert float(np.abs(got - want).max()) > 0.0  # lossy: f16, not f32

@pytest.mark.parametrize("dictionary", [False, True, "auto"])
def test_same_adds_give_same_bytes(tmp_path, dictionary):
    a, b = tmp_path / "a.rlm", tmp_path / "b.rlm"
    for p in (a, b):
        write(p, n=40, dictionary=dictionary)
    assert sha(a) == sha(b)


def test_dictionary_is_embedded_and_used(tmp_path):
    p = tmp_path / "dict.rlm"
    rng = np.random.default_rng(0)
    base_idx, base_sc = sample(0, k=2, h=15, w=15)
    with rm.Writer(p, num_classes=C, k=2, encoding="f16", dictionary=True, level=3) as w:
        for i in range(300):  # near-identical records: a dictionary pays off
            sc = base_sc + rng.integers(0, 2, base_sc.shape).astype(np.float32) * 0.25
            w.add(f"k{i:03d}", base_idx, sc)
    with Reader(p) as maps:
        assert maps.metadata["compression"]["dictionary"] is True
        assert maps.dictionary.startswith(b"\x37\xa4\x30\xec")
        assert len(maps) == 300 and maps.verify() == []


def test_dictionary_dropped_when_it_does_not_help(tmp_path):
    p = tmp_path / "few.rlm"
    write(p, n=3, dictionary=True)  # too few samples to train
    with Reader(p) as maps:
        assert maps.metadata["compression"]["dictionary"] is False and maps.dictionary == b""


def test_refuses_to_overwrite(tmp_path):
    p = tmp_path / "a.rlm"
    write(p, n=2)
    before = sha(p)
    with pytest.raises(WriterError, match="exists"):
        rm.Writer(p, num_classes=C, k=K)
    assert sha(p) == before
    write(p, n=3, overwrite=True)
    assert len(rm.open(p)) == 3


def test_failed_write_leaves_nothing(tmp_path):
    p = tmp_path / "a.rlm"
    with pytest.raises(RuntimeError):
        with rm.Writer(p, num_classes=C, k=K, encoding="f32") as w:
            w.add("a", *sample(0))
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == []


def test_output_appears_only_on_close(tmp_path):
    p = tmp_path / "a.rlm"
    w = rm.Writer(p, num_classes=C, k=K, encoding="f32")
    w.add("a", *sample(0))
    w.flush()
    assert not p.exists()
    w.close()
    assert p.exists() and [f for f in os.listdir(tmp_path) if f.startswith(".")] == []
    assert w.close() == [str(p)]  # idempotent
    with pytest.raises(WriterError, match="closed"):
        w.add("b", *sample(1))


def test_duplicate_key(tmp_path):
    with rm.Writer(tmp_path / "a.rlm", num_classes=C, k=K) as w:
        w.add("a", *sample(0))
        with pytest.raises(WriterError, match="duplicate"):
            w.add("a", *sample(1))
        assert "a" in w and "b" not in w and w.keys() == ["a"] and len(w) == 1


def test_invalid_inputs(tmp_path):
    with rm.Writer(tmp_path / "a.rlm", num_classes=C, k=K) as w:
        idx, sc = sample(0)
        with pytest.raises(InvalidLabelMapError):
            w.add("shape", idx, sc[:, :3])
        bad = idx.copy()
        bad[0, 0, 0] = C
        with pytest.raises(InvalidLabelMapError):
            w.add("range", bad, sc)
        nan = sc.copy()
        nan[0, 0, 0] = np.nan
        with pytest.raises(InvalidLabelMapError):
            w.add("nan", idx, nan)
        with pytest.raises(InvalidLabelMapError, match="k=5"):
            w.add("k", *sample(0, k=5))
        with pytest.raises(InvalidLabelMapError):
            w.add("lse", idx, sc, lse=np.zeros((2, 2), np.float32))
        with pytest.raises(InvalidLabelMapError):
            w.add("counts", idx, sc, counts=np.zeros(sc.shape[1:], np.uint8))
        with pytest.raises(InvalidLabelMapError):
            w.add("big", *sample(0, k=1, h=4097, w=1))
        with pytest.raises(InvalidArgumentError):
            w.add(5, idx, sc)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            w.add("\ud800", idx, sc)
        with pytest.raises(InvalidArgumentError):
            w.add("x" * 70000, idx, sc)
        with pytest.raises(InvalidLabelMapError):
            w.add_map("m", rm.LabelMap(*[a.astype(np.uint16) if i == 0 else a for i, a in enumerate(sample(0))],
                                      num_classes=C + 1))
        assert len(w) == 0
        w.add("fewer-k", *sample(0, k=2))  # k' < k is fine


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0, "k": 1},
        {"num_classes": 10, "k": 11},
        {"num_classes": 1000, "k": 256},
        {"num_classes": 10, "k": 0},
        {"num_classes": 10, "k": 2, "score_kind": "softmax"},
        {"num_classes": 10, "k": 2, "max_records": 0},
        {"num_classes": 10, "k": 2, "max_bytes": -1},
        {"num_classes": 10, "k": 2, "dictionary": "yes"},
        {"num_classes": 10, "k": 2, "level": 40},
        {"num_classes": 10, "k": 2, "encoding": "nope"},
        {"num_classes": 10, "k": 2, "class_names": ["a"]},
        {"num_classes": 10, "k": 2, "metadata": {"plain": 1}},
        {"num_classes": 10, "k": 2, "metadata": {"bad.": 1}},
        {"num_classes": 10, "k": 2, "metadata": {"ns.x": float("nan")}},
        {"num_classes": 10, "k": 2, "metadata": {"ns.x": object()}},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(InvalidArgumentError):
        rm.Writer(tmp_path / "a.rlm", **kwargs)
    assert not (tmp_path / "a.rlm").exists()


def test_add_map_roundtrip(tmp_path):
    src = rm.LabelMap.from_arrays(*sample(3), num_classes=C, counts=np.full((6, 7), 2, np.uint8))
    with rm.Writer(tmp_path / "a.rlm", num_classes=C, k=K, encoding="f32") as w:
        w.add_map("m", src)
    with rm.open(tmp_path / "a.rlm") as maps:
        got = maps["m"]
        valid = src.valid()
        assert got.counts is not None and src.counts is not None and got.counts.tolist() == src.counts.tolist()
        np.testing.assert_array_equal(got.indices[valid], src.indices[valid])
        np.testing.assert_array_equal(got.scores[valid], src.scores[valid])
        assert not got.indices[~valid].any() and not got.scores[~valid].any()  # padding is canonical


def test_empty_dataset(tmp_path):
    with rm.Writer(tmp_path / "e.rlm", num_classes=C, k=K):
        pass
    with rm.open(tmp_path / "e.rlm") as maps:
        assert len(maps) == 0 and list(maps) == [] and maps.verify() == []


# ------------------------------------------------------------------------------- shards
def test_shard_rollover_by_records(tmp_path):
    w = write(tmp_path / "ds", n=25, max_records=10)
    names = ["ds-00001-of-00003.rlm", "ds-00002-of-00003.rlm", "ds-00003-of-00003.rlm"]
    assert sorted(os.listdir(tmp_path / "ds")) == names + ["ds.index.json"]
    assert w.close() == [str(tmp_path / "ds" / n) for n in names] + [str(tmp_path / "ds" / "ds.index.json")]
    index = json.loads((tmp_path / "ds" / "ds.index.json").read_text())
    assert [s["records"] for s in index["shards"]] == [10, 10, 5] and index["records"] == 25
    for s in index["shards"]:
        assert s["sha256"] == sha(tmp_path / "ds" / s["file"])
        assert s["bytes"] == (tmp_path / "ds" / s["file"]).stat().st_size
    assert index["metadata"] == rm.open(tmp_path / "ds" / names[0]).metadata
    with rm.open(tmp_path / "ds") as maps:
        assert len(maps) == 25 and maps.verify() == []
        assert list(maps) == [f"img/{i:04d}" for i in range(25)]
        np.testing.assert_array_equal(maps["img/0017"].scores, -np.sort(-sample(17)[1], axis=0))


def test_shard_rollover_by_bytes(tmp_path):
    write(tmp_path / "out.rlm", n=30, max_bytes=6000)
    files = sorted(p for p in os.listdir(tmp_path) if p.endswith(".rlm"))
    assert len(files) > 2 and all((m := fmt.SHARD_NAME_RE.match(f)) and m.group("name") == "out" for f in files)
    for f in files:
        assert (tmp_path / f).stat().st_size <= 6000
    with rm.open(tmp_path / "out.index.json") as maps:
        assert len(maps) == 30


def test_one_record_larger_than_max_bytes_gets_its_own_shard(tmp_path):
    write(tmp_path / "big", n=3, max_bytes=100)
    with open_index(tmp_path / "big" / "big.index.json") as maps:
        assert len(maps.shard_names) == 3 and len(maps) == 3


def test_sharded_output_is_deterministic(tmp_path):
    write(tmp_path / "a" / "ds", n=25, max_records=7)
    write(tmp_path / "b" / "ds", n=25, max_records=7)
    for name in os.listdir(tmp_path / "a" / "ds"):
        assert sha(tmp_path / "a" / "ds" / name) == sha(tmp_path / "b" / "ds" / name)


def test_sharded_overwrite_removes_old_shards(tmp_path):
    write(tmp_path / "ds", n=25, max_records=5)
    with pytest.raises(WriterError):
        write(tmp_path / "ds", n=5, max_records=5)
    write(tmp_path / "ds", n=6, max_records=5, overwrite=True)
    # the new generation takes names no file of the old one had; the old shards go after the new index
    gen2 = ["ds-00001-of-00002.g00002.rlm", "ds-00002-of-00002.g00002.rlm"]
    assert sorted(os.listdir(tmp_path / "ds")) == gen2 + ["ds.index.json"]
    write(tmp_path / "ds", n=6, max_records=5, overwrite=True)
    assert sorted(os.listdir(tmp_path / "ds")) == [n.replace("g00002", "g00003") for n in gen2] + ["ds.index.json"]
    with rm.open(tmp_path / "ds") as maps:
        assert len(maps) == 6 and maps.verify() == []


def test_write_index_for_merged_shards(tmp_path):
    write(tmp_path / "x-00001-of-00002.rlm", n=3)
    write(tmp_path / "x-00002-of-00002.rlm", n=4, seed=100)
    with rm.Writer(tmp_path / "y.rlm", num_classes=C, k=K, encoding="f32") as w:
        w.add("img/0000", *sample(0))
    index = write_index([tmp_path / "x-00001-of-00002.rlm", tmp_path / "x-00002-of-00002.rlm"],
                        tmp_path / "x.index.json")
    assert index["records"] == 7
    with pytest.raises(rm.FormatError, match="more than one shard"):
        with rm.open(tmp_path / "x.index.json") as maps:  # both hold img/0000..img/0002
            maps["img/0000"]
    with pytest.raises(InvalidArgumentError):
        write_index([tmp_path / "x-00001-of-00002.rlm"], tmp_path / "x.json")
    with pytest.raises(InvalidArgumentError):
        write_index([], tmp_path / "z.index.json")
    with pytest.raises(InvalidArgumentError):
        write_index([tmp_path / "y.rlm"], tmp_path / "sub" / "z.index.json")


def test_write_index_rejects_mixed_structure(tmp_path):
    write(tmp_path / "a.rlm", n=2)
    write(tmp_path / "b.rlm", n=2, encoding="f16")
    with pytest.raises(rm.FormatError):
        write_index([tmp_path / "a.rlm", tmp_path / "b.rlm"], tmp_path / "m.index.json")


def test_empty_and_unicode_keys(tmp_path):
    keys = ["", "🦊", "狐狸/001.jpg", "é", "e\u0301", "Z", "a b\tc", "\x00nul"]
    with rm.Writer(tmp_path / "u.rlm", num_classes=C, k=K, encoding="f32") as w:
        for i, key in enumerate(keys):
            w.add(key, *sample(i))
    with rm.open(tmp_path / "u.rlm") as maps:
        assert list(maps) == sorted(keys, key=lambda s: s.encode("utf-8"))
        assert list(maps)[0] == "" and "e\u0301" in maps and "\u00e9" in maps  # no Unicode normalisation
        for i, key in enumerate(keys):
            np.testing.assert_array_equal(maps[key].scores, -np.sort(-sample(i)[1], axis=0))


# ------------------------------------------------------------------------------- raw records
def test_add_raw_copies_records_byte_for_byte(tmp_path):
    src, dst = tmp_path / "src.rlm", tmp_path / "dst.rlm"
    write(src, n=6)
    with Reader(src) as r, rm.Writer(dst, num_classes=C, k=K, encoding="f32", level=3) as w:
        for key in r:
            w.add_raw(key, r.read_record(key), dictionary=r.dictionary, crc32=fmt.crc32(r.read_record(key)))
    assert sha(src) == sha(dst)  # same records, same options: the same file


def test_add_raw_recompresses_across_dictionaries(tmp_path):
    src, dst = tmp_path / "src.rlm", tmp_path / "dst.rlm"
    base_idx, base_sc = sample(0, k=2, h=15, w=15)
    rng = np.random.default_rng(1)
    with rm.Writer(src, num_classes=C, k=2, encoding="f16", dictionary=True, level=3) as w:
        for i in range(300):
            w.add(f"k{i:03d}", base_idx, base_sc + rng.integers(0, 2, base_sc.shape).astype(np.float32) * 0.25)
    with Reader(src) as r:
        assert r.dictionary
        with rm.Writer(dst, num_classes=C, k=2, encoding="f16", max_records=100) as w:
            with pytest.raises(CorruptRecordError):  # the frame needs the dictionary it was made with
                w.add_raw("k000", r.read_record("k000"))
            for key in list(r)[:120]:
                w.add_raw(key, r.read_record(key), dictionary=r.dictionary)
            w.add("plain", base_idx, base_sc)  # mixed with ordinary adds
        with rm.open(tmp_path / "dst.index.json") as out:
            assert len(out) == 121 and out.verify() == [] and out.metadata["compression"]["dictionary"] is False
            for key in list(r)[:120:17]:
                np.testing.assert_array_equal(out[key].scores, r[key].scores)
        with rm.Writer(tmp_path / "d2.rlm", num_classes=C, k=2, encoding="f16", dictionary=True) as w:
            for key in list(r)[:20]:  # dictionary not trained yet: bodies wait like ordinary adds
                w.add_raw(key, r.read_record(key), dictionary=r.dictionary)
        with rm.open(tmp_path / "d2.rlm") as out:
            assert list(out) == list(r)[:20] and out.verify() == []


def test_add_raw_rejects_records_that_do_not_fit(tmp_path):
    src = tmp_path / "src.rlm"
    write(src, n=2)
    with rm.open(src) as r:
        rec = r.read_record("img/0000")
    good: dict[str, Any] = dict(num_classes=C, k=K, encoding="f32")
    with rm.Writer(tmp_path / "o.rlm", **good) as w:
        flipped = bytearray(rec)
        flipped[-5] ^= 0xFF
        k_zero, unknown_flag = rec[:4] + b"\x00" + rec[5:], rec[:5] + b"\x80" + rec[6:]
        for bad in (rec[:5], rec[:-3], rec + b"\0", bytes(flipped), k_zero, unknown_flag):
            with pytest.raises(CorruptRecordError):  # header, truncation, trailing bytes, corruption, k=0, flags
                w.add_raw("x", bad)
        w.add_raw("reserved", rec[:6] + b"\x01\x00" + rec[8:])  # ignorable field: stored as 0
        with pytest.raises(CorruptRecordError, match="CRC32"):
            w.add_raw("x", rec, crc32=fmt.crc32(rec) ^ 1)
        with pytest.raises(InvalidArgumentError, match="dictionary"):
            w.add_raw("x", rec, dictionary=b"\x37\xa4\x30\xec" + bytes(100))
        with pytest.raises(InvalidArgumentError):
            w.add_raw("x", "text")  # type: ignore[arg-type]
        w.add_raw("x", rec)
        with pytest.raises(WriterError, match="duplicate"):
            w.add_raw("x", rec)
        assert "x" in w and len(w) == 2
    with rm.open(tmp_path / "o.rlm") as out:
        assert out.read_record("reserved") == rec == out.read_record("x")
    for other in (dict(good, k=K - 1), dict(good, num_classes=10), dict(good, encoding="f16")):
        with rm.Writer(tmp_path / "p.rlm", overwrite=True, **other) as w:
            with pytest.raises(CorruptRecordError):  # k too large, class index >= 10, wrong body size
                w.add_raw("x", rec)
    idx, sc = sample(3)
    sc = np.sort(sc, axis=0)  # ascending: valid bytes, but not a canonical label map
    body = get_codec("f32").encode(RecordArrays(idx.astype(np.uint16), sc, None, None))
    rec = fmt.pack_record_header(6, 7, K, 0) + zstandard.ZstdCompressor(write_content_size=True).compress(body)
    with rm.Writer(tmp_path / "o.rlm", overwrite=True, **good) as w:
        with pytest.raises(CorruptRecordError, match="descending"):
            w.add_raw("u", rec)
        assert "u" not in w
