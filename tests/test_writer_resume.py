"""Writer(resume=True): recovery after kill -9 and after truncated partial files / journals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import relabel_maps as rm
from relabel_maps.errors import WriterError

C, K, N, BATCH = 60, 3, 47, 10


def sample(i: int):
    rng = np.random.default_rng(i)
    idx = np.stack([rng.choice(C, K, replace=False) for _ in range(20)], 1).reshape(K, 4, 5)
    return idx, rng.normal(size=(K, 4, 5)).astype(np.float32)


KW: dict[str, Any] = dict(num_classes=C, k=K, encoding="f16", level=3)


def annotate(path, keys=range(N), *, stop_after=None, **kw):
    """Drive a writer like the annotator: skip stored keys, add per batch, flush after each batch."""
    w = rm.Writer(path, resume=True, **{**KW, **kw})
    added = 0
    for start in range(0, N, BATCH):
        for i in keys:
            if start <= i < start + BATCH and f"k{i:03d}" not in w:
                w.add(f"k{i:03d}", *sample(i))
                added += 1
                if stop_after is not None and added >= stop_after:
                    return w
        w.flush()
    w.close()
    return w


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def reference(tmp_path: Path, name: str, **kw) -> dict[str, str]:
    ref = tmp_path / "ref"
    annotate(ref / name, **kw)
    return digest(ref)


@pytest.mark.parametrize(
    "kw", [{}, {"dictionary": True}, {"max_records": 12}, {"max_records": 12, "dictionary": "auto"}]
)
def test_resume_after_kill(tmp_path, kw):
    out = tmp_path / "run"
    name = "maps" if "max_records" in kw else "maps.rlm"
    pid = os.fork()
    if pid == 0:  # child: flush three batches, add a few more records, then die without cleanup
        try:
            annotate(out / name, stop_after=35, **kw)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    w = rm.Writer(out / name, resume=True, **{**KW, **kw})
    stored = set(w.keys())
    assert {f"k{i:03d}" for i in range(30)} <= stored <= {f"k{i:03d}" for i in range(35)}
    w.abort()
    annotate(out / name, **kw)
    assert digest(out) == reference(tmp_path, name, **kw)
    with rm.open(out / name) as maps:
        assert len(maps) == N and maps.verify() == []


def _crash(path, n: int, **kw) -> rm.Writer:
    """Write n records with flushes, then stop without finalizing (files stay as after a crash)."""
    w = annotate(path, stop_after=n, **kw)
    w.flush()
    w.abort()
    return w


def test_truncated_partial_file_recovers_the_complete_prefix(tmp_path):
    rng = np.random.default_rng(0)
    ref = reference(tmp_path, "m.rlm")
    for trial in range(6):
        out = tmp_path / f"t{trial}"
        _crash(out / "m.rlm", 30)
        partial = out / ".m.rlm.partial"
        ends = _record_ends(out / ".m.rlm.journal")
        cut = int(rng.integers(0, partial.stat().st_size + 1))
        with open(partial, "r+b") as f:
            f.truncate(cut)
        w = rm.Writer(out / "m.rlm", resume=True, **KW)
        assert len(w) == sum(end <= cut for end in ends)
        assert w.keys() == [f"k{i:03d}" for i in range(len(w))]
        w.abort()
        annotate(out / "m.rlm")
        assert digest(out) == {"m.rlm": ref["m.rlm"]}


def test_truncated_journal_recovers_the_complete_lines(tmp_path):
    rng = np.random.default_rng(1)
    ref = reference(tmp_path, "m.rlm")
    for trial in range(6):
        out = tmp_path / f"t{trial}"
        _crash(out / "m.rlm", 25)
        journal = out / ".m.rlm.journal"
        data = journal.read_bytes()
        cut = int(rng.integers(0, len(data) + 1))
        journal.write_bytes(data[:cut])
        complete_lines = data[:cut].count(b"\n")
        w = rm.Writer(out / "m.rlm", resume=True, **KW)
        assert len(w) == max(0, complete_lines - 1)  # the first line is the journal header
        w.abort()
        annotate(out / "m.rlm")
        assert digest(out) == {"m.rlm": ref["m.rlm"]}


def test_corrupt_record_stops_recovery_there(tmp_path):
    out = tmp_path / "c"
    _crash(out / "m.rlm", 20)
    ends = _record_ends(out / ".m.rlm.journal")
    with open(out / ".m.rlm.partial", "r+b") as f:
        f.seek(ends[11] + 12)  # inside record 12
        byte = f.read(1)
        f.seek(ends[11] + 12)
        f.write(bytes([byte[0] ^ 0xFF]))
    w = rm.Writer(out / "m.rlm", resume=True, **KW)
    assert len(w) == 12
    w.abort()
    annotate(out / "m.rlm")
    with rm.open(out / "m.rlm") as maps:
        assert len(maps) == N and maps.verify() == []


def test_sharded_resume_keeps_finished_shards(tmp_path):
    out = tmp_path / "s"
    _crash(out / "ds", 30, max_records=12)
    hidden = sorted(p.name for p in (out / "ds").iterdir())
    assert ".ds-00001.rlm.done" in hidden and ".ds-00002.rlm.done" in hidden and ".ds-00003.rlm.partial" in hidden
    w = rm.Writer(out / "ds", resume=True, max_records=12, **KW)
    assert len(w) == 30
    w.abort()
    annotate(out / "ds", max_records=12)
    assert digest(out) == reference(tmp_path, "ds", max_records=12)


def test_resume_with_other_arguments_is_refused(tmp_path):
    out = tmp_path / "r"
    _crash(out / "m.rlm", 15)
    with pytest.raises(WriterError, match="different arguments"):
        rm.Writer(out / "m.rlm", resume=True, **{**KW, "num_classes": C + 1})
    with pytest.raises(WriterError, match="different arguments"):
        rm.Writer(out / "m.rlm", resume=True, **{**KW, "teacher": {"name": "other"}})


def test_resume_false_starts_over(tmp_path):
    out = tmp_path / "r"
    _crash(out / "m.rlm", 15)
    with rm.Writer(out / "m.rlm", **KW) as w:
        assert len(w) == 0
        w.add("only", *sample(0))
    assert sorted(p.name for p in out.iterdir()) == ["m.rlm"]
    assert list(rm.open(out / "m.rlm")) == ["only"]


def test_resume_of_a_finished_run_is_a_no_op(tmp_path):
    runs: tuple[tuple[str, dict[str, Any]], ...] = (("m.rlm", {}), ("ds", {"max_records": 20}))
    for name, kw in runs:
        out = tmp_path / name
        annotate(out / name, **kw)
        before = digest(out)
        w = rm.Writer(out / name, resume=True, **KW, **kw)
        assert len(w) == N and "k000" in w
        with pytest.raises(WriterError, match="already complete"):
            w.add("new", *sample(0))
        paths = w.close()
        assert digest(out) == before and all(Path(p).exists() for p in paths)


def test_resume_without_previous_state_is_a_fresh_run(tmp_path):
    annotate(tmp_path / "fresh.rlm")
    assert len(rm.open(tmp_path / "fresh.rlm")) == N


def _record_ends(journal: Path) -> list[int]:
    lines = journal.read_bytes().split(b"\n")[1:]
    return [json.loads(line)[1] + json.loads(line)[2] for line in lines if line]
