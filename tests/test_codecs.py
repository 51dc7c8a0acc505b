"""Record-body codecs (spec/ENCODINGS.md): round trips, edge cases, byte layouts, malformed bodies."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import relabel_maps as rm
from relabel_maps.codecs import (
    CODECS,
    FLAG_COUNTS,
    FLAG_LSE,
    Bodies,
    RecordArrays,
    codec_from_metadata,
    encode_many,
    get_codec,
    register_codec,
)
from relabel_maps.codecs.compact import DEFAULT_FINE_RANKS, DEFAULT_STEP, RECOMMENDED_STEP, CompactCodec
from relabel_maps.codecs.raw import F32Codec
from relabel_maps.errors import CorruptRecordError, FormatError, InvalidArgumentError, InvalidLabelMapError

ALL: list[dict[str, Any]] = [
    {"name": "f32"}, {"name": "f16"}, {"name": "compact"}, {"name": "compact", "step": 2.0**-7},
    {"name": "compact", "step": 2.0**-10},
    {"name": "compact", "step": 2.0**-3, "fine_ranks": 1},
]  # fmt: skip


def make(
    rng: np.random.Generator, k: int, h: int, w: int, num_classes: int, *,
    lse: bool = False, counts: bool = False, scale: float = 8.0,
) -> RecordArrays:  # fmt: skip
    """Random arrays shaped like a label map: distinct classes per location, descending scores."""
    m = h * w
    kk = min(k, num_classes)
    idx = np.empty((k, m), dtype=np.int64)
    for j in range(m):
        idx[:kk, j] = rng.choice(num_classes, size=kk, replace=False)
        idx[kk:, j] = idx[0, j]
    sc = -np.sort(-rng.normal(0, scale, (k, m)), axis=0).astype(np.float32)
    dtype = np.uint16 if num_classes <= 65536 else np.uint32
    cnt = None
    if counts:
        cnt = rng.integers(1, k + 1, m).astype(np.uint8)
        pad = np.arange(k)[:, None] >= cnt[None]
        idx[pad], sc[pad] = 0, 0.0
        cnt = cnt.reshape(h, w)
    lse_arr = (sc[0] + rng.uniform(0, 5, m)).astype(np.float32).reshape(h, w) if lse else None
    return RecordArrays(idx.astype(dtype).reshape(k, h, w), sc.reshape(k, h, w), cnt, lse_arr)


def compact_reference(codec, a: RecordArrays) -> np.ndarray:
    """Scores as spec/ENCODINGS.md section 3.1 quantises them, one entry at a time: top-1 rounded to
    the step grid, then each lower rank's gap to the decoded rank above rounded to its rank's step."""
    k = a.indices.shape[0]
    x = a.scores.astype(np.float64).reshape(k, -1) / codec.step
    count = np.full(x.shape[1], k) if a.counts is None else a.counts.reshape(-1)
    out = np.zeros_like(x)
    for j in range(x.shape[1]):
        level = float(np.rint(x[0, j]))
        out[0, j] = level
        for r in range(1, int(count[j])):
            mult = 1 if r < codec.fine_ranks else 2
            gap = np.rint((level - x[r, j]) / mult)
            assert gap >= 0
            level -= gap * mult
            out[r, j] = level
    return (out * codec.step).astype(np.float32).reshape(a.scores.shape)


def roundtrip(codec, a: RecordArrays) -> RecordArrays:
    body = codec.encode(a)
    assert len(body) <= codec.max_body_size(*a.indices.shape, a.flags, a.indices.itemsize)
    return codec.decode(body, *a.indices.shape, a.flags, a.indices.dtype)


def check(codec, a: RecordArrays, out: RecordArrays) -> None:
    assert out.indices.dtype == a.indices.dtype and out.indices.shape == a.indices.shape
    assert out.scores.dtype == np.float32 and out.scores.shape == a.scores.shape
    np.testing.assert_array_equal(out.indices, a.indices)
    if codec.name == "f32":
        np.testing.assert_array_equal(out.scores, a.scores)
    elif codec.name == "f16":
        np.testing.assert_array_equal(out.scores, a.scores.astype(np.float16).astype(np.float32))
    else:  # compact: within step / 2 for ranks < fine_ranks, within step below
        np.testing.assert_array_equal(out.scores, compact_reference(codec, a))
        k = a.indices.shape[0]
        bound = np.where(np.arange(k) < codec.fine_ranks, codec.step / 2, codec.step)[:, None, None]
        assert (np.abs(out.scores.astype(np.float64) - a.scores) <= bound + 1e-6 * np.abs(a.scores).max()).all()
        if a.counts is None:
            assert (np.diff(out.scores, axis=0) <= 0).all()
    if a.counts is None:
        assert out.counts is None
    else:
        np.testing.assert_array_equal(out.counts, a.counts)
        pad = np.arange(a.indices.shape[0])[:, None, None] >= a.counts[None]
        assert (out.indices[pad] == 0).all() and (out.scores[pad] == 0).all()
    if a.lse is None:
        assert out.lse is None
    else:
        assert out.lse is not None and out.lse.dtype == np.float32 and out.lse.shape == a.lse.shape
        if codec.name in ("f32", "f16"):
            np.testing.assert_array_equal(out.lse, a.lse)
        else:
            q0 = np.rint(a.scores[0].astype(np.float64) / codec.step)
            ql = np.rint((a.lse.astype(np.float64) - q0 * codec.step) / codec.step)
            np.testing.assert_array_equal(out.lse, ((ql + q0) * codec.step).astype(np.float32))
            assert np.abs(out.lse.astype(np.float64) - a.lse).max() <= codec.step / 2 + 1e-6 * np.abs(a.lse).max()


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("spec", ALL, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("lse,counts", [(False, False), (True, False), (False, True), (True, True)])
def test_roundtrip_real_shape(spec, lse, counts):
    codec = get_codec(spec)
    a = make(np.random.default_rng(0), 5, 15, 15, 1000, lse=lse, counts=counts)
    check(codec, a, roundtrip(codec, a))


@given(
    k=st.integers(1, 8), h=st.integers(1, 9), w=st.integers(1, 9),
    num_classes=st.sampled_from([1, 2, 7, 256, 257, 1000, 65536, 65537, 200_000]),
    lse=st.booleans(), counts=st.booleans(), seed=st.integers(0, 2**32 - 1),
    spec=st.sampled_from(ALL),
)  # fmt: skip
def test_roundtrip_property(k, h, w, num_classes, lse, counts, seed, spec):
    codec = get_codec(spec)
    a = make(np.random.default_rng(seed), k, h, w, num_classes, lse=lse, counts=counts)
    check(codec, a, roundtrip(codec, a))


def test_wide_indices_use_uint32_and_palette_over_256():
    rng = np.random.default_rng(1)
    a = make(rng, 5, 15, 15, 100_000)
    assert a.indices.dtype == np.uint32 and len(np.unique(a.indices)) > 256
    codec = get_codec("compact")
    out = roundtrip(codec, a)
    np.testing.assert_array_equal(out.indices, a.indices)
    assert out.indices.max() > 65535


# ---------------------------------------------------------------------------------------------- edge cases
def test_k1_and_1x1_grid():
    codec = get_codec("compact")
    a = RecordArrays(np.array([[[3]]], np.uint16), np.array([[[1.25]]], np.float32), None, None)
    out = roundtrip(codec, a)
    assert out.indices.tolist() == [[[3]]] and out.scores.tolist() == [[[1.25]]]


def test_fine_ranks_cover_k_is_plain_rounding():
    """With fine_ranks >= k every score is its own value rounded to the step grid (within step / 2)."""
    a = make(np.random.default_rng(2), 5, 6, 6, 1000, counts=True)
    out = roundtrip(CompactCodec(2.0**-7, fine_ranks=5), a)
    q = np.rint(a.scores.astype(np.float64) / 2.0**-7)
    np.testing.assert_array_equal(out.scores, (q * 2.0**-7).astype(np.float32))


def test_coarse_ranks_use_twice_the_step_in_closed_loop():
    """Ranks >= fine_ranks store gaps in units of 2 * step, taken from the decoded rank above, so the
    error stays within one step at every rank (it does not add up), and order and ties survive."""
    codec = CompactCodec(0.25, fine_ranks=1)
    sc = np.array([1.0, 0.25, 0.25, -0.6, -0.6, -0.7], np.float32).reshape(6, 1, 1)
    idx = np.arange(6, dtype=np.uint16).reshape(6, 1, 1)
    out = roundtrip(codec, RecordArrays(idx, sc, None, None))
    # 1.0 -> 1.0; gap 0.75 = 1.5 coarse steps -> 2 (half to even) -> 0.0; 0.25 again -> gap 0 -> 0.0;
    # -0.6: gap 0.6 = 1.2 -> 1 -> -0.5; tie kept; -0.7: gap 0.2 = 0.4 -> 0 -> -0.5
    assert out.scores.ravel().tolist() == [1.0, 0.0, 0.0, -0.5, -0.5, -0.5]
    assert (np.abs(out.scores - sc) <= 0.25).all()


def test_all_equal_scores_are_exact():
    codec = get_codec("compact")
    idx = np.stack([np.full((4, 4), c, np.uint16) for c in (9, 2, 5)])
    a = RecordArrays(idx, np.full((3, 4, 4), 2.5, np.float32), None, None)
    out = roundtrip(codec, a)
    np.testing.assert_array_equal(out.indices, idx)
    np.testing.assert_array_equal(out.scores, a.scores)


@pytest.mark.parametrize("values", [(1e4, 9999.0, 9996.5), (-9996.5, -9999.0, -1e4), (1e4, 0.0, -1e4)])
def test_extreme_logits_within_range_are_kept(values):
    codec = get_codec("compact")
    sc = np.array(values, np.float32).reshape(3, 1, 1)
    out = roundtrip(codec, RecordArrays(np.array([4, 1, 7], np.uint16).reshape(3, 1, 1), sc, None, None))
    np.testing.assert_array_equal(out.scores, sc)


def test_logits_beyond_range_raise_clearly():
    codec = get_codec("compact")
    sc = np.array([1e7, 0.0], np.float32).reshape(2, 1, 1)
    with pytest.raises(InvalidLabelMapError, match="range"):
        codec.encode(RecordArrays(np.array([1, 2], np.uint16).reshape(2, 1, 1), sc, None, None))
    coarse = get_codec({"name": "compact", "step": 1.0})
    out = roundtrip(coarse, RecordArrays(np.array([1, 2], np.uint16).reshape(2, 1, 1), sc, None, None))
    assert out.scores[0, 0, 0] == 1e7


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise(bad):
    sc = np.array([bad, 0.0], np.float32).reshape(2, 1, 1)
    with pytest.raises(InvalidLabelMapError, match="finite"):
        get_codec("compact").encode(RecordArrays(np.array([1, 2], np.uint16).reshape(2, 1, 1), sc, None, None))


def test_unsorted_scores_raise():
    sc = np.array([0.0, 1.0], np.float32).reshape(2, 1, 1)
    with pytest.raises(InvalidLabelMapError, match="descending"):
        get_codec("compact").encode(RecordArrays(np.array([1, 2], np.uint16).reshape(2, 1, 1), sc, None, None))


@pytest.mark.parametrize("step", [0.01, 3, 0, -1, "x", 2.0**-30])
def test_bad_step(step):
    with pytest.raises(InvalidArgumentError):
        get_codec({"name": "compact", "step": step})


@pytest.mark.parametrize("fine_ranks", [0, 256, 1.0, True, "2", None])
def test_bad_fine_ranks(fine_ranks):
    with pytest.raises(InvalidArgumentError, match="fine_ranks"):
        get_codec({"name": "compact", "fine_ranks": fine_ranks})


def test_writers_start_from_the_recommended_parameters():
    """get_codec (the writers' API): a bare name and a mapping without parameters are the same codec,
    the recommended one; a mapping overrides only the parameters it gives."""
    recommended = {"name": "compact", "step": RECOMMENDED_STEP, "fine_ranks": DEFAULT_FINE_RANKS}
    assert RECOMMENDED_STEP == 2.0**-8 and CompactCodec.recommended == {"step": 2.0**-8, "fine_ranks": 2}
    assert get_codec("compact").spec == get_codec({"name": "compact"}).spec == recommended
    assert get_codec({"name": "compact", "step": 2.0**-7}).spec == {**recommended, "step": 2.0**-7}
    assert get_codec({"name": "compact", "fine_ranks": 5}).spec == {**recommended, "fine_ranks": 5}
    for spec in ALL:  # a codec's spec names it again
        codec = get_codec(spec)
        assert get_codec(codec.spec).spec == codec.spec
    assert get_codec("f32").lossless and not get_codec("f16").lossless and not get_codec("compact").lossless


def test_metadata_encoding_uses_the_format_defaults():
    """codec_from_metadata (a file's stored encoding): a missing parameter means the format's default
    (spec/ENCODINGS.md section 3); a spelled-out spec, as the Writer stores, means the same codec to
    both functions."""
    codec = codec_from_metadata({"name": "compact"})
    assert isinstance(codec, CompactCodec)
    expected = {"name": "compact", "step": 2.0**-7, "fine_ranks": 2}
    assert codec.spec == {"name": "compact", "step": DEFAULT_STEP, "fine_ranks": DEFAULT_FINE_RANKS} == expected
    assert codec_from_metadata({"name": "compact", "fine_ranks": 3}).spec == {**expected, "fine_ranks": 3}
    assert codec_from_metadata({"name": "f16"}).spec == {"name": "f16"}
    for spec in ALL:
        full = get_codec(spec).spec
        assert codec_from_metadata(full).spec == full


def test_writer_stores_every_parameter(tmp_path):
    with rm.Writer(tmp_path / "a.rlm", num_classes=10, k=2, encoding={"name": "compact"}) as w:
        w.add("a", np.array([[[1]], [[2]]]), np.array([[[1.0]], [[0.5]]]))
    with rm.open(tmp_path / "a.rlm") as maps:
        stored = maps.metadata["encoding"]
    assert stored == get_codec("compact").spec == {"name": "compact", "step": 2.0**-8, "fine_ranks": 2}
    assert codec_from_metadata(stored).spec == stored


@pytest.mark.parametrize(
    "encoding", [None, 3, {"step": 1.0}, {"name": 7}, "nope", {"name": "f32", "step": 1.0}, {"name": "compact", "x": 1}]
)
def test_get_codec_rejects(encoding):
    with pytest.raises(InvalidArgumentError):
        get_codec(encoding)


@pytest.mark.parametrize(
    "encoding",
    ["compact", None, {"step": 1.0}, {"name": "nope"}, {"name": "f32", "step": 1.0}, {"name": "compact", "step": 0.01}],
)
def test_codec_from_metadata_rejects(encoding):
    with pytest.raises(FormatError):
        codec_from_metadata(encoding)


def test_registry_declares_every_capability():
    assert {"f32", "f16", "compact"} <= set(CODECS)
    for name, factory in CODECS.items():
        codec = factory(**factory.recommended)
        assert codec.name == name and codec.spec["name"] == name
        assert isinstance(codec.lossless, bool) and isinstance(codec.finite, bool)
    assert get_codec("compact").finite and not get_codec("f32").finite and not get_codec("f16").finite


def test_register_codec():
    class Tiny(F32Codec):
        name = "tiny-test"

    register_codec("tiny-test", Tiny)
    try:
        assert isinstance(get_codec("tiny-test"), Tiny)
        assert isinstance(codec_from_metadata({"name": "tiny-test"}), Tiny)
    finally:
        del CODECS["tiny-test"]


def test_deterministic_bytes():
    a = make(np.random.default_rng(3), 5, 6, 7, 1000, lse=True, counts=True)
    for spec in ALL:
        assert get_codec(spec).encode(a) == get_codec(spec).encode(a)


# ---------------------------------------------------------------------------------------------- byte layout
def test_compact_byte_layout_matches_spec():
    """The example body of spec/ENCODINGS.md section 3.5 decodes as specified and re-encodes exactly."""
    # k=2, 1x2 grid, classes {3, 10}; scores [[1.0, 0.5], [0.25, -0.5]] at step 1/4; lse 2.0 and 1.0
    header = struct.pack("<IiiBBBB", 2, 2, 2, 1, 1, 1, 0)  # P=2, top base 2 (= 0.5 / 0.25), lse base 2
    palette = bytes([3, 10 - 3])
    ids = bytes([0, 1, 1, 0])  # rank 0: classes 3, 10; rank 1: classes 10, 3
    scores = bytes([4 - 2, 2 - 2, 4 - 1, 2 - (-2)])  # top-1 minus base, then the gaps (in steps)
    lse = bytes([(8 - 4) - 2, (4 - 2) - 2])  # round(lse / step) - top-1, minus base 2
    body = header + palette + ids + scores + lse
    assert body.hex() == "02000000020000000200000001010100" "0307" "00010100" "02000304" "0200"
    out = CompactCodec(0.25).decode(body, 2, 1, 2, FLAG_LSE, np.uint16)
    assert out.indices.tolist() == [[[3, 10]], [[10, 3]]]
    assert out.scores.tolist() == [[[1.0, 0.5]], [[0.25, -0.5]]]
    assert out.lse is not None and out.lse.tolist() == [[2.0, 1.0]]
    assert CompactCodec(0.25).encode(RecordArrays(out.indices, out.scores, None, out.lse)) == body


def test_compact_byte_layout_coarse_rank_matches_spec():
    """The fine_ranks = 1 variant of the section 3.5 example: rank-1 gaps in units of 2 * step."""
    codec = CompactCodec(0.25, fine_ranks=1)
    idx = np.array([[[3, 10]], [[10, 3]]], np.uint16)
    sc = np.array([[[1.0, 0.5]], [[0.25, -0.5]]], np.float32)
    body = codec.encode(RecordArrays(idx, sc, None, np.array([[2.0, 1.0]], np.float32)))
    # gaps 0.75 and 1.0 are 1.5 and 2 coarse steps: 2 (half to even) and 2; rank 1 decodes to 0.0, -0.5
    assert body.hex() == "02000000020000000200000001010100" "0307" "00010100" "02000202" "0200"
    out = codec.decode(body, 2, 1, 2, FLAG_LSE, np.uint16)
    assert out.scores.tolist() == [[[1.0, 0.5]], [[0.0, -0.5]]]
    assert out.lse is not None and out.lse.tolist() == [[2.0, 1.0]]


def test_raw_byte_layout_matches_spec():
    idx = np.array([1, 0x0203], np.uint16).reshape(2, 1, 1)
    sc = np.array([1.0, -2.0], np.float32).reshape(2, 1, 1)
    body = get_codec("f16").encode(RecordArrays(idx, sc, np.array([[2]], np.uint8), None))
    f16 = np.array([1.0, -2.0], np.float16).view(np.uint16)
    expected = bytes([0x01, 0x03, 0x00, 0x02]) + bytes([f16[0] & 255, f16[1] & 255, f16[0] >> 8, f16[1] >> 8]) + b"\x02"
    assert body == expected


# ---------------------------------------------------------------------------------------------- malformed
def _decode(codec, body, a):
    return codec.decode(body, *a.indices.shape, a.flags, a.indices.dtype)


@pytest.mark.parametrize("spec", ALL, ids=lambda s: "-".join(map(str, s.values())))
def test_truncated_and_extended_bodies_raise(spec):
    codec = get_codec(spec)
    a = make(np.random.default_rng(5), 3, 4, 5, 300, lse=True, counts=True)
    body = codec.encode(a)
    for cut in range(0, len(body), max(1, len(body) // 40)):
        with pytest.raises(CorruptRecordError):
            _decode(codec, body[:cut], a)
    with pytest.raises(CorruptRecordError):
        _decode(codec, body + b"\0", a)


def test_compact_reject_rules():
    """One case per reject rule C2-C8 of spec/ENCODINGS.md section 3.4 (C1: the truncation test)."""
    codec = get_codec("compact")
    a = make(np.random.default_rng(6), 3, 4, 5, 300, counts=True, scale=0.5)
    body = bytearray(codec.encode(a))
    npal = struct.unpack_from("<I", body)[0]

    def bad(mutate, match):
        b = bytearray(body)
        mutate(b)
        with pytest.raises(CorruptRecordError, match=match):
            _decode(codec, bytes(b), a)

    bad(lambda b: b.__setitem__(12, 3), "width")  # C2: palette width 3
    bad(lambda b: b.__setitem__(15, 1), "width")  # C2: reserved byte set
    bad(lambda b: b.__setitem__(16, 0), "counts")  # C3: a location with no entries
    bad(lambda b: b.__setitem__(16, 4), "counts")  # C3: more than k entries
    bad(lambda b: b.__setitem__(slice(0, 4), struct.pack("<I", 0)), "palette size")  # C4
    bad(lambda b: b.__setitem__(slice(0, 4), struct.pack("<I", 10**6)), "palette size")  # C4
    bad(lambda b: b.__setitem__(slice(0, 4), struct.pack("<I", npal - 1)), "implies")  # C5
    bad(lambda b: b.__setitem__(16 + 20 + 1, 0), "increasing")  # C6: second palette difference 0
    bad(lambda b: b.__setitem__(16 + 20 + npal, 255), "palette id")  # C8
    wide = bytearray(codec.encode(make(np.random.default_rng(7), 2, 2, 2, 60_000)))
    wide[16 + 2 * struct.unpack_from("<I", wide)[0] - 1] = 0xFF  # C7: last palette difference, high byte
    with pytest.raises(CorruptRecordError, match="index type"):
        codec.decode(bytes(wide), 2, 2, 2, 0, np.uint16)


@pytest.mark.parametrize("spec", ALL, ids=lambda s: "-".join(map(str, s.values())))
def test_mutation_fuzz_only_typed_errors(spec):
    """Random byte flips, insertions and deletions: decode or CorruptRecordError, never anything else."""
    codec = get_codec(spec)
    rng = np.random.default_rng(8)
    cases = [make(rng, k, h, w, c, lse=has_lse, counts=n) for k, h, w, c, has_lse, n in
             [(5, 15, 15, 1000, False, False), (3, 4, 5, 300, True, True), (1, 1, 1, 7, True, False),
              (4, 3, 3, 70_000, False, True)]]  # fmt: skip
    for i in range(300):
        a = cases[i % len(cases)]
        body = bytearray(codec.encode(a))
        op = rng.integers(3)
        pos = int(rng.integers(len(body)))
        if op == 0:
            for _ in range(int(rng.integers(1, 4))):
                body[int(rng.integers(len(body)))] = int(rng.integers(256))
        elif op == 1:
            body[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8))
        else:
            del body[pos : pos + int(rng.integers(1, 4))]
        try:
            out = _decode(codec, bytes(body), a)
        except CorruptRecordError:
            continue
        assert out.indices.shape == a.indices.shape and out.scores.shape == a.scores.shape
        if codec.name != "compact":  # raw bodies have no redundancy left to check values against
            continue
        assert np.isfinite(out.scores).all() and (out.lse is None or np.isfinite(out.lse).all())
        if a.counts is not None:
            assert out.counts.min() >= 1 and out.counts.max() <= a.indices.shape[0]


def test_max_body_size_bounds_worst_case():
    """Widest streams everywhere: huge class ids, a palette per entry, wide logits and lse."""
    codec = get_codec({"name": "compact", "step": 2.0**-7})
    k, h, w = 4, 3, 3
    n = k * h * w
    idx = (np.arange(n, dtype=np.uint32) * 100_003 % 4_000_000_000).reshape(k, h, w)
    sc = -np.sort(-np.linspace(-8e6, 8e6, n)).astype(np.float32).reshape(k, h, w)
    lse = (sc[0] + 8e6).astype(np.float32)
    for counts in (None, np.full((h, w), k, np.uint8)):
        a = RecordArrays(idx, sc, counts, lse)
        assert len(codec.encode(a)) <= codec.max_body_size(k, h, w, a.flags, 4)


def test_flags_constants():
    assert (FLAG_COUNTS, FLAG_LSE) == (1, 2)


# ---------------------------------------------------------------------------------------------- container
@pytest.mark.parametrize("spec", ALL, ids=lambda s: "-".join(map(str, s.values())))
def test_through_the_container(tmp_path, spec):
    import relabel_maps

    rng = np.random.default_rng(9)
    arrays = {f"img{i}": make(rng, 5, 3 + i, 4, 1000, lse=i % 2 == 1, counts=i == 2) for i in range(4)}
    path = tmp_path / "maps.rlm"
    with relabel_maps.Writer(path, num_classes=1000, k=5, encoding=spec) as writer:
        for key, a in arrays.items():
            writer.add(key, a.indices, a.scores, lse=a.lse, counts=a.counts)
    codec = get_codec(spec)
    with relabel_maps.open(path) as maps:
        assert maps.metadata["encoding"] == codec.spec
        for key, a in arrays.items():
            lm = maps[key]
            check(codec, a, RecordArrays(lm.indices, lm.scores, lm.counts, lm.lse))


# ---------------------------------------------------------------------------------------------- batches
def stack(records: list[RecordArrays]) -> RecordArrays:
    """``N`` records of one shape as one batch of ``(N, ...)`` arrays."""
    def st(name: str) -> Any:
        parts = [getattr(r, name) for r in records]
        return None if parts[0] is None else np.stack(parts)

    return RecordArrays(st("indices"), st("scores"), st("counts"), st("lse"))


def bodies_of(batch: Bodies) -> list[bytes]:
    return [batch.data[a:b] for a, b in zip(batch.offsets[:-1].tolist(), batch.offsets[1:].tolist(), strict=True)]


@pytest.mark.parametrize("spec", ALL, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("lse,counts", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("shape", [(5, 15, 15, 1000), (3, 4, 5, 300), (4, 3, 3, 70000), (1, 1, 1, 2)])
def test_encode_many_gives_the_bodies_of_encode(spec, lse, counts, shape):
    codec = get_codec(spec)
    rng = np.random.default_rng(sum(shape))
    records = [make(rng, *shape, lse=lse, counts=counts, scale=8.0 * (1 + i % 3)) for i in range(9)]
    batch = encode_many(codec, stack(records))
    assert len(batch) == 9 and batch.offsets[0] == 0
    assert bodies_of(batch) == [codec.encode(r) for r in records]
    assert list(batch) == bodies_of(batch)


@given(
    k=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5), num_classes=st.sampled_from([2, 7, 300, 70000]),
    n=st.integers(1, 6), lse=st.booleans(), counts=st.booleans(), seed=st.integers(0, 2**16),
    spec=st.sampled_from(ALL),
)
def test_encode_many_property(k, h, w, num_classes, n, lse, counts, seed, spec):
    codec = get_codec(spec)
    rng = np.random.default_rng(seed)
    records = [make(rng, k, h, w, num_classes, lse=lse, counts=counts, scale=float(rng.choice([0.01, 8, 3000])))
               for _ in range(n)]
    assert bodies_of(encode_many(codec, stack(records))) == [codec.encode(r) for r in records]


@pytest.mark.parametrize("cells", [1, 5000, 1 << 40])
def test_batch_palettes_in_chunks_and_by_sorting(monkeypatch, cells):
    """A presence table of (records x classes) taken a few records at a time, or (wide classes)
    sorting (record, class) pairs, gives the same palettes."""
    import relabel_maps.codecs.compact as compact

    monkeypatch.setattr(compact, "_PRESENCE_CELLS", cells)
    codec = get_codec("compact")
    rng = np.random.default_rng(4)
    for counts in (False, True):
        records = [make(rng, 4, 5, 6, 1000, counts=counts) for _ in range(7)]
        assert bodies_of(encode_many(codec, stack(records))) == [codec.encode(r) for r in records]


def test_encode_many_of_no_records_and_of_a_codec_without_batches():
    a = make(np.random.default_rng(1), 3, 2, 2, 50)
    empty = RecordArrays(a.indices[:0][None][:0], a.scores[None][:0], None, None)
    assert len(encode_many(get_codec("compact"), empty)) == 0

    class OneByOne(F32Codec):
        name = "one-by-one"
        encode_many = None  # type: ignore[assignment]

    records = [make(np.random.default_rng(i), 3, 2, 2, 50, lse=True) for i in range(3)]
    assert bodies_of(encode_many(OneByOne(), stack(records))) == [F32Codec().encode(r) for r in records]


def test_batch_checks_raise_like_encode():
    codec = get_codec("compact")
    rng = np.random.default_rng(2)
    good = [make(rng, 3, 2, 2, 50) for _ in range(3)]
    for bad, match in ((np.nan, "finite"), (1e9, "compact range"), (np.inf, "finite")):
        batch = stack(good)
        batch.scores[1, 0, 0, 0] = bad
        with pytest.raises(InvalidLabelMapError, match=match):
            encode_many(codec, batch)
    batch = stack(good)
    batch.scores[2, :, 0, 0] = [1.0, 2.0, 0.0]
    with pytest.raises(InvalidLabelMapError, match="descending"):
        encode_many(codec, batch)


# ---------------------------------------------------------------------------------------------- add_many
def _maps(n: int, seed: int, *, k: int = 5, lse: bool = False, counts: bool = False, shuffle: bool = False):
    rng = np.random.default_rng(seed)
    records = [make(rng, k, 6, 5, 1000, lse=lse, counts=counts) for _ in range(n)]
    batch = stack(records)
    if shuffle:  # entries not sorted by score: both paths sort them the same way
        order = np.stack([rng.permutation(k) for _ in range(n)])[:, :, None, None]
        keep = batch.counts is None
        idx = np.take_along_axis(batch.indices, order, axis=1) if keep else batch.indices
        sc = np.take_along_axis(batch.scores, order, axis=1) if keep else batch.scores
        batch = RecordArrays(idx.astype(np.int64), sc.astype(np.float64), batch.counts, batch.lse)
    return [f"img/{seed}/{i:05d}.JPEG" for i in range(n)], batch


def _files(path) -> dict[str, bytes]:
    from pathlib import Path

    p = Path(path)
    return {f.name: f.read_bytes() for f in sorted(p.iterdir())} if p.is_dir() else {p.name: p.read_bytes()}


@pytest.mark.parametrize("spec", [{"name": "f32"}, {"name": "f16"}, {"name": "compact"}], ids=lambda s: s["name"])
@pytest.mark.parametrize(
    "case",
    [{}, {"lse": True}, {"counts": True}, {"shuffle": True}, {"k": 3}, {"dictionary": True}, {"max_records": 70},
     {"level": 19, "lse": True}, {"resume": True, "max_records": 70}],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain",
)
def test_add_many_writes_the_same_files_as_add(tmp_path, spec, case):
    import relabel_maps

    case = dict(case)
    wkw = {k: case.pop(k) for k in ("dictionary", "max_records", "level", "resume") if k in case}
    n = 300 if wkw.get("dictionary") else 150
    keys, b = _maps(n, 3, **case)
    outputs = []
    for mode in ("add", "add_many"):
        out = tmp_path / mode / ("ds" if "max_records" in wkw else "maps.rlm")
        with relabel_maps.Writer(out, num_classes=1000, k=5, encoding=spec, **wkw) as w:
            if mode == "add":
                for i, key in enumerate(keys):
                    w.add(key, b.indices[i], b.scores[i], lse=None if b.lse is None else b.lse[i],
                          counts=None if b.counts is None else b.counts[i])
            else:
                for s in (0, 1, 100, 101):  # batches of 1, 99, 1 and the rest
                    e = {0: 1, 1: 100, 100: 101, 101: n}[s]
                    w.add_many(keys[s:e], b.indices[s:e], b.scores[s:e], lse=None if b.lse is None else b.lse[s:e],
                               counts=None if b.counts is None else b.counts[s:e])
        outputs.append(_files(out.parent / out.name))
    assert outputs[0] == outputs[1]
    with relabel_maps.open(tmp_path / "add_many" / ("ds" if "max_records" in wkw else "maps.rlm")) as maps:
        assert list(maps) == sorted(keys) and maps.verify() == []


def test_add_many_is_all_or_nothing_and_names_the_bad_map(tmp_path):
    import relabel_maps
    from relabel_maps.errors import WriterError

    keys, b = _maps(20, 5)
    with relabel_maps.Writer(tmp_path / "m.rlm", num_classes=1000, k=5) as w:
        w.add_many(keys[:5], b.indices[:5], b.scores[:5])
        bad_idx = b.indices.astype(np.int64).copy()
        bad_idx[12, 0, 0, 0] = 1000
        with pytest.raises(InvalidLabelMapError, match=r"img/5/00012.JPEG.*class indices"):
            w.add_many(keys[5:], bad_idx[5:], b.scores[5:])
        bad_sc = b.scores.copy()
        bad_sc[7, 1, 2, 3] = np.nan
        with pytest.raises(InvalidLabelMapError, match=r"00007.*finite"):
            w.add_many(keys[5:], b.indices[5:], bad_sc[5:])
        bad_sc[7, 1, 2, 3] = 1e9  # beyond the compact range at step 1/256
        with pytest.raises(InvalidLabelMapError, match=r"00007.*compact range"):
            w.add_many(keys[5:], b.indices[5:], bad_sc[5:])
        with pytest.raises(InvalidLabelMapError, match="k=6"):
            w.add_many(keys[5:7], np.zeros((2, 6, 6, 5), np.uint16), np.zeros((2, 6, 6, 5), np.float32))
        with pytest.raises(WriterError, match="duplicate key 'img/5/00003.JPEG'"):
            w.add_many(keys[5:8] + keys[3:4], b.indices[5:9], b.scores[5:9])
        with pytest.raises(WriterError, match="duplicate key 'img/5/00006.JPEG'"):
            w.add_many(keys[5:7] + keys[6:7], b.indices[5:8], b.scores[5:8])
        with pytest.raises(InvalidArgumentError, match="shape"):
            w.add_many(keys[5:8], b.indices[5:7], b.scores[5:7])
        with pytest.raises(InvalidArgumentError, match="shape"):
            w.add_many(keys[5:7], b.indices[5], b.scores[5])
        assert len(w) == 5
        w.add_many(keys[5:], b.indices[5:], b.scores[5:])
        w.add_many([], b.indices[:0], b.scores[:0])
    with relabel_maps.open(tmp_path / "m.rlm") as maps:
        assert list(maps) == keys and maps.verify() == []


def test_compress_many_gives_the_frames_of_compress():
    from relabel_maps.dictionary import train_dictionary
    from relabel_maps.records import RecordEncoder

    keys, b = _maps(260, 8, lse=True)
    for threads in (1, 2):
        enc = RecordEncoder(codec=get_codec("compact"), num_classes=1000, k=5, level=3, threads=threads)
        batch = enc.encode_many(keys, b.indices, b.scores, lse=b.lse)
        bodies = list(batch.bodies)
        for dictionary in (b"", train_dictionary(bodies, level=3, count_size=False)):
            enc.use_dictionary(dictionary)
            assert enc.compress_many(batch.bodies) == [enc.compress(body) for body in bodies]
            assert enc.records_many(keys, b.indices, b.scores, lse=b.lse) == [
                batch.header + enc.compress(body) for body in bodies
            ]


def test_frame_compressor_threads_change_speed_not_bytes():
    """Frames of the pooled, per-thread contexts equal one plain zstd context's, for every split of a
    batch between threads, with and without a dictionary; close() stops the threads and a later
    batch starts them again."""
    import threading

    import zstandard

    from relabel_maps.codecs import Bodies
    from relabel_maps.dictionary import train_dictionary
    from relabel_maps.frames import FrameCompressor

    rng = np.random.default_rng(11)
    bodies = [rng.integers(0, 7, size=int(rng.integers(0, 3000)), dtype=np.uint8).tobytes() for _ in range(97)]
    packed = Bodies(b"".join(bodies), np.cumsum([0] + [len(b) for b in bodies]).astype(np.int64))
    dictionary = train_dictionary(bodies, level=3, count_size=False)
    for dict_bytes in (b"", dictionary):
        zdict = zstandard.ZstdCompressionDict(dict_bytes) if dict_bytes else None
        plain = zstandard.ZstdCompressor(level=3, dict_data=zdict, write_content_size=True, write_checksum=False)
        expected = [plain.compress(b) for b in bodies]
        for threads in (1, 2, 3, 8):
            before = set(threading.enumerate())
            frames = FrameCompressor(3, dict_bytes, threads)
            assert frames.compress_many(packed) == expected
            assert [frames.compress(b) for b in bodies] == expected
            frames.close()
            assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("relabel-maps-zstd")]
            assert frames.compress_many(packed) == expected  # usable after close()
            frames.close()


def test_batch_palettes_of_many_records_in_one_table():
    """Palette positions counted in int16 across a table of many records (the running count wraps)."""
    codec = get_codec("compact")
    rng = np.random.default_rng(6)
    records = [make(rng, 5, 15, 15, 1000) for _ in range(300)]  # ~1000 classes per map: counts pass 32767
    assert bodies_of(encode_many(codec, stack(records))) == [codec.encode(r) for r in records]
