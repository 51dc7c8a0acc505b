"""One named test per reader reject rule of spec/FORMAT.md §10 (R1-R27)."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

import relabel_maps as rm
from relabel_maps import format as fmt
from relabel_maps import pooling
from relabel_maps.codecs import FLAG_COUNTS, FLAG_LSE, RecordArrays, get_codec
from relabel_maps.errors import CorruptRecordError, FormatError, InvalidArgumentError, UnsupportedVersionError
from relabel_maps.shards import ShardedReader, read_index_json

C, K, H, W = 50, 3, 4, 5
KEYS = ["a", "b", "c"]


def metadata(**changes):
    meta = {
        "format_version": "1.0",
        "num_classes": C,
        "k": K,
        "score_kind": "logits",
        "encoding": {"name": "f32"},
        "compression": {"codec": "zstd", "level": 3, "dictionary": False},
        "class_set": None,
        "class_names": None,
        "teacher": None,
        "tool": {"name": "test", "version": "0"},
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not ...}


def arrays(seed=0, counts=False, lse=False):
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.permutation(C)[:K] for _ in range(H * W)], 1).reshape(K, H, W).astype(np.uint16)
    sc = -np.sort(-rng.normal(size=(K, H, W)).astype(np.float32), axis=0)
    cnt = np.full((H, W), K, np.uint8) if counts else None
    ls = np.full((H, W), 3.0, np.float32) if lse else None
    return RecordArrays(idx, sc, cnt, ls)


def record(a: RecordArrays | None = None, *, body: bytes | None = None, header=None, frame: bytes | None = None,
           dictionary: bytes = b"") -> bytes:
    """Record bytes (header + frame) for ``a`` (or an explicit body/frame), without any validation."""
    a = a if a is not None else arrays()
    if body is None:
        body = get_codec("f32").encode(a)
    if frame is None:
        params: dict[str, Any] = {"dict_data": zstandard.ZstdCompressionDict(dictionary)} if dictionary else {}
        frame = zstandard.ZstdCompressor(level=3, **params).compress(body)
    k_, h_, w_ = a.indices.shape
    h, w, k, flags = header if header is not None else (h_, w_, k_, a.flags)
    return struct.pack("<HHBBH", h, w, k, flags, 0) + frame


def valid_file(**meta_changes) -> bytes:
    return fmt.build_file([(key, record(arrays(i))) for i, key in enumerate(KEYS)], metadata(**meta_changes))


def parts(data: bytes):
    """(trailer, records area, metadata, dictionary, rows, blob) of a valid file."""
    t = fmt.parse_trailer(data[-64:], len(data))
    F, ml, dl = t.footer_offset, t.metadata_length, t.dictionary_length
    index = data[F + ml + dl : -64]
    rows = np.frombuffer(index[: t.record_count * 24], dtype=fmt.INDEX_DTYPE).copy()
    return t, data[16:F], data[F : F + ml], data[F + ml : F + ml + dl], rows, index[t.record_count * 24 :]


def rebuild(data: bytes, *, area=None, meta=None, dictionary=None, rows=None, blob=None, count=None, version=None):
    t, a0, m0, d0, r0, b0 = parts(data)
    rows = r0 if rows is None else rows
    index = rows.tobytes() + (b0 if blob is None else blob)
    return fmt.assemble(
        a0 if area is None else area,
        m0 if meta is None else meta,
        d0 if dictionary is None else dictionary,
        index,
        len(rows) if count is None else count,
        version or fmt.FORMAT_VERSION,
    )


def patch_trailer(data: bytes, **fields: int) -> bytes:
    """``data`` with trailer ``fields`` replaced; ``fix_crc=False`` leaves the trailer's own CRC stale."""
    fix_crc = bool(fields.pop("fix_crc", True))
    t = fmt.parse_trailer(data[-64:], len(data))._replace(**fields)
    trailer = fmt.pack_trailer(t)
    if not fix_crc:
        trailer = trailer[:52] + data[-12:-8] + trailer[56:]
    return data[:-64] + trailer


def open_bytes(data: bytes, **kw):
    return rm.open(io.BytesIO(data), **kw)


def read_all(data: bytes, **kw) -> None:
    with open_bytes(data, **kw) as maps:
        for key in maps:
            maps[key]


def single(rec: bytes, **meta_changes) -> bytes:
    return fmt.build_file([("x", rec)], metadata(**meta_changes))


# ------------------------------------------------------------------------------- sanity
def test_valid_file_reads():
    with open_bytes(valid_file()) as maps:
        assert list(maps) == KEYS
        np.testing.assert_array_equal(maps["b"].indices, arrays(1).indices)
        assert maps.verify() == []


def test_newer_minor_is_read_ignoring_unknown_keys():
    data = rebuild(valid_file(), meta=fmt.dump_metadata({**metadata(format_version="1.7"), "future": {"x": 1}}),
                   version=(1, 7))
    with open_bytes(data) as maps:
        assert maps.version == (1, 7)
        assert maps["a"] == rm.LabelMap(*arrays(0)[:2], num_classes=C)


# ------------------------------------------------------------------------------- header / trailer
def test_bad_magic():
    data = valid_file()
    with pytest.raises(FormatError, match="magic"):
        open_bytes(b"\x88" + data[1:])
    with pytest.raises(FormatError, match="magic"):
        open_bytes(b"PK\x03\x04" + bytes(100))


def test_unknown_major():
    data = valid_file()
    with pytest.raises(UnsupportedVersionError):
        open_bytes(data[:8] + struct.pack("<H", 2) + data[10:])
    with pytest.raises(UnsupportedVersionError):
        open_bytes(rebuild(data, version=(2, 0)))
    with pytest.raises(UnsupportedVersionError):  # also for tiny files: the header is checked first
        open_bytes(fmt.pack_header((9, 0)))


def test_unknown_major_in_metadata():
    with pytest.raises(UnsupportedVersionError):
        open_bytes(valid_file(format_version="2.0"))


def test_truncated_header():
    data = valid_file()
    for n in (0, 1, 8, 15, 16, 40, 79):
        with pytest.raises(FormatError):
            open_bytes(data[:n])


def test_truncated_trailer():
    data = valid_file()
    for cut in (1, 8, 30, 63, 64):
        with pytest.raises(FormatError):
            open_bytes(data[:-cut])


def test_trailer_crc_mismatch():
    data = valid_file()
    with pytest.raises(FormatError, match="trailer CRC32"):
        open_bytes(patch_trailer(data, fix_crc=False, metadata_length=3))


def test_trailer_version_mismatch():
    data = valid_file()
    with pytest.raises(FormatError, match="differs from header"):
        open_bytes(patch_trailer(data, minor=fmt.FORMAT_VERSION[1] + 1))


def test_footer_offset_in_header():
    with pytest.raises(FormatError, match="header"):
        open_bytes(patch_trailer(valid_file(), footer_offset=8))


def test_truncated_record():
    data = valid_file()
    for n in (20, 40, 100):  # cut inside the records area: no trailer
        with pytest.raises(FormatError):
            open_bytes(data[:n])
    rec = record()
    with pytest.raises(CorruptRecordError):  # consistent index, but the frame is cut short
        read_all(single(rec[:-5]))
    with pytest.raises(CorruptRecordError):
        read_all(single(rec[:9]))


def test_truncated_metadata():
    data = valid_file()
    t, *_ = parts(data)
    with pytest.raises(FormatError):
        open_bytes(data[: t.footer_offset + 10])
    _, _, meta, *_ = parts(data)
    with pytest.raises(FormatError, match="JSON"):
        open_bytes(rebuild(data, meta=meta[:-3]))
    with pytest.raises(FormatError, match="metadata"):  # a consistent trailer but a stale CRC
        open_bytes(patch_trailer(rebuild(data, meta=meta[:-3]), metadata_crc32=t.metadata_crc32))


def test_truncated_dictionary():
    with rm.Writer(path := _tmp_path("d.rlm"), num_classes=C, k=K, encoding="f32", dictionary=True,
                   level=3) as w:
        for i in range(64):
            w.add(f"k{i:03d}", *arrays(i % 4)[:2])
    data = Path(path).read_bytes()
    t, area, meta, dic, rows, blob = parts(data)
    assert t.dictionary_length > 0
    with pytest.raises(FormatError):
        open_bytes(data[: t.dictionary_offset + 10])
    with pytest.raises(FormatError, match="dictionary"):  # section removed, metadata still says so
        open_bytes(rebuild(data, dictionary=b""))
    with pytest.raises(rm.RelabelMapsError):  # truncated dictionary with consistent lengths/CRCs
        read_all(rebuild(data, dictionary=dic[: len(dic) // 2]))


def test_bad_dictionary():
    data = rebuild(valid_file(compression={"codec": "zstd", "level": 3, "dictionary": True}), dictionary=b"not a dict")
    with pytest.raises(FormatError, match="zstd dictionary"):
        open_bytes(data)


def test_dictionary_crc_mismatch():
    data = valid_file()
    with pytest.raises(FormatError, match="dictionary CRC32"):
        open_bytes(patch_trailer(data, dictionary_crc32=1))


def test_truncated_index():
    data = valid_file()
    t, *_ = parts(data)
    with pytest.raises(FormatError):
        open_bytes(data[: t.index_offset + 30])
    _, _, _, _, rows, blob = parts(data)
    with pytest.raises(FormatError):  # key blob shorter than the rows describe
        open_bytes(rebuild(data, blob=blob[:-1]))
    with pytest.raises(FormatError):  # fewer rows than the record count
        open_bytes(rebuild(data, rows=rows[:2], count=3))


def test_index_crc_mismatch():
    with pytest.raises(FormatError, match="index CRC32"):
        open_bytes(patch_trailer(valid_file(), index_crc32=7))


def test_absurd_declared_sizes():
    data = valid_file()
    for fields in (
        {"metadata_length": 2**32 - 1},
        {"metadata_length": 0},
        {"dictionary_length": 2**32 - 1},
        {"index_length": 2**63},
        {"record_count": 2**40},
        {"record_count": 2**64 - 1},
        {"footer_offset": 2**63},
    ):
        with pytest.raises(FormatError):
            open_bytes(patch_trailer(data, **fields))
    _, _, _, _, rows, _ = parts(data)
    rows["nbytes"][0] = 2**32 - 1
    with pytest.raises(FormatError):
        open_bytes(rebuild(data, rows=rows))


# ------------------------------------------------------------------------------- metadata
def test_metadata_not_json():
    data = valid_file()
    for meta in (b"{not json}", b"[1, 2]", b"\xff\xfe{}", b'{"a": NaN}', b"null"):
        with pytest.raises(FormatError):
            open_bytes(rebuild(data, meta=meta))


@pytest.mark.parametrize("key", fmt.REQUIRED_METADATA_KEYS)
def test_metadata_missing_key(key):
    with pytest.raises(FormatError, match=key):
        open_bytes(valid_file(**{key: ...}))


@pytest.mark.parametrize(
    "changes",
    [
        {"num_classes": 0},
        {"num_classes": "50"},
        {"num_classes": True},
        {"num_classes": 2**40},
        {"k": 0},
        {"k": C + 1},
        {"k": 256},
        {"score_kind": "softmax"},
        {"encoding": 5},
        {"encoding": "f32"},
        {"compression": {"codec": "zstd", "dictionary": "no"}},
        {"compression": {"codec": "lz4"}},
        {"class_names": ["a"] * (C - 1)},
        {"class_names": [1] * C},
        {"format_version": "one"},
        {"format_version": 1.0},
    ],
)
def test_metadata_bad_values(changes):
    with pytest.raises(FormatError):
        open_bytes(valid_file(**changes))


def test_unknown_encoding():
    with pytest.raises(FormatError, match="encoding"):
        open_bytes(valid_file(encoding={"name": "from-the-future"}))
    for params in ({"name": "f32", "unknown": 1}, {"name": "compact", "step": "x"}, {"name": "compact", "step": -1}):
        with pytest.raises(FormatError, match="encoding"):
            open_bytes(valid_file(encoding=params))


# ------------------------------------------------------------------------------- index
def test_index_key_spans():
    data = valid_file()
    _, _, _, _, rows, blob = parts(data)
    bad = rows.copy()
    bad["key_offset"][1] += 1
    with pytest.raises(FormatError, match="contiguous"):
        open_bytes(rebuild(data, rows=bad))
    bad = rows.copy()
    bad["key_length"][2] = 70000
    with pytest.raises(FormatError):
        open_bytes(rebuild(data, rows=bad, blob=blob + bytes(69999)))


def test_index_out_of_bounds():
    data = valid_file()
    t, _, _, _, rows, _ = parts(data)
    for offset in (t.footer_offset, t.footer_offset - 5, 2**63, 2**64 - 1, 0, 15):
        bad = rows.copy()
        bad["offset"][1] = offset
        with pytest.raises(FormatError):
            open_bytes(rebuild(data, rows=bad))


def test_record_too_small():
    data = valid_file()
    _, _, _, _, rows, _ = parts(data)
    rows["nbytes"][0] = 8
    with pytest.raises(FormatError, match="length"):
        open_bytes(rebuild(data, rows=rows))


def test_overlapping_records():
    data = valid_file()
    _, _, _, _, rows, _ = parts(data)
    rows["offset"][1] = rows["offset"][0] + 1
    with pytest.raises(FormatError, match="overlapping"):
        open_bytes(rebuild(data, rows=rows))
    _, _, _, _, rows, _ = parts(data)
    rows["offset"][2] = rows["offset"][0]  # two keys sharing one record
    with pytest.raises(FormatError, match="overlapping"):
        open_bytes(rebuild(data, rows=rows))


def _with_keys(keys: list[bytes]) -> bytes:
    data = valid_file()
    _, _, _, _, rows, _ = parts(data)
    rows["key_length"] = [len(k) for k in keys]
    rows["key_offset"] = np.concatenate(([0], np.cumsum([len(k) for k in keys])[:-1]))
    return rebuild(data, rows=rows, blob=b"".join(keys))


def test_duplicate_keys():
    with pytest.raises(FormatError, match="duplicate"):
        open_bytes(_with_keys([b"a", b"b", b"b"]))
    with pytest.raises(FormatError):  # also rejected when building an index
        fmt.pack_index([("a", 16, 10, 0), ("a", 26, 10, 0)])


def test_unsorted_keys():
    with pytest.raises(FormatError, match="sorted"):
        open_bytes(_with_keys([b"b", b"a", b"c"]))
    with pytest.raises(FormatError, match="sorted"):  # code-point order, not locale or length order
        open_bytes(_with_keys([b"a", b"\xc3\xa9", b"z"]))


def test_invalid_utf8_key():
    with pytest.raises(FormatError, match="UTF-8"):
        open_bytes(_with_keys([b"a", b"b", b"\xff"]))


# ------------------------------------------------------------------------------- records
def test_crc_mismatch():
    corrupted = bytearray(valid_file())
    _, _, _, _, rows, _ = parts(bytes(corrupted))
    corrupted[int(rows["offset"][1]) + 20] ^= 0x01  # inside the frame of "b"
    data = bytes(corrupted)
    with open_bytes(data) as maps:  # opening does not read records
        problems = maps.verify()
        assert len(problems) == 1 and "'b'" in problems[0]
        with pytest.raises(CorruptRecordError):
            maps.verify(strict=True)
    with open_bytes(data, verify=True) as maps:
        maps["a"]
        with pytest.raises(CorruptRecordError, match="CRC32"):
            maps["b"]


@pytest.mark.parametrize(
    "header",
    [(0, W, K, 0), (H, 0, K, 0), (4097, W, K, 0), (H, 5000, K, 0), (H, W, 0, 0), (H, W, K + 1, 0), (H, W, K, 4),
     (H, W, K, 0x80), (4096, 4096, K, 0)],
)
def test_record_bad_header(header):
    with pytest.raises(CorruptRecordError):
        read_all(single(record(header=header)))


def test_frame_declares_too_much():
    bound = get_codec("f32").max_body_size(K, H, W, 0, 2)
    big = zstandard.ZstdCompressor().compress(bytes(bound + 1))
    with pytest.raises(CorruptRecordError, match="declares"):
        read_all(single(record(frame=big)))
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(get_codec("f32").encode(arrays()))
    with pytest.raises(CorruptRecordError, match="declares -1"):
        read_all(single(record(frame=no_size)))
    with pytest.raises(CorruptRecordError):  # garbage after a valid frame magic
        read_all(single(record(frame=big[:4] + bytes(40))))


def test_frame_expansion_limit():
    bomb = zstandard.ZstdCompressor().compress(bytes(3 << 20))  # ~100 bytes declaring 3 MiB
    assert len(bomb) < 1000
    with pytest.raises(CorruptRecordError, match="expansion"):
        read_all(single(record(frame=bomb, header=(1024, 1024, 1, 0))))


def test_frame_trailing_bytes():
    rec = record()
    with pytest.raises(CorruptRecordError, match="one complete"):
        read_all(single(rec + b"\x00\x00"))
    with pytest.raises(CorruptRecordError):
        read_all(single(rec + rec[8:]))  # two frames


def test_body_wrong_size():
    body = get_codec("f32").encode(arrays())
    with pytest.raises(CorruptRecordError):
        read_all(single(record(body=body[:-4])))


def test_class_index_out_of_range():
    a = arrays()
    a.indices[0, 0, 0] = C
    with pytest.raises(CorruptRecordError, match="class index"):
        read_all(single(record(a)))


def test_nonfinite_scores():
    for bad in (np.nan, np.inf, -np.inf):
        a = arrays()
        a.scores[1, 2, 3] = bad
        with pytest.raises(CorruptRecordError, match="non-finite"):
            read_all(single(record(a)))
    a = arrays(lse=True)
    a.lse[0, 0] = np.nan
    with pytest.raises(CorruptRecordError, match="lse"):
        read_all(single(record(a)))


def test_counts_out_of_range():
    for bad in (0, K + 1):
        a = arrays(counts=True)
        a.counts[1, 1] = bad
        with pytest.raises(CorruptRecordError, match="counts"):
            read_all(single(record(a)))


def test_flags_and_body_disagree():
    a = arrays(counts=True)
    with pytest.raises(CorruptRecordError):  # body carries counts, header does not say so
        read_all(single(record(a, header=(H, W, K, 0))))
    with pytest.raises(CorruptRecordError):
        read_all(single(record(arrays(), header=(H, W, K, FLAG_LSE | FLAG_COUNTS))))


def test_large_scores_that_overflow_a_sum_are_accepted():
    a = arrays()
    a.scores[:] = np.float32(3e38)
    with open_bytes(single(record(a))) as maps:
        assert np.all(maps["x"].scores == np.float32(3e38))


def test_verify_reports_gaps_and_score_order():
    rec = record()
    data = fmt.build_file([("x", rec)], metadata())
    t, area, meta, dic, rows, blob = parts(data)
    gap = fmt.assemble(bytes(4) + area, meta, dic, _shift(rows, 4).tobytes() + blob, 1)
    with open_bytes(gap) as maps:
        assert any("gap" in p for p in maps.verify())
    a = arrays()
    a.scores[:] = a.scores[::-1].copy()  # ascending
    with open_bytes(single(record(a))) as maps:
        assert any("descending" in p for p in maps.verify())


def _shift(rows, n):
    rows = rows.copy()
    rows["offset"] += n
    return rows


# ------------------------------------------------------------------------------- helpers
_TMP: list = []


@pytest.fixture(autouse=True)
def _tmpdir(tmp_path):
    _TMP.append(tmp_path)
    yield
    _TMP.pop()


def _tmp_path(name: str) -> str:
    return str(_TMP[-1] / name)


def test_malformed_shard_index(tmp_path):
    good = {"format_version": "1.0", "shards": [{"file": "a-00001-of-00001.rlm", "records": 1}], "metadata": metadata()}
    read_index_json(json.dumps(good))
    for bad in (
        "[]",
        "{",
        {**good, "format_version": "2.0"},
        {**good, "shards": [{"file": "../x.rlm", "records": 1}]},
        {**good, "shards": [{"file": "/abs.rlm", "records": 1}]},
        {**good, "shards": [{"file": "a.txt", "records": 1}]},
        {**good, "shards": [{"file": "a.rlm", "records": -1}]},
        {**good, "shards": [{"file": "a.rlm", "records": 1}, {"file": "a.rlm", "records": 1}]},
        {**good, "shards": [{"file": "a.rlm", "records": 1, "sha256": "xyz"}]},
        {**good, "metadata": {}},
        {**good, "shards": [{"file": "a.rlm", "records": 2, "first_key": "b", "last_key": "a"}]},
        {**good, "shards": [{"file": "a.rlm", "records": 1, "first_key": "a", "last_key": "b"}]},
        {**good, "shards": [{"file": "a.rlm", "records": 2, "first_key": "a"}]},
        {**good, "shards": [{"file": "a.rlm", "records": 2, "first_key": 1, "last_key": "b"}]},
        {**good, "shards": [{"file": "a.rlm", "records": 0, "first_key": "a", "last_key": "a"}]},
        {**good, "shards": [{"file": "a.rlm", "records": 2, "first_key": "a", "last_key": "\ud800"}]},
        {**good, "shards": [{"file": "a.rlm", "records": 2, "first_key": "a", "last_key": "b" * 65536}]},
    ):
        with pytest.raises(FormatError):
            read_index_json(bad if isinstance(bad, str) else json.dumps(bad))
    ranged = {**good, "shards": [{"file": "a.rlm", "records": 2, "first_key": "", "last_key": "\u00e9"},
                                 {"file": "b.rlm", "records": 0}]}
    read_index_json(json.dumps(ranged))  # ranges are optional; "" is a key; empty shards list none


# ------------------------------------------------------------------------------- typed errors, bounded allocation
def _peak_bytes(fn) -> tuple[BaseException | None, int]:
    """``(exception raised by fn() or None, peak bytes traced while it ran)``."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except Exception as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak


def test_item1_huge_format_version_is_a_format_error():
    huge = "1" * 5000 + ".0"  # int() of >4300 digits raises a plain ValueError
    for version in (huge, "1." + "0" * 5000, "123456.0", "1.123456"):
        with pytest.raises(FormatError) as info:
            open_bytes(valid_file(format_version=version))
        assert len(str(info.value)) < 200
    index = {"format_version": huge, "shards": [{"file": "a.rlm", "records": 1}], "metadata": metadata()}
    with pytest.raises(FormatError):
        read_index_json(json.dumps(index))
    with pytest.raises(UnsupportedVersionError):  # 5 digits still parse; the MAJOR is then checked
        fmt.check_version_string("00002.99999", "metadata")


def test_item1_non_ascii_version_digits_rejected():
    for version in ("\u0661.\u0660", "1.\u0661", "\uff11.0", "\u00b9.0", "1.0\n", " 1.0"):
        with pytest.raises(FormatError):
            fmt.check_version_string(version, "metadata")
        with pytest.raises(FormatError):
            open_bytes(valid_file(format_version=version))
    index = {"format_version": "\u0661.\u0660", "shards": [{"file": "a.rlm", "records": 1}], "metadata": metadata()}
    with pytest.raises(FormatError):
        read_index_json(json.dumps(index))
    assert fmt.check_version_string("1.0", "metadata") == (1, 0)


def test_item1_index_huge_record_count(tmp_path):
    rm_path = tmp_path / "a-00001-of-00001.rlm"
    rm_path.write_bytes(valid_file())
    good = {"format_version": "1.0", "records": 3, "metadata": metadata(),
            "shards": [{"file": rm_path.name, "records": 3, "bytes": rm_path.stat().st_size}]}
    (tmp_path / "a.index.json").write_text(json.dumps(good))
    with rm.open(tmp_path / "a.index.json") as maps:
        assert len(maps) == 3
    for shard, top in (({"records": 2**64}, {}), ({"records": 2**32}, {}), ({"records": 10**30}, {}),
                       ({"bytes": 2**63}, {}), ({"bytes": -1}, {}), ({"bytes": 1.5}, {}),
                       ({}, {"records": 2**40}), ({}, {"records": -3}), ({}, {"records": "3"})):
        bad = {**good, **top, "shards": [{**good["shards"][0], **shard}]}
        with pytest.raises(FormatError):
            read_index_json(json.dumps(bad))
        (tmp_path / "a.index.json").write_text(json.dumps(bad))
        with pytest.raises(FormatError):
            rm.open(tmp_path / "a.index.json")
    with pytest.raises(FormatError):  # the reader itself bounds the counts it is given
        ShardedReader([("a.rlm", str(rm_path), 2**64)], metadata())


def test_item1_pool_refuses_huge_class_count(monkeypatch):
    a = arrays()
    huge = 1 << 31  # allowed by the spec; a dense (C,) float32 label would take 8 GiB
    lm = rm.LabelMap(a.indices.astype(np.uint32), a.scores, num_classes=huge)
    for size in (1, 2):
        raised, peak = _peak_bytes(lambda s=size: lm.pool(size=s))
        assert isinstance(raised, InvalidArgumentError), raised
        assert peak < 16 << 20
        raised, peak = _peak_bytes(lambda s=size: pooling.pool_dense(lm, size=s))
        assert isinstance(raised, InvalidArgumentError), raised
        assert peak < 16 << 20
    monkeypatch.setattr(pooling, "MAX_POOL_OUTPUT", 4 * C)  # the bound, scaled down: (C, 2, 2) fits
    small = rm.LabelMap(a.indices, a.scores, num_classes=C)
    assert pooling.pool(small, size=2).shape == pooling.pool_dense(small, size=2).shape == (C, 2, 2)
    for pooler in (pooling.pool, pooling.pool_dense):
        with pytest.raises(InvalidArgumentError, match="values"):
            pooler(small, size=3)  # (C, 3, 3) does not
    monkeypatch.undo()
    data = fmt.build_file([("x", record(RecordArrays(a.indices.astype(np.uint32), a.scores, None, None)))],
                          metadata(num_classes=huge))
    with open_bytes(data) as maps:  # such a file reads; only the oversized pooled output is refused
        with pytest.raises(InvalidArgumentError):
            maps["x"].pool()


def _frame_header(declared: int) -> bytes:
    """A zstd frame header (single segment, 8-byte content size) declaring ``declared`` bytes, then a
    raw last block of 4 bytes."""
    return struct.pack("<IBQ", 0xFD2FB528, 0xE0, declared) + struct.pack("<I", (4 << 3) | 1)[:3] + b"abcd"


def test_item2_skippable_frame_rejected_before_allocation():
    for magic in (0x184D2A50, 0x184D2A5A, 0x184D2A5F):
        skippable = struct.pack("<II", magic, 0xFFFFFFF0) + bytes(64)  # declares 4 GiB, 80-byte record with its header
        rec = record(frame=skippable)
        assert len(rec) == 80
        data = single(rec)
        with open_bytes(data) as maps:
            raised, peak = _peak_bytes(lambda m=maps: m["x"])
        assert peak < 16 << 20, peak
        assert isinstance(raised, CorruptRecordError) and "skippable" in str(raised), raised
    for frame, reason in ((_frame_header(2**40), "declares"), (_frame_header(2**64 - 1), "declares -1"),
                          (b"\x00\x01\x02\x03" + bytes(40), "magic"), (b"\x28\xb5", "magic")):
        with open_bytes(single(record(frame=frame))) as maps:
            raised, peak = _peak_bytes(lambda m=maps: m["x"])
        assert peak < 16 << 20, peak
        assert isinstance(raised, CorruptRecordError) and reason in str(raised), raised
    good = zstandard.ZstdCompressor().compress(get_codec("f32").encode(arrays()))
    with open_bytes(single(record(frame=good))) as maps:
        assert maps["x"] == rm.LabelMap(*arrays()[:2], num_classes=C)


def test_item5_a_folder_without_index_opens_only_as_one_complete_set(tmp_path):
    """R27: a folder without an index whose shards are not exactly one complete set (a dataset being
    published, or two generations) is refused, naming the missing index; loose files and one complete
    set of shards or parts open."""

    def write(path: Path, n: int, **kw: Any) -> None:
        with rm.Writer(path, num_classes=C, k=K, encoding="f32", **kw) as w:
            for i in range(n):
                w.add(f"{path.name}{i:03d}", *arrays()[:2])

    ds = tmp_path / "ds"
    write(ds, 7, max_records=2)
    (ds / "ds.index.json").unlink()
    with rm.open(ds) as maps:
        assert len(maps) == 7
    third = ds / "ds-00003-of-00004.rlm"
    data = third.read_bytes()
    third.unlink()
    with pytest.raises(FormatError, match=r"has no ds.index.json and holds 3 of the 4 shards of 'ds' \(shard 3 is"):
        rm.open(ds)
    third.write_bytes(data)
    (ds / "ds-00001-of-00001.g00002.rlm").write_bytes(data)  # a second generation being published
    with pytest.raises(FormatError, match="has no ds.index.json and its .rlm files are not one dataset"):
        rm.open(ds)
    (ds / "ds-00001-of-00001.g00002.rlm").rename(ds / "loose.rlm")
    with pytest.raises(FormatError, match="not one dataset"):
        rm.open(ds)

    parts = tmp_path / "run"
    write(parts / "part00001of00002.rlm", 2)
    with pytest.raises(FormatError, match=r"has no run.index.json and holds 1 of the 2 parts of 'run' \(part 0 is"):
        rm.open(parts)
    write(parts / "part00000of00002.rlm", 2)
    with rm.open(parts) as maps:
        assert len(maps) == 4
