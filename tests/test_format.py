"""relabel_maps.format: byte layouts pinned to spec/FORMAT.md, and round-trip properties."""

from __future__ import annotations

import io
import json
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relabel_maps as rm
from relabel_maps import format as fmt
from relabel_maps.errors import FormatError

ROOT = Path(__file__).resolve().parents[1]


def test_constants_match_the_spec():
    assert rm.FORMAT_VERSION == fmt.FORMAT_VERSION == (1, 1)
    assert fmt.MAGIC == bytes.fromhex("89524C4D0D0A1A0A")
    assert fmt.END_MAGIC == bytes.fromhex("89524C4D454E440A")
    assert (fmt.HEADER_SIZE, fmt.RECORD_HEADER_SIZE, fmt.TRAILER_SIZE, fmt.INDEX_ROW_SIZE) == (16, 8, 64, 24)
    assert fmt.pack_header() == fmt.MAGIC + b"\x01\x00\x01\x00\x00\x00\x00\x00"
    assert fmt.index_dtype_for(65536) == np.uint16 and fmt.index_dtype_for(65537) == np.uint32
    assert fmt.crc32(b"") == 0 and fmt.crc32(b"123456789") == 0xCBF43926


def test_every_reject_rule_test_in_the_spec_exists():
    spec = (ROOT / "spec" / "FORMAT.md").read_text()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", spec))
    source = (ROOT / "tests" / "test_malformed.py").read_text()
    defined = set(re.findall(r"^def (test_[a-z0-9_]+)", source, flags=re.M))
    assert len(named) >= 25 and named <= defined, named - defined


def test_trailer_layout_offsets():
    t = fmt.Trailer(1000, 7, 300, 20, 400, 0x11111111, 0x22222222, 0x33333333, 1, 0)
    b = fmt.pack_trailer(t)
    assert len(b) == 64
    assert struct.unpack_from("<Q", b, 0)[0] == 1000 and struct.unpack_from("<Q", b, 8)[0] == 7
    assert struct.unpack_from("<II", b, 16) == (300, 20) and struct.unpack_from("<Q", b, 24)[0] == 400
    assert struct.unpack_from("<III", b, 32) == (0x11111111, 0x22222222, 0x33333333)
    assert struct.unpack_from("<HHI", b, 44) == (1, 0, 0)
    assert struct.unpack_from("<I", b, 52)[0] == fmt.crc32(b[:52]) and b[56:] == fmt.END_MAGIC
    assert fmt.parse_trailer(b, 1000 + 720 + 64) == t


def test_known_file_layout():
    """A one-record file, decoded by hand from the byte tables of spec/FORMAT.md."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "one.rlm"
        with rm.Writer(p, num_classes=10, k=2, encoding="f32", level=1) as w:
            w.add("é", np.array([[[3]], [[7]]]), np.array([[[2.5]], [[-1.0]]], np.float32))
        data = p.read_bytes()
    assert data[:16] == fmt.MAGIC + bytes([1, 0, 1, 0, 0, 0, 0, 0])
    h, w_, k, flags, reserved = struct.unpack_from("<HHBBH", data, 16)
    assert (h, w_, k, flags, reserved) == (1, 1, 2, 0, 0)
    footer, count, ml, dl, il = struct.unpack_from("<QQIIQ", data, len(data) - 64)
    assert count == 1 and dl == 0 and footer + ml + il + 64 == len(data)
    meta = json.loads(data[footer : footer + ml])
    canonical = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert data[footer : footer + ml] == canonical
    off, n, crc, koff, klen = struct.unpack_from("<QIIII", data, footer + ml)
    assert (off, koff, klen) == (16, 0, 2) and data[footer + ml + 24 :][:2] == "é".encode()
    assert off + n == footer and crc == fmt.crc32(data[off : off + n])
    body = zstandard.ZstdDecompressor().decompress(data[off + 8 : off + n])
    # f32 body, byte-shuffled: indices [3, 7] as u16 planes, then scores [2.5, -1.0] as f32 planes
    assert body[:4] == bytes([3, 7, 0, 0])
    scores = np.frombuffer(body[4:], np.uint8).reshape(4, 2).T.copy().view("<f4").ravel()
    assert scores.tolist() == [2.5, -1.0]


def test_index_pack_parse_roundtrip():
    entries = [("b", 16, 20, 5), ("a", 36, 30, 6), ("", 66, 9, 7), ("日本", 75, 10, 8)]
    index, keys = fmt.pack_index(entries)
    assert keys == ["", "a", "b", "日本"]
    rows, blob = fmt.parse_index(index, 4, 85)
    fmt.check_keys(rows, blob)
    spans = zip(rows["key_offset"].tolist(), rows["key_length"].tolist(), strict=True)
    assert [blob[a : a + n].decode("utf-8") for a, n in spans] == keys
    assert rows["offset"].tolist() == [66, 36, 16, 75] and rows["crc32"].tolist() == [7, 6, 5, 8]
    assert len(index) == 4 * 24 + len("ab日本".encode())


def test_metadata_is_canonical():
    a = fmt.dump_metadata({"b": 1, "a": {"z": "é", "y": [1.5, None]}})
    assert a == '{"a":{"y":[1.5,null],"z":"é"},"b":1}'.encode()
    with pytest.raises(rm.FormatError):
        fmt.dump_metadata({"x": float("inf")})


def test_shard_names():
    assert fmt.shard_name("train", 3, 12) == "train-00003-of-00012.rlm"
    m = fmt.SHARD_NAME_RE.match("my-set-00003-of-00012.rlm")
    assert m and m.group("name") == "my-set" and m.group("index") == "00003"
    assert fmt.SHARD_NAME_RE.match("x-1-of-2.rlm") is None


# ------------------------------------------------------------------------------- round trips
keys_st = st.lists(st.text(max_size=12), min_size=0, max_size=6, unique=True)


@st.composite
def datasets(draw):
    num_classes = draw(st.sampled_from([1, 2, 7, 300, 65535, 65536, 65537, 100_000]))
    k = draw(st.integers(1, min(num_classes, 6)))
    keys = draw(keys_st) + draw(st.sampled_from([[], ["🦊/狐狸.jpg"], ["n01440764/n01440764_10026.JPEG"]]))
    keys = list(dict.fromkeys(keys))
    with_counts, with_lse = draw(st.booleans()), draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    records = []
    for key in keys:
        h, w = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        idx = np.stack([rng.choice(num_classes, k, replace=False) for _ in range(h * w)], 1).reshape(k, h, w)
        sc = (rng.normal(size=(k, h, w)) * 5).astype(np.float32)
        counts = rng.integers(1, k + 1, (h, w)).astype(np.uint8) if with_counts else None
        lse = (sc.max(0) + rng.random((h, w))).astype(np.float32) if with_lse else None
        records.append((key, idx, sc, counts, lse))
    kind = draw(st.sampled_from(["logits", "probabilities"]))
    return num_classes, k, kind, records


def canonical(idx, sc, **kw) -> rm.LabelMap:
    """What a reader returns: entries sorted per location, padding entries (rank >= count) zeroed."""
    lm = rm.LabelMap.from_arrays(idx, sc, **kw)
    valid = lm.valid()
    lm.indices[~valid] = 0
    lm.scores[~valid] = 0
    return lm


def _write(path: Path, num_classes, k, kind, records, **kw) -> bytes:
    with rm.Writer(path, num_classes=num_classes, k=k, score_kind=kind, encoding="f32", level=1, **kw) as w:
        for key, idx, sc, counts, lse in records:
            w.add(key, idx, sc, counts=counts, lse=lse)
    return path.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.sampled_from([False, True]))
def test_roundtrip_property(ds, dictionary):
    num_classes, k, kind, records = ds
    with tempfile.TemporaryDirectory() as d:
        a = _write(Path(d) / "a.rlm", num_classes, k, kind, records, dictionary=dictionary)
        b = _write(Path(d) / "b.rlm", num_classes, k, kind, records, dictionary=dictionary)
    assert a == b
    with rm.open(io.BytesIO(a)) as maps:
        assert list(maps) == sorted(key for key, *_ in records)
        assert list(maps) == sorted(maps, key=lambda s: s.encode("utf-8"))
        for key, idx, sc, counts, lse in records:
            expected = canonical(idx, sc, num_classes=num_classes, score_kind=kind, counts=counts, lse=lse)
            got = maps[key]
            assert got == expected and got.indices.dtype == fmt.index_dtype_for(num_classes)
        assert maps.verify() == []


@settings(max_examples=15, deadline=None)
@given(datasets())
def test_f16_roundtrip_rounds_scores_only(ds):
    num_classes, k, kind, records = ds
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "h.rlm"
        with rm.Writer(p, num_classes=num_classes, k=k, score_kind=kind, encoding="f16", level=1) as w:
            for key, idx, sc, counts, lse in records:
                w.add(key, idx, sc, counts=counts, lse=lse)
        with rm.open(p) as maps:
            for key, idx, sc, counts, _ in records:
                expected = canonical(idx, sc, num_classes=num_classes, counts=counts)
                got = maps[key]
                np.testing.assert_array_equal(got.scores, expected.scores.astype(np.float16).astype(np.float32))
                valid = expected.valid()
                np.testing.assert_array_equal(got.indices[valid], expected.indices[valid])


# ----------------------------------------------------------------------------------------- keys
def _blob(keys: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    lengths = np.array([len(k) for k in keys], dtype=np.int64)
    return b"".join(keys), np.cumsum(lengths) - lengths, lengths


@given(st.lists(st.text(alphabet="ab\x00é€\U0001f600z", max_size=30), min_size=1, max_size=40))
def test_check_sorted_agrees_with_byte_order(texts):
    from relabel_maps.keys import check_sorted

    keys = sorted({t.encode("utf-8") for t in texts})
    check_sorted(*_blob(keys))
    for i in range(len(keys) - 1):
        swapped = keys[:i] + [keys[i + 1], keys[i]] + keys[i + 2 :]
        with pytest.raises(FormatError, match="not sorted by UTF-8 bytes"):
            check_sorted(*_blob(swapped))
        with pytest.raises(FormatError, match="duplicate key"):
            check_sorted(*_blob(keys[: i + 1] + [keys[i]] + keys[i + 1 :]))


def test_check_sorted_rejects_keys_cut_inside_a_character():
    from relabel_maps.keys import check_sorted

    whole = "é".encode()  # two bytes: the blob is valid UTF-8, the keys are not
    with pytest.raises(FormatError, match="UTF-8"):
        check_sorted(*_blob([b"a" + whole[:1], whole[1:] + b"b"]))
    with pytest.raises(FormatError, match="UTF-8"):
        check_sorted(*_blob([b"a", b"\xff"]))
    check_sorted(*_blob([b"", b"\x00", b"\x00\x00", b"a", b"a\x00", b"ab" * 300, b"b"]))


def test_key_hashes_are_crc32():
    import zlib

    from relabel_maps.keys import key_hashes

    rng = np.random.default_rng(0)
    keys = [b"", b"a", "日本".encode()] + [bytes(rng.integers(0, 256, int(n), dtype=np.uint8))
                                          for n in rng.integers(0, 700, 200)]
    assert key_hashes(*_blob(keys)).tolist() == [zlib.crc32(k) for k in keys]
