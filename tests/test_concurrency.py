"""Concurrency: one writer per output (item 4) and readers that never see a half-published dataset
(item 5): writers racing for one output, readers polling while datasets are published and
overwritten, datasets and forked workers that stay open across an overwrite.

Records encode their generation (see :func:`record`), so a view mixing two publications, or showing
a part of one, is detected whatever its keys.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_reliability import KINDS, digests, fork_read, source_of_kind, write_sources

import relabel_maps as rm
from relabel_maps import publish
from relabel_maps.errors import (
    CorruptRecordError,
    DatasetReplacedError,
    FormatError,
    InvalidArgumentError,
    OutputLockedError,
    RelabelMapsError,
    WriterError,
)
from relabel_maps.layout import lock_path
from relabel_maps.merge import merge

C, K, N = 20, 2, 12
KW: dict[str, Any] = dict(num_classes=C, k=K, encoding="f32", level=1)
FORK = mp.get_context("fork")


def record(generation: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Record ``i`` of ``generation``: its scores are ``generation + 0.5`` and ``generation``."""
    idx = np.broadcast_to(np.array([i % C, (i + 1) % C], np.uint16)[:, None, None], (K, 2, 3)).copy()
    scores = np.broadcast_to(np.array([generation + 0.5, generation], np.float32)[:, None, None], (K, 2, 3))
    return idx, scores.copy()


def write_generation(path: Path, generation: int, n: int = N, **kw: Any) -> list[str]:
    with rm.Writer(path, **{**KW, **kw}) as w:
        for i in range(n):
            w.add(f"k{i:02d}", *record(generation, i))
    return w.close()


def view(path: Path | rm.LabelMaps, n: int = N) -> str:
    """What a reader sees at ``path`` (or in an open dataset): ``"gen G"`` for all ``n`` records of
    generation G; ``"partial ..."`` or ``"mixed ..."`` for a broken view; the class name of a typed
    error; ``"untyped ..."`` for any other exception."""
    try:
        if isinstance(path, Path):
            with rm.open(path) as maps:
                gens = [int(maps[key].scores[1, 0, 0]) for key in list(maps)]
        else:
            gens = [int(path[key].scores[1, 0, 0]) for key in [f"k{i:02d}" for i in range(n)]]
    except FormatError as exc:  # what a folder without an index shows
        return "FormatError: shards without an index" if "is missing" in str(exc) else type(exc).__name__
    except RelabelMapsError as exc:
        return type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - reported as a failure
        return f"untyped {type(exc).__name__}: {exc}"
    if len(gens) != n:
        return f"partial {len(gens)} of {n}"
    if len(set(gens)) != 1:
        return f"mixed {sorted(set(gens))}"
    return f"gen {gens[0]}"


# ------------------------------------------------------------------------------ item 4: one writer
def _first_writer(path: Path, kw: dict[str, Any], ready: Any, go: Any, done: Any) -> None:
    try:
        w = rm.Writer(path, **{**KW, **kw})
        for i in range(N // 2):
            w.add(f"k{i:02d}", *record(1, i))
        w.flush()
        ready.set()
        go.wait(30)
        for i in range(N // 2, N):
            w.add(f"k{i:02d}", *record(1, i))
        w.close()
        done.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        done.put(repr(exc))


@pytest.mark.parametrize("kind", ["file", "shards", "resume"])
def test_item4_second_writer_fails_cleanly_and_the_first_result_is_intact(tmp_path, kind):
    """A second job on the output of a running one (a retried array task: ``resume=True``) fails at
    once with the owner's pid and host; the first job's output is complete and verifies."""
    path = tmp_path / ("out" if kind == "shards" else "out.rlm")
    kw: dict[str, Any] = {"shards": {"max_records": 5}, "resume": {"resume": True}}.get(kind, {})
    ready, go, done = FORK.Event(), FORK.Event(), FORK.Queue()
    first = FORK.Process(target=_first_writer, args=(path, kw, ready, go, done))
    first.start()
    try:
        assert ready.wait(30)
        for second in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(OutputLockedError) as info:
                rm.Writer(path, **{**KW, **kw, **second})
            message = str(info.value)
            assert f"process {first.pid} on {socket.gethostname()}" in message
            assert "flock" in message and "not held" in message
    finally:
        go.set()
        first.join(30)
    assert done.get(timeout=5) == "ok" and first.exitcode == 0
    assert view(path) == "gen 1"
    with rm.open(path) as maps:
        assert maps.verify() == []
    assert not lock_path(*(path.parent, path.name) if kind != "shards" else (path, "out")).exists()


def _racer(path: Path, generation: int, kw: dict[str, Any], start: Any, results: Any) -> None:
    try:
        start.wait(10)
        write_generation(path, generation, n=40, **kw)
        results.put((generation, "ok"))
    except RelabelMapsError as exc:
        results.put((generation, type(exc).__name__))
    except Exception as exc:  # noqa: BLE001
        results.put((generation, f"untyped {exc!r}"))


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"max_records": 7}, {"resume": True}])
def test_item4_racing_writers_one_wins_the_other_fails_typed(tmp_path, kw, capsys):
    """Two jobs started together on one output, 12 times: exactly one writes it; the other fails
    with a typed error (the lock while the winner writes, "output exists" once it has finished)."""
    outcomes: collections.Counter[str] = collections.Counter()
    for round_ in range(12):
        path = tmp_path / f"r{round_}" / ("out.rlm" if not kw.get("max_records") else "out")
        start, results = FORK.Barrier(2), FORK.Queue()
        jobs = [FORK.Process(target=_racer, args=(path, g, kw, start, results)) for g in (1, 2)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(60)
        got = dict(results.get(timeout=5) for _ in jobs)
        winners = [g for g, outcome in got.items() if outcome == "ok"]
        assert len(winners) == 1, got
        loser = got[3 - winners[0]]
        assert loser in (OutputLockedError.__name__, WriterError.__name__), got
        outcomes[loser] += 1
        assert view(path, n=40) == f"gen {winners[0]}"
        with rm.open(path) as maps:
            assert maps.verify() == []
    with capsys.disabled():
        print(f"\nracing writers {kw}: the loser's errors {dict(outcomes)}")
    assert sum(outcomes.values()) == 12


def test_item4_one_writer_per_output_in_one_process_and_the_lock_goes_with_the_writer(tmp_path):
    path = tmp_path / "out.rlm"
    w = rm.Writer(path, **KW)
    with pytest.raises(OutputLockedError, match="another writer in this process"):
        rm.Writer(path, **KW, overwrite=True)
    with rm.Writer(tmp_path / "other.rlm", **KW):  # another output is free
        pass
    w.abort()
    write_generation(path, 1)  # abort let go
    with pytest.raises(WriterError, match="exists"):  # a construction failing after the lock let go too
        rm.Writer(path, **KW)
    write_generation(path, 2, overwrite=True)
    with pytest.raises(ValueError):  # an exception in a with block
        with rm.Writer(path, **KW, overwrite=True) as w:
            raise ValueError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.rlm", "out.rlm"]  # no lock file left
    assert view(path) == "gen 2"


def test_item4_a_lock_handed_to_the_next_writer_is_never_free_in_between(tmp_path):
    path = tmp_path / "out.rlm"
    first = rm.Writer(path, **KW)
    first.add("k00", *record(1, 0))
    lock = first.abort(keep_lock=True)
    assert lock is not None and lock.held and first.abort(keep_lock=True) is None  # only once
    with pytest.raises(OutputLockedError):  # another job, in the gap: still locked
        rm.Writer(path, **KW)
    with pytest.raises(InvalidArgumentError, match="held lock"):  # another output's lock is refused
        rm.Writer(tmp_path / "other.rlm", **KW, lock=lock)
    with rm.Writer(path, **KW, lock=lock) as second:  # the new owner
        second.add("k01", *record(1, 1))
    assert not lock.held
    with rm.open(path) as maps:
        assert list(maps) == ["k01"]
    with pytest.raises(InvalidArgumentError, match="held lock"):  # a lock let go cannot be handed on
        rm.Writer(path, **KW, lock=lock, overwrite=True)
    write_generation(path, 3, overwrite=True)  # and the output is free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.rlm"]


def test_item4_extend_continues_a_finished_output_under_one_lock(tmp_path):
    path = tmp_path / "out.rlm"
    with rm.Writer(path, **KW, resume=True) as w:
        w.add("k00", *record(1, 0))
    with pytest.raises(InvalidArgumentError, match="resume"):
        rm.Writer(path, **KW, extend=True)
    with pytest.raises(WriterError, match="different arguments"):
        rm.Writer(path, **{**KW, "level": 3}, resume=True, extend=True)
    ext = rm.Writer(path, **KW, resume=True, extend=True)  # not adopted: open for adding
    assert "k00" not in ext and len(ext) == 0
    with pytest.raises(OutputLockedError):
        rm.Writer(path, **KW, resume=True)
    with rm.open(path) as old:
        ext.add_raw("k00", old.read_record("k00"), dictionary=old.dictionary)
    ext.add("k01", *record(1, 1))
    ext.abort()  # interrupted: the finished output is untouched, the working files kept
    with rm.open(path) as maps:
        assert list(maps) == ["k00"]
    with rm.Writer(path, **KW, resume=True, extend=True) as again:  # resumes the extension
        assert sorted(again) == ["k00", "k01"]
        again.add("k02", *record(1, 2))
    with rm.open(path) as maps:
        assert list(maps) == ["k00", "k01", "k02"] and maps.verify() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.rlm"]


def test_item4_annotate_overwrite_holds_the_lock_while_it_starts_over(tmp_path, monkeypatch):
    """``annotate(overwrite=True)`` drops the earlier run and starts a new writer under one lock: a
    second job trying the output in between is refused, and the run finishes."""
    pytest.importorskip("torch")
    from PIL import Image

    from relabel_maps.annotate import annotate, load_teacher, pipeline

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    teacher = load_teacher("resnet18", pretrained=False, input_size=64)
    out = tmp_path / "maps.rlm"
    annotate(src, out, teacher, k=2, batch_size=2, workers=0)
    seen = []
    remove = pipeline.remove_finished

    def second_job_tries(target, max_records):
        with pytest.raises(OutputLockedError) as info:
            rm.Writer(out, num_classes=1000, k=2, overwrite=True)
        seen.append(str(info.value))
        remove(target, max_records)

    monkeypatch.setattr(pipeline, "remove_finished", second_job_tries)
    redo = annotate(src, out, teacher, k=2, batch_size=2, workers=0, overwrite=True)
    assert len(seen) == 1 and redo.annotated == 3 and redo.records == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.rlm", "src"]  # no lock or working file left


def test_item4_a_killed_writers_lock_file_is_not_held(tmp_path):
    path = tmp_path / "out.rlm"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child dies holding the lock
        try:
            w = rm.Writer(path, **KW)
            w.add("k00", *record(1, 0))
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert lock_path(tmp_path, "out.rlm").read_text().startswith(f'{{"pid": {pid}')  # left, but not held
    write_generation(path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.rlm"]
    assert view(path) == "gen 2"


def test_item4_merge_takes_the_output_lock(tmp_path):
    src = tmp_path / "src"
    write_generation(src, 1, max_records=5)
    for out, kw in ((tmp_path / "m", {"max_records": 5}), (tmp_path / "m.rlm", {})):
        holder = rm.Writer(out, **KW, **kw)
        with pytest.raises(OutputLockedError):
            merge([src], out, overwrite=True)
        holder.abort()
        merge([src], out)
        assert view(out) == "gen 1"


@pytest.mark.slow
def test_item4_convert_takes_the_output_lock(tmp_path):
    torch = pytest.importorskip("torch")
    from relabel_maps.convert.relabel import convert_relabel

    tree = tmp_path / "pt" / "n01440764"
    tree.mkdir(parents=True)
    scores = torch.arange(5.0, 0.0, -1.0).reshape(5, 1, 1).expand(5, 15, 15)  # the release's [2, 5, 15, 15]
    torch.save(torch.stack([scores, torch.arange(5.0).reshape(5, 1, 1).expand(5, 15, 15)]), tree / "a.pt")
    holder = rm.Writer(tmp_path / "c.rlm", num_classes=1000, k=2)
    with pytest.raises(OutputLockedError):
        convert_relabel(tmp_path / "pt", tmp_path / "c.rlm", overwrite=True)
    holder.abort()
    assert convert_relabel(tmp_path / "pt", tmp_path / "c.rlm").records == 1


def _write_index_repeatedly(paths: list[Path], out: Path, rounds: int, results: Any) -> None:
    try:
        for _ in range(rounds):
            publish.write_index(paths, out)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001
        results.put(repr(exc))


def test_item4_ranks_writing_the_same_index_do_not_collide(tmp_path):
    """Every rank of a multi-rank run may write the combined index: each through its own temporary file."""
    folder = tmp_path / "ds"
    write_generation(folder, 1, max_records=3)
    shards = sorted(folder.glob("ds-*.rlm"))
    out = folder / "all.index.json"
    results = FORK.Queue()
    ranks = [FORK.Process(target=_write_index_repeatedly, args=(shards, out, 25, results)) for _ in range(4)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(60)
    assert [results.get(timeout=5) for _ in ranks] == ["ok"] * 4
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    with rm.open(out) as maps:
        assert len(maps) == N and maps.verify() == []


# ------------------------------------------------------------------------------ item 5: publication
def _watch_every_step(monkeypatch: pytest.MonkeyPatch, check: Any) -> None:
    """Run ``check()`` before every rename and deletion (what a publication is made of)."""
    real_replace, real_rename, real_unlink = os.replace, os.rename, os.unlink

    def replace(*args: Any, **kwargs: Any) -> None:
        check()
        real_replace(*args, **kwargs)

    def rename(*args: Any, **kwargs: Any) -> None:
        check()
        real_rename(*args, **kwargs)

    def unlink(*args: Any, **kwargs: Any) -> None:
        check()
        real_unlink(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "unlink", unlink)


@pytest.mark.parametrize("how", ["publish", "overwrite", "merge"])
def test_item5_every_step_of_a_publication_shows_one_complete_generation(tmp_path, monkeypatch, how):
    """Before each rename or deletion of a publication, a reader opening the dataset sees the old
    complete dataset or the new complete one (a fresh publication: nothing yet, a typed error);
    datasets opened before it keep reading generation 1 or raise DatasetReplacedError."""
    ds = tmp_path / "ds"
    if how != "publish":
        write_generation(ds, 1, max_records=3)
        write_generation(tmp_path / "src", 2, max_records=5)
    early_read = rm.open(ds) if how != "publish" else None
    if early_read is not None:
        assert view(early_read) == "gen 1"  # opens every shard
    early_lazy = [rm.open(ds) for _ in range(80)] if how != "publish" else []
    seen: list[str] = []
    visible_without_index: list[bool] = []

    def check() -> None:
        seen.append(view(ds))
        names = [p.name for p in ds.iterdir() if not p.name.startswith(".")] if ds.is_dir() else []
        visible_without_index.append(any(n.endswith(".rlm") for n in names) and "ds.index.json" not in names)
        if early_read is not None:
            seen.append("early " + view(early_read))
        if early_lazy:
            seen.append("lazy " + view(early_lazy.pop()))

    _watch_every_step(monkeypatch, check)
    if how == "merge":
        merge([tmp_path / "src"], ds, overwrite=True)
    else:
        write_generation(ds, 2, max_records=3, overwrite=how == "overwrite")
    check()
    monkeypatch.undo()
    counts = collections.Counter(seen)
    if how == "publish":
        assert set(counts) == {"FormatError", "FormatError: shards without an index", "gen 2"}, counts
        assert any(visible_without_index), "no step showed shards before the index"
    else:
        assert set(counts) == {"gen 1", "gen 2", "early gen 1", "lazy gen 1", "lazy DatasetReplacedError"}, counts
        fresh = [s for s in seen if s.startswith("gen")]
        assert fresh == sorted(fresh)  # once the new index is in place, the old dataset is gone
    assert seen[-1] in ("gen 2", "lazy DatasetReplacedError")
    for maps in [early_read, *early_lazy]:
        if maps is not None:
            maps.close()


def test_item5_an_open_dataset_keeps_its_generation_across_an_overwrite(tmp_path):
    """Records of shards it holds open stay readable after an overwrite; a shard it must open then
    raises DatasetReplacedError; a single file stays readable whole (also in a forked process)."""
    ds, one = tmp_path / "ds", tmp_path / "one.rlm"
    write_generation(ds, 1, max_records=3)
    write_generation(one, 1)
    maps, single = rm.open(ds), rm.open(one)
    assert int(maps["k00"].scores[1, 0, 0]) == 1  # opens the first shard only
    write_generation(ds, 2, max_records=3, overwrite=True)
    write_generation(one, 2, n=N + 5, overwrite=True)
    assert int(maps["k01"].scores[1, 0, 0]) == 1
    with pytest.raises(DatasetReplacedError, match="open the dataset again"):
        maps["k05"]
    assert view(single) == "gen 1" and fork_read_view(single) == "gen 1"
    with pytest.raises(CorruptRecordError, match="ds-00001-of-00004.rlm: .*replaced.*open the dataset again"):
        maps.verify(strict=True)
    assert view(ds) == "gen 2" and view(one, n=N + 5) == "gen 2"
    maps.close()
    single.close()


def _view_in_child(maps: Any, results: Any) -> None:
    results.put(view(maps))


def fork_read_view(maps: rm.LabelMaps) -> str:
    results = FORK.Queue()
    child = FORK.Process(target=_view_in_child, args=(maps, results))
    child.start()
    child.join(30)
    return str(results.get(timeout=5))


def _poll(latest: Any, stop: Any, reads: Any, results: Any) -> None:
    counts: collections.Counter[str] = collections.Counter()
    while not stop.is_set():
        path = latest()
        counts[view(path) if path is not None else "nothing yet"] += 1
        with reads.get_lock():
            reads.value += 1
    results.put(dict(counts))


def _latest(root: Path) -> Path | None:
    folders = sorted(root.glob("ds*"))
    return folders[-1] if folders else None


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["single file overwrite", "sharded overwrite", "sharded publish"])
def test_item5_readers_polling_during_publish_and_overwrite_never_see_a_mix_or_a_part(tmp_path, scenario, capsys):
    """Two reader processes open and read the dataset in a loop (>= 1,000 reads) while a writer
    publishes generation after generation: every view is one complete generation, or a typed
    error while there is no dataset yet (a fresh publication) or after the one a reader opened was
    replaced under it."""
    root = tmp_path / "root"
    root.mkdir()
    target = root / ("x.rlm" if scenario.startswith("single") else "ds")
    latest: Any = (lambda: _latest(root)) if scenario == "sharded publish" else (lambda: target)
    kw: dict[str, Any] = {} if scenario.startswith("single") else {"max_records": 1}  # 12 shards
    if scenario != "sharded publish":
        write_generation(target, 1, **kw)
    stop, reads, results = FORK.Event(), FORK.Value("i", 0), FORK.Queue()
    readers = [FORK.Process(target=_poll, args=(latest, stop, reads, results)) for _ in range(2)]
    for reader in readers:
        reader.start()
    generation, deadline = 1, time.monotonic() + 90
    try:
        rounds = 30 if scenario == "sharded publish" else 10
        while (reads.value < 1000 or generation < rounds) and time.monotonic() < deadline:
            generation += 1
            if scenario == "sharded publish":
                write_generation(root / f"ds{generation:05d}", generation, **kw)
            else:
                write_generation(target, generation, overwrite=True, **kw)
    finally:
        stop.set()
        counts: collections.Counter[str] = collections.Counter()
        for _ in readers:
            counts.update(results.get(timeout=30))
        for reader in readers:
            reader.join(30)
    complete = sum(n for outcome, n in counts.items() if outcome.startswith("gen "))
    other = {outcome: n for outcome, n in counts.items() if not outcome.startswith("gen ")}
    with capsys.disabled():
        print(f"\n{scenario}: {sum(counts.values())} reads, {complete} complete views of "
              f"{len([o for o in counts if o.startswith('gen ')])} generations, other outcomes {other}")
    assert sum(counts.values()) >= 1000
    allowed = {
        "single file overwrite": set(),
        "sharded overwrite": {DatasetReplacedError.__name__},
        "sharded publish": {FormatError.__name__, "FormatError: shards without an index", "nothing yet"},
    }[scenario]
    assert set(other) <= allowed, other
    assert complete >= 10


@pytest.mark.parametrize("kind", [k if k in ("path", "folder") else pytest.param(k, marks=pytest.mark.slow)
                                  for k in KINDS])
def test_item5_forked_workers_keep_the_generation_they_inherit(tmp_path, kind):
    """4 workers forked after the dataset was overwritten read what the parent opened (the source
    kinds of item 6); a callable called again in the worker now opens the new file: refused."""
    write_sources(tmp_path)
    files: list[Any] = []
    maps = rm.open(source_of_kind(kind, tmp_path, files))
    try:
        expected = digests(maps)  # the parent reads every record (opening every shard)
        write_sources(tmp_path, n=40, offset=1000)  # overwrite both outputs: other records and sizes
        results = fork_read(maps)
        if kind == "wrapper":  # refused after fork, as without an overwrite
            assert {r[0] for r in results} == {InvalidArgumentError.__name__}
        elif kind in ("factory", "wrapper-callable"):
            assert {r[0] for r in results} == {DatasetReplacedError.__name__}
            assert "open the dataset again" in results[0][1]
        else:
            assert results == [("ok", expected)] * 4
        assert digests(maps) == expected
    finally:
        maps.close()
        for f in files:
            f.close()
