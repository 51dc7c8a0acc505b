"""Where a run's results go: records to a background writer thread, failures to a JSON-lines log.

The writer thread encodes, compresses and writes records with :class:`relabel_maps.Writer` and
flushes after every batch, behind a bounded queue (back-pressure instead of unbounded memory), so
the device never waits for the disk. Batches arrive on the host, checked (finite values only).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from ..errors import WriterError
from ..writer import Writer
from .step import TopK

__all__ = ["FailureLog", "RecordSink", "failed_keys"]

#: one batch for the writer: its keys and the step's results on the host
Job = tuple[Sequence[str], TopK]


class RecordSink(threading.Thread):
    """Background writer: adds a batch's records and flushes."""

    def __init__(self, writer: Writer, maxsize: int, on_written: Callable[[int], None]) -> None:
        super().__init__(name="relabel-maps-writer", daemon=True)
        self.writer = writer
        self.q: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, maxsize))
        self.error: BaseException | None = None
        self.on_written = on_written

    def put(self, job: Job) -> None:
        """Queue a batch; blocks while the queue is full, raises once writing has failed."""
        while True:
            if self.error is not None:
                raise WriterError(f"writing failed: {self.error}") from self.error
            try:
                self.q.put(job, timeout=0.5)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is not None:
                continue  # drain after a failure so the producer never blocks
            try:
                self._write(*job)
            except BaseException as exc:  # noqa: BLE001 - reported to the producer
                self.error = exc

    def _write(self, keys: Sequence[str], result: TopK) -> None:
        vals, idx, lse = result[0].numpy(), result[1].numpy(), result[2]
        # one batch call: encoded with a few numpy calls, compressed on several threads (same bytes as add)
        self.writer.add_many(keys, idx, vals, lse=None if lse is None else lse.numpy())
        self.writer.flush()
        self.on_written(len(keys))

    def finish(self) -> None:
        """Write what is queued and stop; raises if writing failed."""
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise WriterError(f"writing failed: {self.error}") from self.error


class FailureLog:
    """JSON-lines failure report, one object per skipped image, flushed line by line.

    A run rewrites the report (the images an earlier run gave up on are tried again) and creates it
    with its first failure only: a clean run leaves no report."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.f: TextIO | None = None
        self.count = 0
        self.reasons: dict[str, int] = {}

    def add(self, key: str, path: str, reason: str, detail: str) -> None:
        if self.f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "w", encoding="utf-8")
        self.f.write(json.dumps({"key": key, "path": path, "reason": reason, "detail": detail},
                                ensure_ascii=False) + "\n")
        self.f.flush()
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def failed_keys(path: Path) -> set[str]:
    """The keys a failure report at ``path`` lists (empty when there is none)."""
    keys: set[str] = set()
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    keys.add(json.loads(line)["key"])
                except (ValueError, KeyError, TypeError):
                    continue
    return keys
