"""Dataset naming rules (relabel_maps.layout): where a writer puts its outputs and working files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import relabel_maps as rm
from relabel_maps.errors import FormatError, InvalidArgumentError
from relabel_maps.layout import (
    combined_index_path,
    dataset_location,
    folder_contents,
    generation_shard_name,
    index_path,
    local_dataset_files,
    lock_path,
    next_generation,
    parse_shard_name,
    part_output_path,
    shard_files,
    temp_path,
    working_file,
    working_shard_count,
)

C, K = 20, 2


def _add(w: rm.Writer, n: int, start: int = 0) -> None:
    rng = np.random.default_rng(0)
    for i in range(start, start + n):
        idx = np.stack([rng.choice(C, K, replace=False) for _ in range(6)], 1).reshape(K, 2, 3)
        w.add(f"k{i:03d}", idx, rng.normal(size=(K, 2, 3)).astype(np.float32))


def test_dataset_location(tmp_path: Path) -> None:
    assert dataset_location(tmp_path / "x.rlm", sharded=False) == (tmp_path, "x.rlm")
    assert dataset_location(tmp_path / "x.rlm", sharded=True) == (tmp_path, "x")
    assert dataset_location(tmp_path / "maps", sharded=True) == (tmp_path / "maps", "maps")
    (tmp_path / "odd.rlm").mkdir()  # a folder named like a file holds shards named after it
    assert dataset_location(tmp_path / "odd.rlm", sharded=True) == (tmp_path / "odd.rlm", "odd.rlm")
    with pytest.raises(InvalidArgumentError, match="dataset name"):
        dataset_location("/", sharded=True)


def test_names_match_what_the_writer_writes(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    w = rm.Writer(folder, num_classes=C, k=K, encoding="f16", max_records=3, resume=True)
    _add(w, 7)
    w.flush()
    assert working_file(folder, "ds", 1, "done").exists() and working_file(folder, "ds", 2, "done").exists()
    assert working_file(folder, "ds", 3, "partial").exists() and working_file(folder, "ds", 3, "journal").exists()
    assert working_file(folder, "ds", 3, "partial").name == ".ds-00003.rlm.partial"
    assert working_shard_count(folder, "ds") == 3 and working_shard_count(folder, "other") == 0
    paths = w.close()
    assert shard_files(folder, "ds") == [Path(p) for p in paths[:-1]] and len(paths) == 4
    assert index_path(folder, "ds") == Path(paths[-1]) == folder / "ds.index.json"
    assert working_shard_count(folder, "ds") == 0 and shard_files(tmp_path / "missing", "ds") == []

    single = tmp_path / "one.rlm"
    w = rm.Writer(single, num_classes=C, k=K, encoding="f16", resume=True)
    _add(w, 2)
    w.flush()
    assert working_file(tmp_path, "one.rlm", None, "partial").name == ".one.rlm.partial"
    assert working_file(tmp_path, "one.rlm", None, "partial").exists()
    assert working_file(tmp_path, "one.rlm", None, "journal").exists()
    w.close()


def test_part_outputs() -> None:
    assert part_output_path("x.rlm", 0, 1) == Path("x.rlm")
    assert part_output_path("out/x.rlm", 3, 8) == Path("out/x.part00003of00008.rlm")
    assert part_output_path("out", 3, 8) == Path("out/part00003of00008.rlm")
    assert part_output_path("out", 3, 8, max_records=10) == Path("out/part00003of00008")
    assert combined_index_path("out/x.rlm") == Path("out/x.index.json")
    assert combined_index_path("out") == Path("out/out.index.json")


def test_folder_contents_and_local_files(tmp_path: Path) -> None:
    with rm.Writer(tmp_path / "ds", num_classes=C, k=K, encoding="f16", max_records=2) as w:
        _add(w, 3)
    index, files = folder_contents(tmp_path / "ds")
    assert index == tmp_path / "ds" / "ds.index.json" and files == []
    listed = local_dataset_files(tmp_path / "ds")
    assert [name for name, _ in listed] == ["ds.index.json", "ds-00001-of-00002.rlm", "ds-00002-of-00002.rlm"]
    assert local_dataset_files(listed[1][1]) == [("ds-00001-of-00002.rlm", listed[1][1])]

    index.unlink()
    assert folder_contents(tmp_path / "ds") == (None, shard_files(tmp_path / "ds", "ds"))
    (tmp_path / "ds" / "ds-00002-of-00002.rlm").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="no .rlm"):
        folder_contents(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        local_dataset_files(tmp_path / "nope.rlm")


def test_local_files_report_a_missing_shard(tmp_path: Path) -> None:
    with rm.Writer(tmp_path / "ds", num_classes=C, k=K, encoding="f16", max_records=2) as w:
        _add(w, 3)
    (tmp_path / "ds" / "ds-00001-of-00002.rlm").unlink()
    with pytest.raises(FormatError, match="missing"):
        local_dataset_files(tmp_path / "ds")


def test_generation_names(tmp_path: Path) -> None:
    assert generation_shard_name("ds", 1, 3, 1) == "ds-00001-of-00003.rlm"
    assert generation_shard_name("ds", 2, 3, 12) == "ds-00002-of-00003.g00012.rlm"
    assert parse_shard_name("my-ds-00002-of-00003.g00012.rlm") == ("my-ds", 2, 3, 12)
    assert parse_shard_name("ds-00002-of-00003.rlm") == ("ds", 2, 3, 1)
    assert parse_shard_name("ds-2-of-3.rlm") is None and parse_shard_name("ds.part00000of00002.rlm") is None
    assert next_generation(tmp_path, "ds") == 1
    names = ("ds-00002-of-00002.rlm", "ds-00001-of-00001.g00003.rlm", "ds-00001-of-00002.rlm", "dx-00001-of-00001.rlm")
    for name in names:
        (tmp_path / name).touch()
    assert [p.name for p in shard_files(tmp_path, "ds")] == [
        "ds-00001-of-00002.rlm", "ds-00002-of-00002.rlm", "ds-00001-of-00001.g00003.rlm"]
    assert next_generation(tmp_path, "ds") == 4 and next_generation(tmp_path, "dx") == 2
    assert lock_path(tmp_path, "ds") == tmp_path / ".ds.lock"
    a, b = temp_path(tmp_path / "ds.index.json"), temp_path(tmp_path / "ds.index.json")
    assert a != b and a.name.startswith(f".ds.index.json.{os.getpid()}.") and a.suffix == ".tmp"

