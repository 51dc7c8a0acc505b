"""Reader and opener: mapping API, sources (path, file objects, factories), fork safety, shards."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import threading
import types
from typing import Any, BinaryIO, cast

import numpy as np
import pytest

import relabel_maps as rm
from relabel_maps.errors import CorruptRecordError, FormatError, InvalidArgumentError, MissingKeyError
from relabel_maps.reader import Reader
from relabel_maps.shards import ShardedReader, from_index, read_index_json

C, K, N = 40, 3, 12


def sample(i: int, h: int = 3, w: int = 4):
    rng = np.random.default_rng(i)
    idx = np.stack([rng.choice(C, K, replace=False) for _ in range(h * w)], 1).reshape(K, h, w)
    sc = -np.sort(-rng.normal(size=(K, h, w)).astype(np.float32), axis=0)
    return idx.astype(np.uint16), sc


KEYS = [f"n{i:02d}" for i in range(N)]


def open_reader(source: Any) -> Reader:
    maps = rm.open(source)
    assert isinstance(maps, Reader)
    return maps


def open_dataset(path: Any) -> ShardedReader:
    maps = rm.open(path)
    assert isinstance(maps, ShardedReader)
    return maps


@pytest.fixture()
def rlm(tmp_path):
    p = tmp_path / "a.rlm"
    with rm.Writer(p, num_classes=C, k=K, encoding="f32", level=1) as w:
        for i in reversed(range(N)):  # added out of order: the index is sorted anyway
            w.add(KEYS[i], *sample(i, h=2 + i % 3))
    return p


def test_mapping_api(rlm):
    with rm.open(rlm) as maps:
        assert isinstance(maps, Reader) and len(maps) == N
        assert list(maps) == KEYS and list(maps.keys()) == KEYS
        assert "n03" in maps and "zz" not in maps and 3 not in maps
        lm = maps["n05"]
        idx, sc = sample(5, h=2 + 5 % 3)
        np.testing.assert_array_equal(lm.indices, idx)
        np.testing.assert_array_equal(lm.scores, sc)
        assert lm.key == "n05" and lm.metadata is maps.metadata and lm.num_classes == C
        with pytest.raises(MissingKeyError, match="zz"):
            maps["zz"]
        with pytest.raises(KeyError):  # MissingKeyError is a KeyError
            maps["zz"]
        assert maps.get("zz") is None and maps.get("n01") == maps["n01"]
        key, lm0 = maps.at(0)
        assert key == "n00" and lm0 == maps["n00"] and maps.at(-1)[0] == "n11"
        with pytest.raises(InvalidArgumentError):
            maps.at(N)
        with pytest.raises(InvalidArgumentError):
            maps.at("0")  # type: ignore[arg-type]
        sizes = [maps.record_nbytes(k) for k in KEYS]
        assert all(s > 8 for s in sizes)
        assert sum(sizes) == maps.trailer.footer_offset - 16
        with pytest.raises(MissingKeyError):
            maps.record_nbytes("zz")
        assert dict(maps.items())["n02"] == maps["n02"]
        assert maps.verify() == [] and maps.verify(strict=True) == []
        assert "records=12" in repr(maps)


def test_records_are_independent_arrays(rlm):
    with rm.open(rlm) as maps:
        a = maps["n01"]
        a.scores[:] = 0
        assert maps["n01"].scores.any()


def test_closed_reader(rlm):
    maps = rm.open(rlm)
    maps.close()
    maps.close()
    with pytest.raises(InvalidArgumentError, match="closed"):
        maps["n01"]


@pytest.mark.parametrize("kind", ["bytesio", "file", "factory", "unbuffered"])
def test_file_object_sources(rlm, kind):
    data = rlm.read_bytes()
    src: Any
    if kind == "bytesio":
        src = io.BytesIO(data)
    elif kind == "file":
        src = open(rlm, "rb")
    elif kind == "unbuffered":
        src = open(rlm, "rb", buffering=0)
    else:
        src = lambda: io.BytesIO(data)  # noqa: E731
    with rm.open(src) as maps, rm.open(rlm) as ref:
        assert list(maps) == KEYS
        for k in KEYS:
            assert maps[k] == ref[k]
        assert maps.verify() == []
    if kind in ("file", "unbuffered"):
        src.close()


class _ShortReads(io.RawIOBase):
    """A file object that returns at most 7 bytes per read (like some network files)."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._b.seek(pos, whence)

    def read(self, n: int = -1) -> bytes:
        return self._b.read(min(n, 7) if n >= 0 else 7)


def test_short_reads(rlm):
    with rm.open(cast(BinaryIO, _ShortReads(rlm.read_bytes()))) as maps, rm.open(rlm) as ref:
        assert all(maps[k] == ref[k] for k in KEYS)


def test_text_mode_file_is_refused(rlm):
    with open(rlm, encoding="latin-1") as f:
        with pytest.raises(InvalidArgumentError, match="binary"):
            rm.open(io.StringIO(f.read()))  # type: ignore[arg-type]


def test_non_seekable_or_wrong_source(tmp_path):
    with pytest.raises(InvalidArgumentError):
        rm.open(12345)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        rm.open(tmp_path / "missing.rlm")
    with pytest.raises(InvalidArgumentError):
        rm.open(tmp_path / "x.rlm", bogus=1)


@pytest.mark.parametrize("dictionary", [False, True])
def test_threads_share_a_reader(rlm, tmp_path, dictionary):
    if dictionary:
        rlm = tmp_path / "dict.rlm"
        with rm.Writer(rlm, num_classes=C, k=K, encoding="f32", level=1, dictionary=True) as w:
            for i in range(N):
                w.add(KEYS[i], *sample(i, h=2 + i % 3))
        assert open_reader(rlm).dictionary
    maps = rm.open(io.BytesIO(rlm.read_bytes()))
    ref = {k: rm.open(rlm)[k] for k in KEYS}
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(200):
            k = KEYS[int(rng.integers(0, N))]
            if maps[k] != ref[k]:
                errors.append(k)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("source", ["path", "file", "folder"])
def test_fork_safety(rlm, tmp_path, source):
    if source == "folder":
        with rm.Writer(tmp_path / "ds", num_classes=C, k=K, encoding="f32", max_records=5) as w:
            for i in range(N):
                w.add(KEYS[i], *sample(i, h=2 + i % 3))
        maps = rm.open(tmp_path / "ds")
    elif source == "file":
        fileobj = open(rlm, "rb")
        maps = rm.open(fileobj)
    else:
        maps = rm.open(rlm)
    expected = {k: maps[k].scores.sum() for k in KEYS}  # parent used the handles before forking
    r, write_end = os.pipe()
    pids = []
    for child in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                ok = all(maps[k].scores.sum() == expected[k] for k in (KEYS * 3)[child::2])
                ok = ok and maps.verify() == []
                os.write(write_end, b"1" if ok else b"0")
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(write_end)
    assert os.read(r, 10) == b"11"
    os.close(r)
    assert all(maps[k].scores.sum() == expected[k] for k in KEYS)
    maps.close()
    if source == "file":
        fileobj.close()


def test_fork_through_multiprocessing(rlm):
    maps = rm.open(rlm)
    maps["n00"]
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        sums = pool.map(_score_sum, [(maps, k) for k in KEYS])
    assert sums == [float(maps[k].scores.sum()) for k in KEYS]


def _score_sum(args):
    maps, key = args
    return float(maps[key].scores.sum())


def test_pickle_path_readers(rlm, tmp_path):
    maps = rm.open(rlm)
    clone = pickle.loads(pickle.dumps(maps))
    assert clone["n04"] == maps["n04"]
    with pytest.raises(InvalidArgumentError):
        pickle.dumps(rm.open(io.BytesIO(rlm.read_bytes())))


def test_verify_on_read_option(rlm):
    with rm.open(rlm, verify=True) as maps:
        assert all(maps[k].key == k for k in KEYS)


# ------------------------------------------------------------------------------- datasets
@pytest.fixture()
def dataset(tmp_path):
    folder = tmp_path / "ds"
    with rm.Writer(folder, num_classes=C, k=K, encoding="f32", max_records=5) as w:
        for i in range(N):
            w.add(KEYS[(i * 5) % N], *sample((i * 5) % N))  # shards hold interleaved keys
    return folder


def test_dataset_mapping(dataset):
    for src in (dataset, dataset / "ds.index.json", str(dataset)):
        with rm.open(src) as maps:
            assert isinstance(maps, ShardedReader)
            assert len(maps) == N and list(maps) == KEYS and maps.shard_names == [
                "ds-00001-of-00003.rlm", "ds-00002-of-00003.rlm", "ds-00003-of-00003.rlm"]
            for k in KEYS:
                idx, sc = sample(int(k[1:]))
                np.testing.assert_array_equal(maps[k].scores, sc)
            positions = [maps.at(i)[0] for i in range(N)]
            assert sorted(positions) == KEYS and positions[:5] == sorted(positions[:5])
            assert maps.at(-1)[0] == positions[-1]
            assert "n99" not in maps and maps.get("n99") is None
            with pytest.raises(MissingKeyError):
                maps["n99"]
            assert maps.record_nbytes("n03") > 8 and maps.metadata["k"] == K
            assert maps.verify() == []


def test_dataset_len_and_at_need_no_shard_reads(dataset):
    with open_dataset(dataset) as maps:
        assert len(maps) == N and maps._open == {}
        maps.at(7)
        assert list(maps._open) == [1]


def test_dataset_lru_bounds_open_files(dataset):
    index = read_index_json((dataset / "ds.index.json").read_bytes())
    maps = from_index(index, lambda f: str(dataset / f), max_open=1)
    for k in KEYS:
        maps[k]
        assert len(maps._open) == 1
    assert list(maps) == KEYS


def test_folder_without_index(dataset, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for f in dataset.glob("*.rlm"):
        shutil.copy(f, folder / f.name)
    with rm.open(folder) as maps:
        assert len(maps) == N and list(maps) == KEYS


def test_folder_errors(dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no .rlm"):
        rm.open(tmp_path / "empty")
    shutil.copy(dataset / "ds.index.json", dataset / "other.index.json")
    with pytest.raises(FormatError, match="several"):
        rm.open(dataset)


def test_dataset_count_mismatch(dataset):
    index = json.loads((dataset / "ds.index.json").read_text())
    index["shards"][0]["records"] += 1
    (dataset / "ds.index.json").write_text(json.dumps(index))
    with rm.open(dataset) as maps:
        assert len(maps) == N + 1
        with pytest.raises(FormatError, match="index says"):
            maps.at(0)
        assert maps.verify()


def test_dataset_sha256_checked_by_verify(dataset):
    index = json.loads((dataset / "ds.index.json").read_text())
    index["shards"][1]["sha256"] = "0" * 64
    (dataset / "ds.index.json").write_text(json.dumps(index))
    with rm.open(dataset) as maps:
        problems = maps.verify()
        assert len(problems) == 1 and "SHA-256" in problems[0]


def test_dataset_structure_mismatch(dataset):
    index = json.loads((dataset / "ds.index.json").read_text())
    index["metadata"]["k"] = K - 1
    (dataset / "ds.index.json").write_text(json.dumps(index))
    with rm.open(dataset) as maps:
        with pytest.raises(FormatError, match="differs"):
            maps["n00"]


def test_dataset_pickles(dataset):
    maps = rm.open(dataset)
    maps["n01"]
    clone = pickle.loads(pickle.dumps(maps))
    assert clone["n01"] == maps["n01"] and len(clone) == N


def test_hf_urls_go_to_the_hub_module(monkeypatch):
    calls: list[tuple[str, dict[str, Any]]] = []
    fake = types.ModuleType("relabel_maps.hub")
    def open_hub(url: str, **kw: Any) -> str:
        calls.append((url, kw))
        return "opened"

    fake.open_hub = open_hub  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "relabel_maps.hub", fake)
    assert rm.open("hf://owner/repo@main/sub", verify=True, revision="x") == "opened"
    assert calls == [("hf://owner/repo@main/sub", {"verify": True, "revision": "x"})]


# ------------------------------------------------------------------------------- key ranges
def _counting_open(folder, index=None):
    index = index or read_index_json((folder / f"{folder.name}.index.json").read_bytes())
    resolved: list[str] = []

    def resolve(f: str) -> str:
        resolved.append(f)
        return str(folder / f)

    return from_index(index, resolve), resolved


@pytest.fixture()
def sorted_dataset(tmp_path):
    folder = tmp_path / "sd"
    with rm.Writer(folder, num_classes=C, k=K, encoding="f32", max_records=4) as w:
        for i in range(N):  # keys added in order: disjoint, sorted shard ranges
            w.add(KEYS[i], *sample(i))
    return folder


def test_index_lists_shard_key_ranges(dataset, sorted_dataset):
    index = json.loads((sorted_dataset / "sd.index.json").read_text())
    ranges = [(e["first_key"], e["last_key"]) for e in index["shards"]]
    assert ranges == [("n00", "n03"), ("n04", "n07"), ("n08", "n11")]
    index = json.loads((dataset / "ds.index.json").read_text())  # keys 0,5,10,3,8 | 1,6,11,4,9 | 2,7
    ranges = [(e["first_key"], e["last_key"]) for e in index["shards"]]
    assert ranges == [("n00", "n10"), ("n01", "n11"), ("n02", "n07")]


def test_key_lookup_opens_only_the_shard_holding_the_key(sorted_dataset):
    maps, resolved = _counting_open(sorted_dataset)
    assert resolved == [] and maps._disjoint
    np.testing.assert_array_equal(maps["n05"].scores, sample(5)[1])
    assert resolved == ["sd-00002-of-00003.rlm"] and list(maps._open) == [1]
    assert "n06" in maps and maps.record_nbytes("n07") > 8 and maps.shard_of("n04") == 1
    assert resolved == ["sd-00002-of-00003.rlm"]
    for missing in ("a", "n035", "zz", "", 3, ["n01"]):  # outside every range, or between two
        assert missing not in maps
    assert resolved == ["sd-00002-of-00003.rlm"]
    assert "n11" in maps and "n00" in maps
    assert resolved == ["sd-00002-of-00003.rlm", "sd-00003-of-00003.rlm", "sd-00001-of-00003.rlm"]
    with pytest.raises(MissingKeyError):
        maps["n05x"]  # within shard 2's range but absent
    assert len(resolved) == 3 and list(maps) == KEYS


def test_key_lookup_with_overlapping_ranges_opens_the_candidates(dataset):
    maps, resolved = _counting_open(dataset)
    assert not maps._disjoint
    assert maps["n09"].key == "n09"  # in n00..n10 and n01..n11 (both checked: a key must not be in two shards)
    assert resolved == ["ds-00001-of-00003.rlm", "ds-00002-of-00003.rlm"]
    maps2, resolved2 = _counting_open(dataset)
    assert "n005" not in maps2 and resolved2 == ["ds-00001-of-00003.rlm"]  # only n00..n10 may hold it
    assert "n105" not in maps2 and resolved2 == ["ds-00001-of-00003.rlm", "ds-00002-of-00003.rlm"]


def test_index_without_ranges_falls_back_to_opening_every_shard(sorted_dataset):
    index = json.loads((sorted_dataset / "sd.index.json").read_text())
    for e in index["shards"]:
        del e["first_key"], e["last_key"]
    (sorted_dataset / "sd.index.json").write_text(json.dumps(index))
    with open_dataset(sorted_dataset) as maps:
        assert maps._ranges is None and maps["n05"].key == "n05" and "zz" not in maps
        assert len(maps._open) == 3 and maps.verify() == []
    maps, resolved = _counting_open(sorted_dataset)
    maps["n01"]
    assert len(resolved) == 3


def test_index_range_disagreeing_with_the_shard_is_rejected(sorted_dataset):
    index = json.loads((sorted_dataset / "sd.index.json").read_text())
    index["shards"][1]["last_key"] = "n06"
    (sorted_dataset / "sd.index.json").write_text(json.dumps(index))
    with rm.open(sorted_dataset) as maps:
        with pytest.raises(FormatError, match="the index says"):
            maps["n05"]
        assert any("the index says" in p for p in maps.verify())


def test_folder_without_index_uses_ranges(sorted_dataset):
    (sorted_dataset / "sd.index.json").unlink()
    with open_dataset(sorted_dataset) as maps:
        assert maps._disjoint and maps["n09"].key == "n09" and list(maps._open) == [2]


def test_verify_reports_a_missing_shard(sorted_dataset):
    (sorted_dataset / "sd-00002-of-00003.rlm").unlink()
    with rm.open(sorted_dataset) as maps:
        problems = maps.verify()
        assert len(problems) == 1 and problems[0].startswith("sd-00002-of-00003.rlm: cannot read the shard file")
        assert maps["n01"].key == "n01"  # the other shards stay readable
        with pytest.raises(CorruptRecordError, match="cannot read"):
            maps.verify(strict=True)
    index = json.loads((sorted_dataset / "sd.index.json").read_text())
    for e in index["shards"]:
        del e["sha256"]
    (sorted_dataset / "sd.index.json").write_text(json.dumps(index))
    (sorted_dataset / "sd-00003-of-00003.rlm").write_bytes(b"not a shard")
    with rm.open(sorted_dataset) as maps:
        problems = maps.verify()
        assert [p.split(":")[0] for p in problems] == ["sd-00002-of-00003.rlm", "sd-00003-of-00003.rlm"]


def test_read_record_by_key_and_position(rlm, dataset):
    with open_reader(rlm) as maps:
        rec = maps.read_record("n03")
        assert rec == maps.read_record(3) and len(rec) == maps.record_nbytes("n03")
        with pytest.raises(MissingKeyError):
            maps.read_record("zz")
        with pytest.raises(InvalidArgumentError):
            maps.read_record(N)
    with open_dataset(dataset) as ds:
        s = ds.shard_of("n03")
        assert ds.read_record("n03") == ds.shard(s).read_record("n03")


# ------------------------------------------------------------------------------- accessors, check
def test_reader_accessors(rlm, tmp_path):
    with Reader(rlm) as r:
        assert r.key_range == ("n00", "n11") and not r.closed and r.path == str(rlm)
        assert r.position_of("n03") == 3 and r.position_of("zz") is None and r.position_of(3) is None
        assert r.record_nbytes(3) == r.record_nbytes("n03") and r.key_at(-1) == "n11"
    assert r.closed and r.path is None
    with rm.Writer(tmp_path / "empty.rlm", num_classes=C, k=K):
        pass
    with Reader(tmp_path / "empty.rlm") as r:
        assert r.key_range is None


def test_check_names_the_shard_of_each_problem(sorted_dataset):
    last = sorted_dataset / "sd-00003-of-00003.rlm"
    with Reader(last) as r:
        offset = r.record_offset(0) + r.record_nbytes(0) - 3  # inside the frame of the shard's first record
    data = bytearray(last.read_bytes())
    data[offset] ^= 0xFF
    last.write_bytes(bytes(data))
    index = json.loads((sorted_dataset / "sd.index.json").read_text())
    for e in index["shards"]:
        del e["sha256"]
    (sorted_dataset / "sd.index.json").write_text(json.dumps(index))
    calls: list[int] = []
    with rm.open(sorted_dataset) as maps:
        problems = maps.check(progress=calls.append)
        assert calls == [1, 1, 1] and [p.where for p in problems] == ["sd-00003-of-00003.rlm"]
        assert "CRC32" in problems[0].message and maps.verify() == [str(problems[0])]
        assert str(problems[0]) == f"sd-00003-of-00003.rlm: {problems[0].message}"
    with Reader(last) as r:
        assert [p.where for p in r.check()] == [""] and r.verify()[0].startswith("CRC32")


def test_check_keeps_checking_a_replaced_shard(dataset):
    shutil.copyfile(dataset / "ds-00001-of-00003.rlm", dataset / "ds-00002-of-00003.rlm")
    with rm.open(dataset) as maps:
        problems = maps.check()
    assert [p.where for p in problems] == ["ds-00002-of-00003.rlm"] * 2  # no duplicate keys reported
    assert problems[0].message == "SHA-256 differs from the one in the index"
    assert "the index says" in problems[1].message


# ------------------------------------------------------------------------------- keys at scale
def _many_keys_file(path, n: int) -> list[str]:
    keys = [f"train/n{i // 1000:08d}/img_{i:06d}.JPEG" for i in range(n)]
    idx = np.zeros((n, 1, 1, 1), np.uint16) + (np.arange(n) % C).reshape(n, 1, 1, 1).astype(np.uint16)
    with rm.Writer(path, num_classes=C, k=1, encoding="f32", level=1) as w:
        w.add_many(keys, idx, np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1))
    return keys


@pytest.mark.parametrize("source", ["path", "file", "bytesio"])
def test_keys_are_not_held_as_python_objects(tmp_path, source):
    """Lookups keep no str, int or dict entry per key: the key index costs 8 bytes per key (plus,
    for a source that cannot be read by position, the index bytes themselves)."""
    import gc
    import tracemalloc

    n = 20_000
    keys = _many_keys_file(tmp_path / "big.rlm", n)
    data = (tmp_path / "big.rlm").read_bytes()
    rng = np.random.default_rng(0)
    probes = [keys[int(i)] for i in rng.integers(0, n, 2000)]
    gc.collect()
    tracemalloc.start()
    try:
        fh = open(tmp_path / "big.rlm", "rb") if source == "file" else None
        maps = open_reader({"path": tmp_path / "big.rlm", "file": fh, "bytesio": io.BytesIO(data)}[source])
        assert all(key in maps for key in probes) and "nope" not in maps
        assert maps[probes[0]].scores[0, 0, 0] == keys.index(probes[0])
        assert maps.position_of(probes[1]) == keys.index(probes[1])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    index_bytes = n * 24 + sum(len(k) for k in keys)
    budget = 8 * n + 64 * 1024 + (index_bytes if source == "bytesio" else 0)
    assert held < budget, (held, budget)  # a list + dict + int lists of the keys would hold > 100 bytes each
    maps.close()
    if fh is not None:
        fh.close()


def test_crc32_collisions_are_told_apart(tmp_path):
    import zlib

    assert zlib.crc32(b"plumless") == zlib.crc32(b"buckeroo")  # two keys, one hash
    with rm.Writer(tmp_path / "c.rlm", num_classes=C, k=K, encoding="f32", level=1) as w:
        for i, key in enumerate(["buckeroo", "plumless", "x"]):
            w.add(key, *sample(i))
    with rm.open(tmp_path / "c.rlm") as maps:
        assert maps["plumless"] == maps.at(1)[1] and maps["buckeroo"] == maps.at(0)[1]
        assert maps.position_of("plumless") == 1 and "plumles" not in maps and "\ud800" not in maps


def test_keys_iterate_in_chunks(tmp_path, monkeypatch):
    import relabel_maps.reader as reader_module

    keys = _many_keys_file(tmp_path / "k.rlm", 1000)
    monkeypatch.setattr(reader_module, "_CHUNK", 37)
    with open_reader(tmp_path / "k.rlm") as maps:
        assert list(maps) == keys and all(type(k) is str for k in maps)
        assert maps.key_slice(990, 2000) == keys[990:] and maps.key_slice(5, 5) == []
        assert maps.key_at(-1) == keys[-1] and maps.key_range == (keys[0], keys[-1])
        assert maps.record_offset(0) == 16 and maps.record_offset(keys[1]) == 16 + maps.record_nbytes(0)
        assert maps.verify() == []


def test_a_key_in_two_shards_is_refused_when_iterating(tmp_path):
    folder = tmp_path / "dup"
    for name, ks in (("a.rlm", ["k1", "k3"]), ("b.rlm", ["k2", "k3"])):
        folder.mkdir(exist_ok=True)
        with rm.Writer(folder / name, num_classes=C, k=K, encoding="f32", level=1) as w:
            for i, key in enumerate(ks):
                w.add(key, *sample(i))
    with rm.open(folder) as maps:
        assert isinstance(maps, ShardedReader) and not maps._disjoint
        assert maps["k1"].key == "k1" and maps["k2"].key == "k2"
        with pytest.raises(FormatError, match="'k3' appears in more than one shard"):
            list(maps)
        with pytest.raises(FormatError, match="more than one shard"):
            maps["k3"]
        assert any("'k3' appears in more than one shard" in p for p in maps.verify())


def test_dataset_iteration_merges_overlapping_shards(dataset):
    with open_dataset(dataset) as maps:
        assert not maps._disjoint and list(maps) == KEYS
        assert maps._ranges is not None and maps._ranges[0] == ("n00", "n10") and len(maps._ranges) == 3
    index = json.loads((dataset / "ds.index.json").read_text())
    for e in index["shards"]:
        del e["first_key"], e["last_key"]
    (dataset / "ds.index.json").write_text(json.dumps(index))
    with open_dataset(dataset) as maps:  # no ranges listed: read from the shards, once
        assert list(maps) == KEYS and maps._ranges is not None and "n07" in maps and "n1" not in maps


def test_key_ranges_find_the_same_shards_as_comparing_every_range():
    import random

    from relabel_maps.keys import KeyRanges

    rng = random.Random(3)
    alphabet = ["train/n0", "train/n1", "a", "x", "é", "\x00", "0", "1", "2", "9"]

    def word() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))

    for trial in range(300):
        edges = sorted({word() for _ in range(rng.randint(1, 12))}, key=str.encode)
        if trial % 2:  # disjoint ranges in order, some shards empty
            pairs = [(edges[i], edges[i]) for i in range(len(edges))]
            pairs = [p if rng.random() < 0.8 else None for p in pairs]
        else:  # overlapping ranges
            pairs = [tuple(sorted((rng.choice(edges), rng.choice(edges)), key=str.encode)) for _ in edges]
        ranges = KeyRanges(pairs)
        assert [ranges[s] for s in range(len(pairs))] == pairs
        for key in edges + [word() for _ in range(20)]:
            expected = [s for s, p in enumerate(pairs) if p is not None and p[0] <= key <= p[1]]
            assert ranges.candidates(key) == expected, (pairs, key)
