"""Stream sources of the annotator: WebDataset tar shards and Parquet files, local and ``hf://``.

Built from real photos (``tests/shard_photos.py``) with the bad members real sources have. Every
good image gets the record a folder of the same files gets (same bytes, key by the rules of
:mod:`relabel_maps.samplekeys`), every bad one is reported, parts of a ``--shard`` run join into the
whole, and a run killed with SIGKILL resumes to the same records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
wds = pytest.importorskip("webdataset")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("skimage")

import shard_photos as sp  # noqa: E402

import relabel_maps  # noqa: E402
from relabel_maps.annotate import annotate, load_teacher  # noqa: E402
from relabel_maps.annotate.decode import DRAFT_MARGIN, draft_request, load_rgb  # noqa: E402
from relabel_maps.annotate.sources import (  # noqa: E402
    ParquetSource,
    TarSource,
    is_stream_source,
    open_stream_source,
    resolve_files,
)
from relabel_maps.errors import InvalidArgumentError  # noqa: E402
from relabel_maps.samplekeys import parquet_key, strip_extension, tar_key  # noqa: E402

NC, SIZE = 10, 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return load_teacher("resnet18", pretrained=False, num_classes=NC, input_size=SIZE)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, tiny):
    """The photos as a folder (annotated once, the reference), as tar shards with bad members, and as
    Parquet files with bad rows."""
    root = tmp_path_factory.mktemp("layouts")
    files = sp.photos()
    folder = sp.write_folder(root / "folder", files)
    shards, tar_bad = sp.write_bad_shards(root / "shards", files)
    truncated, text = sp.bad_jpeg()
    rows = sp.image_rows(files)
    first = sp.write_parquet(root / "parquet" / "train-00000-of-00002.parquet", rows[:4], row_group_size=3)
    second = sp.write_parquet(root / "parquet" / "train-00001-of-00002.parquet",
                              [*rows[4:], {"bytes": truncated, "path": "bad/truncated.jpg"},
                               {"bytes": text, "path": "bad/text.jpg"}, {"bytes": None, "path": "bad/none.jpg"},
                               None], row_group_size=3)
    ref = annotate(folder, root / "folder.rlm", tiny, k=3, batch_size=4)
    assert (ref.records, ref.failed) == (len(files), 0)
    return {"root": root, "files": files, "folder": folder, "shards": shards, "tar_bad": tar_bad,
            "parquet": [first, second], "ref": root / "folder.rlm"}


def _records(path) -> dict[str, bytes]:
    with relabel_maps.open(path) as maps:
        return {key: maps.read_record(key) for key in maps}


def _failures(summary) -> dict[str | None, str]:
    lines = Path(summary.failures_path).read_text().splitlines() if summary.failed else []
    return {(r["key"] or r["path"]): r["reason"] for r in map(json.loads, lines)}


# -------------------------------------------------------------------------------------- key rules
def test_key_rules_are_webdatasets():
    names = ["a.jpg", "n01/x_1.JPEG", "dir/sub/k.seg.png", "noext", "dir.v2/k.jpg", "a/.hidden", "x.tar.gz"]
    for name in names:
        prefix, suffix = wds.tariterators.base_plus_ext(name)
        assert tar_key(name) == (None if prefix is None else (prefix, suffix.lower()))
    assert strip_extension("n01440764/n01440764_10026.JPEG") == "n01440764/n01440764_10026"
    assert strip_extension("no_extension") == "no_extension"
    assert parquet_key("hf://datasets/o/n@abc/data/train-00003-of-00010.parquet", 17) == "train-00003-of-00010/17"
    assert parquet_key("C:\\data\\x.parquet", 0) == "x/0"


# -------------------------------------------------------------------------------------- tar shards
def test_tar_shards_give_the_folders_records_and_report_bad_members(layouts, tiny, tmp_path):
    seen = {"n": 0, "failed": 0, "total": []}

    def progress(n, total=None, skipped=0, failed=0):
        seen["n"] += n
        seen["failed"] += failed
        seen["total"].append(total)

    s = annotate(layouts["root"] / "shards", tmp_path / "tar.rlm", tiny, k=3, batch_size=4, progress=progress)
    files, bad = layouts["files"], layouts["tar_bad"]
    assert (s.records, s.annotated) == (len(files), len(files))
    assert _failures(s) == bad and s.failed == len(bad)
    assert s.total == len(files) + 4  # keyed samples read: the good ones, 3 bad ones and the duplicate
    assert seen["failed"] == len(bad) and seen["total"][0] is None  # tar shards: no count up front
    ref, got = _records(layouts["ref"]), _records(tmp_path / "tar.rlm")
    assert sorted(got) == sorted(strip_extension(k) for k in ref)
    for key, record in ref.items():
        assert got[strip_extension(key)] == record, key  # the same bytes for the same image
    with relabel_maps.open(tmp_path / "tar.rlm") as maps:
        assert maps.metadata["annotate.source"] == {"kind": "tar", "key": "__key__"}
        assert maps.metadata["annotate.draft"] is True
    again = annotate(layouts["root"] / "shards", tmp_path / "tar.rlm", tiny, k=3, batch_size=4)
    assert (again.annotated, again.skipped, again.records) == (0, len(files), len(files))  # not read again
    trial = annotate(layouts["root"] / "shards", tmp_path / "trial.rlm", tiny, k=3, batch_size=4, limit=3)
    assert trial.records == 3 and trial.total == 3
    grown = annotate(layouts["root"] / "shards", tmp_path / "trial.rlm", tiny, k=3, batch_size=4)
    assert (grown.annotated, grown.records) == (len(files) - 3, len(files))  # the trial run, extended
    assert _records(tmp_path / "trial.rlm") == got
    picked = annotate(layouts["root"] / "shards", tmp_path / "glob.rlm", tiny, k=3, batch_size=4, globs=["n04266014/*"])
    assert list(_records(tmp_path / "glob.rlm")) == ["n04266014/astronaut"]
    assert picked.failure_reasons == {"empty-shard": 1}  # a shard's own problem is reported whatever the globs


def test_decode_workers_get_the_bytes_and_give_the_same_records(layouts, tiny, tmp_path):
    """Two DataLoader workers decode what the reader thread read (the bytes travel with the batch)."""
    for src in ("shards", "parquet"):
        one = annotate(layouts["root"] / src, tmp_path / f"{src}0.rlm", tiny, k=3, batch_size=3, workers=0)
        two = annotate(layouts["root"] / src, tmp_path / f"{src}2.rlm", tiny, k=3, batch_size=3, workers=2)
        assert _records(one.outputs[0]) == _records(two.outputs[0]) and one.failed == two.failed > 0


def test_tar_source_accepts_files_patterns_and_globs(layouts, tmp_path):
    shards = layouts["root"] / "shards"
    pattern = str(shards / "train-{0000..0002}.tar")
    assert is_stream_source(pattern) and is_stream_source(shards) and is_stream_source(shards / "train-0001.tar")
    assert not is_stream_source(layouts["folder"])
    kind, files = resolve_files(pattern)
    assert kind == "tar" and [f.name for f in files] == ["train-0000.tar", "train-0001.tar", "train-0002.tar"]
    assert [f.name for f in resolve_files(str(shards / "train-000[13].tar"))[1]] == ["train-0001.tar", "train-0003.tar"]
    with pytest.raises(InvalidArgumentError, match="do not exist"):
        resolve_files(str(shards / "train-{0000..0009}.tar"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.tar").write_bytes(shards.joinpath("train-0001.tar").read_bytes())
    (mixed / "b.parquet").write_bytes(layouts["parquet"][0].read_bytes())
    with pytest.raises(InvalidArgumentError, match="both tar shards and Parquet"):
        resolve_files(mixed)
    with pytest.raises(InvalidArgumentError, match="apply to Parquet"):
        open_stream_source(shards, key_column="x")
    src = TarSource(resolve_files(shards / "train-0001.tar")[1])
    samples = list(src.read(src.units[0]))
    assert [s.key for s in samples][-1] == "bad/text" and samples[0].path.startswith("train-0001.tar:")


def test_corrupt_and_cut_shards_are_reported_with_what_came_before(layouts, tiny, tmp_path):
    good = layouts["shards"][0].read_bytes()
    cut = tmp_path / "src" / "cut.tar"
    cut.parent.mkdir()
    cut.write_bytes(good[: len(good) // 2])  # a shard cut in the middle of a member
    (tmp_path / "src" / "zero.tar").write_bytes(b"")
    s = annotate(tmp_path / "src", tmp_path / "o.rlm", tiny, k=3, batch_size=4)
    reasons = _failures(s)
    assert reasons["cut.tar"] == "corrupt-shard" and reasons["zero.tar"] == "empty-shard"
    assert s.records >= 1  # the samples before the cut are kept


# ---------------------------------------------------------------------------------------- Parquet
def test_parquet_gives_the_folders_records_with_default_and_column_keys(layouts, tiny, tmp_path):
    files = layouts["files"]
    s = annotate(layouts["root"] / "parquet", tmp_path / "pq.rlm", tiny, k=3, batch_size=4)
    assert (s.records, s.total) == (len(files), len(files) + 4)
    stem = "train-00001-of-00002"
    assert _failures(s) == {f"{stem}/{len(files) - 4}": "truncated", f"{stem}/{len(files) - 3}": "not-an-image",
                            f"{stem}/{len(files) - 2}": "missing-image", f"{stem}/{len(files) - 1}": "missing-image"}
    got, ref = _records(tmp_path / "pq.rlm"), _records(layouts["ref"])
    order = list(files)  # the rows' order: the first file holds 4, the second the rest
    expected = {parquet_key("train-00000-of-00002", i) if i < 4 else parquet_key(stem, i - 4): ref[k]
                for i, k in enumerate(order)}
    assert got == expected
    by_path = annotate(layouts["root"] / "parquet", tmp_path / "path.rlm", tiny, k=3, batch_size=4,
                       key_column="image.path")
    reasons = _failures(by_path)
    assert reasons["bad/none.jpg"] == "missing-image" and list(reasons.values()).count("missing-key") == 1
    assert _records(tmp_path / "path.rlm") == ref  # keyed by the image's path: the folder's keys
    with relabel_maps.open(tmp_path / "path.rlm") as maps:
        assert maps.metadata["annotate.source"] == {"kind": "parquet", "key": "image.path", "image_column": "image"}
    with pytest.raises(InvalidArgumentError, match="no key column 'nope'"):
        annotate(layouts["root"] / "parquet", tmp_path / "x.rlm", tiny, key_column="nope")
    with pytest.raises(InvalidArgumentError, match="no image column 'pixels'"):
        annotate(layouts["root"] / "parquet", tmp_path / "x.rlm", tiny, image_column="pixels")


def test_damaged_parquet_files_are_reported_not_fatal(layouts, tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = layouts["parquet"][0].read_bytes()
    (src / "a.parquet").write_bytes(good)
    (src / "b.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    (src / "c.parquet").write_bytes(good[: len(good) // 2])  # cut: no footer
    s = annotate(src, tmp_path / "o.rlm", tiny, k=3, batch_size=4)
    assert s.records == 4 and _failures(s) == {"b.parquet#rowgroup=0": "corrupt-file",
                                                "c.parquet#rowgroup=0": "corrupt-file"}


def test_parquet_units_are_row_groups_and_memory_stays_flat(tmp_path):
    """One 200-row group of 50 kB images (10 MB): reading it holds a few rows' bytes at a time (Arrow's
    allocations peak near 32 rows' worth), where reading the row group whole holds all of it."""
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()  # incompressible
    path = sp.write_parquet(tmp_path / "big.parquet", [{"bytes": blob, "path": None}] * 200, row_group_size=200)
    src = ParquetSource(resolve_files(path)[1])
    assert [(u.row_group, u.rows) for u in src.units] == [(0, 200)] and src.known_total(src.units) == 200
    base = pa.total_allocated_bytes()
    peak = 0
    for s in src.read(src.units[0]):
        assert s.data == blob
        peak = max(peak, pa.total_allocated_bytes() - base)
    group = 200 * len(blob)
    base = pa.total_allocated_bytes()
    whole = pq.ParquetFile(path).read_row_group(0)
    assert pa.total_allocated_bytes() - base >= group  # the baseline: the whole group at once
    del whole
    assert peak < group / 4, (peak, group)  # measured: 1.7 MB of the 10 MB group
    three = ParquetSource(resolve_files(sp.write_parquet(tmp_path / "g.parquet", [None] * 7, row_group_size=3))[1])
    assert [(u.row_group, u.rows, u.first_row) for u in three.units] == [(0, 3, 0), (1, 3, 3), (2, 1, 6)]


# ------------------------------------------------------------------------------ parts and resume
@pytest.mark.slow
def test_shard_parts_split_whole_units_and_merge_to_the_whole(layouts, tiny, tmp_path):
    whole = _records_of(annotate(layouts["root"] / "shards", tmp_path / "whole.rlm", tiny, k=3, batch_size=4))
    reports = {}
    for i in (1, 0):  # the duplicate's first copy is in part 0: part 1 holds it until part 0 finishes
        s = annotate(layouts["root"] / "shards", tmp_path / "parts.rlm", tiny, k=3, batch_size=4, shard=(i, 2))
        reports[i] = s
    assert reports[1].index is None and reports[0].index == str(tmp_path / "parts.index.json")
    assert _records(tmp_path / "parts.index.json") == whole
    part1 = json.loads("[" + ",".join(Path(reports[1].failures_path).read_text().splitlines()) + "]")
    dup = [r for r in part1 if r["reason"] == "duplicate-key"]
    assert len(dup) == 1 and "earlier part" in dup[0]["detail"]  # settled when the parts were joined
    rerun = annotate(layouts["root"] / "shards", tmp_path / "parts.rlm", tiny, k=3, batch_size=4, shard=(1, 2))
    assert rerun.annotated == 0 and _records(tmp_path / "parts.index.json") == whole
    for i in (1, 0):  # parts written as shard folders: the later part's shard and its own index are rewritten
        s = annotate(layouts["root"] / "shards", tmp_path / "sharded", tiny, k=3, batch_size=4, shard=(i, 2),
                     max_records=2)
    assert _records(s.index) == whole
    with relabel_maps.open(tmp_path / "sharded" / "part00001of00002") as part, relabel_maps.open(s.index) as joined:
        assert part.verify() == [] and joined.verify() == []
    # Parquet parts split by row groups (and may get none), sharded outputs too
    pq_whole = _records_of(annotate(layouts["root"] / "parquet", tmp_path / "pw.rlm", tiny, k=3, batch_size=4))
    for i in range(3):
        s = annotate(layouts["root"] / "parquet", tmp_path / "pparts", tiny, k=3, batch_size=4, shard=(i, 3),
                     max_records=2)
    assert s.index is not None and _records(s.index) == pq_whole


def _records_of(summary) -> dict[str, bytes]:
    return _records(summary.outputs[0])


_RUNNER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from relabel_maps.annotate import annotate, load_teacher
    t = load_teacher("resnet18", pretrained=False, num_classes=10, input_size=32)
    annotate(sys.argv[1], sys.argv[2], t, k=3, batch_size=3, workers=0)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_resume_after_sigkill_equals_uninterrupted_run(kind, tmp_path):
    src = tmp_path / "src"
    jpegs = {f"c{i % 3}/{i:03d}.jpg": sp.random_jpeg(i, (40 + i % 7, 56)) for i in range(48)}
    keys = list(jpegs)
    if kind == "tar":
        for s in range(4):
            sp.write_tar(src / f"s-{s:04d}.tar", sp.good_members({k: jpegs[k] for k in keys[s * 12:(s + 1) * 12]}))
        sp.write_tar(src / "s-0004.tar", [(keys[5], sp.random_jpeg(99))])  # a duplicate key late in the source
    else:
        sp.write_parquet(src / "a.parquet", sp.image_rows(jpegs), row_group_size=5)
    script = tmp_path / "run.py"
    script.write_text(_RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def journal_lines(out: Path) -> int:
        try:
            return (out.parent / f".{out.name}.journal").read_bytes().count(b"\n")
        except OSError:
            return 0

    def run(out: Path, kill_after: int | None) -> None:
        proc = subprocess.Popen([sys.executable, str(script), str(src), str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill_after is None:
            _, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err.decode()[-2000:]
            return
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline and journal_lines(out) - 1 < kill_after:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    run(tmp_path / "ref.rlm", None)
    out = tmp_path / "out.rlm"
    stored = []
    for target in (9, 30):
        run(out, target)
        assert not out.exists()
        stored.append(journal_lines(out) - 1)
    assert stored == sorted(stored) and 0 < stored[-1] < 48
    run(out, None)
    assert _records(out) == _records(tmp_path / "ref.rlm") and len(_records(out)) == 48
    if kind == "tar":
        report = (tmp_path / "out.rlm.failures.jsonl").read_text()
        assert json.loads(report)["reason"] == "duplicate-key"  # reported by the resumed run too


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_write_one_combined_index(layouts, tmp_path):
    """Two ranks over the tar shards (``torchrun``, CPU): each writes its part; the combined index
    is written once both have finished and reads as the whole source."""
    cli = Path(sys.executable).parent / "relabel-maps"
    if not cli.exists():
        pytest.skip("the relabel-maps entry point is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = ["annotate", str(layouts["root"] / "shards"), str(tmp_path / "maps"), "-t", "resnet18", "--random-init",
            "--num-classes", str(NC), "--input-size", str(SIZE), "-k", "3", "-b", "4", "-q"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--no-python",
                           str(cli), *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    index = tmp_path / "maps" / "maps.index.json"
    assert index.is_file() and sorted(p.name for p in (tmp_path / "maps").glob("*.rlm")) == [
        "part00000of00002.rlm", "part00001of00002.rlm"]
    whole = annotate(layouts["root"] / "shards", tmp_path / "whole.rlm",
                     load_teacher("resnet18", pretrained=False, num_classes=NC, input_size=SIZE), k=3, batch_size=4)
    assert _records(index) == _records(whole.outputs[0])


# ------------------------------------------------------------------------------------- hf://
def _publish(hub_server, layouts) -> None:
    files = {f"wds/{p.name}": p.read_bytes() for p in layouts["shards"]}
    files.update({f"data/{p.name}": p.read_bytes() for p in layouts["parquet"]})
    files["README.md"] = (b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                          b"    path: data/train-*\n---\n")  # the card's configs name the split's files
    hub_server.put_files("me/photos", files, lfs=True)


@pytest.mark.slow
def test_hub_sources_stream_the_same_records(layouts, tiny, tmp_path, hub_server):
    _publish(hub_server, layouts)
    local_tar = _records(annotate(layouts["root"] / "shards", tmp_path / "t.rlm", tiny, k=3, batch_size=4).outputs[0])
    s = annotate("hf://datasets/me/photos/wds/train-{0000..0003}.tar", tmp_path / "ht.rlm", tiny, k=3, batch_size=4)
    in_repo = {("wds/" + k if k.endswith(".tar") else k): v for k, v in layouts["tar_bad"].items()}
    assert _records(tmp_path / "ht.rlm") == local_tar and _failures(s) == in_repo
    assert hub_server.count(r"^GET /datasets/me/photos/resolve/") >= 3
    local_pq = _records(annotate(layouts["root"] / "parquet", tmp_path / "p.rlm", tiny, k=3, batch_size=4).outputs[0])
    s = annotate("hf://datasets/me/photos", tmp_path / "hp.rlm", tiny, k=3, batch_size=4, split="train")
    assert _records(tmp_path / "hp.rlm") == local_pq and s.failed == 4
    with pytest.raises(InvalidArgumentError, match="no split 'test'"):
        annotate("hf://datasets/me/photos", tmp_path / "x.rlm", tiny, split="test")
    # nothing was copied into the cache: the files were streamed with range requests
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert not any(p.suffix in (".tar", ".parquet") for p in cache.rglob("*") if p.is_file())


@pytest.mark.slow
def test_hub_read_cut_short_is_resumed_in_the_file(layouts, tiny, tmp_path, hub_server, monkeypatch):
    _publish(hub_server, layouts)
    reference = _records(annotate(layouts["root"] / "shards", tmp_path / "t.rlm", tiny, k=3, batch_size=4).outputs[0])
    from relabel_maps.annotate.sources import files as files_mod

    monkeypatch.setattr(files_mod, "_READ_BLOCK", 64 << 10)  # several range requests per shard
    fault = hub_server.inject(r"^GET /datasets/me/photos/resolve/[^/]+/wds/train-0001", "drop", after=1, times=1)
    annotate("hf://datasets/me/photos/wds/*.tar", tmp_path / "h.rlm", tiny, k=3, batch_size=4)
    assert fault.fired == 1 and _records(tmp_path / "h.rlm") == reference
    with pytest.raises(relabel_maps.errors.HubNotFoundError):
        annotate("hf://datasets/me/missing", tmp_path / "m.rlm", tiny)


def test_a_remote_file_cut_short_is_reopened_past_what_it_gave(monkeypatch):
    """huggingface_hub retries a range request itself; when it gives up, the unit is read again and
    the samples already passed on are skipped (``resilient``), with the Hub face's bounded retries."""
    from relabel_maps.annotate.sources.files import resilient

    monkeypatch.setenv("RELABEL_MAPS_HUB_RETRY_DELAY", "0")
    calls = []

    def read(fail_until: int):
        calls.append(1)
        yield from range(3)
        if len(calls) < fail_until:
            raise ConnectionError("connection reset by peer")
        yield from range(3, 5)

    assert list(resilient("hf://datasets/o/n/x.tar", lambda: read(3))) == [0, 1, 2, 3, 4] and len(calls) == 3
    calls.clear()
    monkeypatch.setenv("RELABEL_MAPS_HUB_RETRIES", "2")
    with pytest.raises(relabel_maps.errors.HubNetworkError):
        list(resilient("hf://datasets/o/n/x.tar", lambda: read(99)))
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(ConnectionError):  # a local file is read once: its errors are its own
        list(resilient("/data/x.tar", lambda: read(99)))


# ---------------------------------------------------------------------------------- draft decode
def test_draft_decode_is_the_default_and_can_be_turned_off(tmp_path, tiny):
    """A JPEG at least 2 x DRAFT_MARGIN times the input decodes at a reduced scale; the frame stays
    close to the full decode's, and --no-draft (draft=False) gives exactly the full decode's records."""
    import skimage.data

    big = skimage.data.retina()  # 1411 x 1411
    src = sp.write_folder(tmp_path / "src", {"retina.jpg": _jpeg(big)})
    data = (src / "retina.jpg").read_bytes()
    assert draft_request(1411, 1411, (SIZE, SIZE)) == (int(DRAFT_MARGIN * SIZE),) * 2
    drafted = load_rgb(data, draft=((SIZE, SIZE), "squash", 1.0))
    assert drafted.shape == (177, 177, 3)  # 1/8: still >= 2 px per input pixel
    assert draft_request(300, 451, (SIZE, SIZE)) is None or draft_request(300, 451, (475, 475)) is None
    from relabel_maps.annotate.decode import resize_array

    a = resize_array(drafted, (SIZE, SIZE)).astype(int)
    b = resize_array(load_rgb(data), (SIZE, SIZE)).astype(int)
    assert np.abs(a - b).mean() < 2.0 and np.abs(a - b).max() <= 64
    on = annotate(src, tmp_path / "on.rlm", tiny, k=3)
    off = annotate(src, tmp_path / "off.rlm", tiny, k=3, draft=False)
    passthrough = annotate(src, tmp_path / "pt.rlm", tiny, k=3, gpu_decode=True)  # the device decoder: no draft
    with relabel_maps.open(on.outputs[0]) as m1, relabel_maps.open(off.outputs[0]) as m2, \
            relabel_maps.open(passthrough.outputs[0]) as m3:
        assert (m1.metadata["annotate.draft"], m2.metadata["annotate.draft"], m3.metadata["annotate.draft"]) == (
            True, False, False)
        assert m2.read_record("retina.jpg") == m3.read_record("retina.jpg")  # both decoded in full


def _jpeg(arr) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ CLI
def test_cli_annotates_tar_shards_and_checks_source_options(layouts, tmp_path):
    click_testing = pytest.importorskip("click.testing")
    from relabel_maps_cli.main import main

    runner = click_testing.CliRunner()
    base = ["-t", "resnet18", "--random-init", "--num-classes", NC, "--input-size", SIZE, "-k", 3, "-b", 4]
    pattern = str(layouts["root"] / "shards" / "train-{0000..0003}.tar")
    r = runner.invoke(main, ["annotate", pattern, str(tmp_path / "o.rlm"), *map(str, base), "--no-draft", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["records"] == len(layouts["files"]) and summary["failed"] == len(layouts["tar_bad"])
    with relabel_maps.open(tmp_path / "o.rlm") as maps:
        assert maps.metadata["annotate.draft"] is False
    r = runner.invoke(main, ["annotate", str(layouts["root"] / "parquet"), str(tmp_path / "p.rlm"), *map(str, base),
                             "--key-column", "image.path", "--split", "train", "-q"])
    assert r.exit_code == 0, r.output
    assert _records(tmp_path / "p.rlm") == _records(layouts["ref"])
    r = runner.invoke(main, ["annotate", str(layouts["folder"]), str(tmp_path / "f.rlm"), *map(str, base),
                             "--key-column", "x"])
    assert r.exit_code == 1 and "apply to tar shards and Parquet" in r.output and r.output.count("\n") == 1
    r = runner.invoke(main, ["annotate", str(tmp_path / "nope-{0..2}.tar"), str(tmp_path / "n.rlm"), *map(str, base)])
    assert r.exit_code == 2 and "does not exist" in r.output
