"""Conformance vectors (spec/vectors/): decoded arrays, pooled labels, reproducible bytes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import relabel_maps
from relabel_maps.format import HEADER_SIZE, MAGIC
from relabel_maps.frame import TeacherFrame
from relabel_maps.pooling import pool, pool_dense

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
DOC = json.loads((VECTORS / "vectors.json").read_text(encoding="utf-8"))
#: the same files as written by format 1.0, kept unchanged (not regenerated): readers keep reading them
FROZEN = VECTORS / "1.0"
FROZEN_FILES = [f for f in DOC["files"] if (FROZEN / f["path"]).exists()]


def _generator():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _files_on_disk(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """``{relative path: bytes}`` of the vector files under ``root``, leaving out the folders in ``skip``."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and p.suffix in (".rlm", ".json") and not rel.startswith(tuple(f"{s}/" for s in skip)):
            files[rel] = p.read_bytes()
    return files


def _check_records(maps: Any, entry: dict) -> None:
    """``maps`` verify and decode to exactly the arrays ``entry`` records."""
    assert sorted(maps.keys()) == sorted(entry["records"])
    assert maps.verify() == []
    for key, rec in entry["records"].items():
        lm = maps[key]
        assert lm.num_classes == entry["num_classes"] and lm.score_kind == entry["score_kind"]
        assert list(lm.shape) == rec["shape"]
        np.testing.assert_array_equal(lm.indices, np.array(rec["indices"], dtype=lm.indices.dtype))
        np.testing.assert_array_equal(lm.scores, np.array(rec["scores"], dtype=np.float32))
        for name in ("lse", "counts"):
            got = getattr(lm, name)
            if rec[name] is None:
                assert got is None
            else:
                np.testing.assert_array_equal(got, np.array(rec[name], dtype=got.dtype))


def test_vectors_are_small_and_complete() -> None:
    total = sum(len(b) for b in _files_on_disk(VECTORS).values())  # the 1.0 copies included
    assert total < 200 * 1024
    paths = {f["path"] for f in DOC["files"]}
    assert {"f32.rlm", "f16.rlm", "lse_counts.rlm", "probabilities.rlm", "sharded"} <= paths
    assert len(DOC["pool"]) >= 50
    assert DOC["format_version"] == list(relabel_maps.FORMAT_VERSION)
    assert {f["path"] for f in FROZEN_FILES} == paths  # every variant also as a 1.0 file


@pytest.mark.parametrize("entry", DOC["files"], ids=[f["path"] for f in DOC["files"]])
def test_decoded_arrays(entry: dict) -> None:
    with relabel_maps.open(VECTORS / entry["path"]) as maps:
        _check_records(maps, entry)
        teacher = maps.metadata["teacher"]
        assert "crop_mode" in teacher and "crop_pct" in teacher and "resize" not in teacher


@pytest.mark.parametrize("entry", FROZEN_FILES, ids=[f["path"] for f in FROZEN_FILES])
def test_format_1_0_files_still_read(entry: dict) -> None:
    """Files written by format 1.0 open, verify and decode to the arrays of the current vectors."""
    root = FROZEN / entry["path"]
    for path in [root] if root.is_file() else sorted(root.glob("*.rlm")):
        header = path.read_bytes()[:HEADER_SIZE]
        assert header[:8] == MAGIC and header[8:12] == bytes([1, 0, 0, 0])  # version 1.0
    with relabel_maps.open(root) as maps:
        assert maps.metadata["format_version"] == "1.0"
        assert "resize" in maps.metadata["teacher"] and "crop_mode" not in maps.metadata["teacher"]
        assert TeacherFrame.from_metadata(maps.metadata) == TeacherFrame("squash")
        _check_records(maps, entry)


def test_pooled_labels() -> None:
    opened: dict[str, Any] = {}
    worst = 0.0
    try:
        for case in DOC["pool"]:
            maps = opened.setdefault(case["path"], relabel_maps.open(VECTORS / case["path"]))
            lm = maps[case["key"]]
            kw = dict(flip=case["flip"], size=case["size"], fill=case["fill"], temperature=case["temperature"],
                      sampling_ratio=case["sampling_ratio"])
            expected = np.array(case["expected"], dtype=np.float64)
            for fn in (pool, pool_dense):
                got = fn(lm, case["box"], **kw)
                assert got.shape == expected.shape
                worst = max(worst, float(np.abs(got - expected).max()))
    finally:
        for m in opened.values():
            m.close()
    assert worst <= DOC["pool_tolerance"], worst


def test_regenerating_gives_identical_bytes(tmp_path: Path) -> None:
    if DOC["tool_version"] != relabel_maps.__version__:
        pytest.skip("vectors were written by another tool version: run spec/vectors/make_vectors.py")
    _generator().build(tmp_path)
    assert _files_on_disk(tmp_path) == _files_on_disk(VECTORS, skip=(FROZEN.name,))
