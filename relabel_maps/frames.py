"""Compressing record bodies into zstd frames on several threads.

:class:`FrameCompressor` holds one zstd context per thread (python-zstandard releases the GIL while
it compresses, and a context is reused, not rebuilt per call) and a small pool of threads that it
keeps for its lifetime. The frames are those one :class:`zstandard.ZstdCompressor` with the same
level and dictionary gives for each body in turn: threads change the speed, never the bytes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from .codecs import Bodies

__all__ = ["FrameCompressor", "MIN_PER_THREAD"]

#: records below which a batch is not split further between threads
MIN_PER_THREAD = 16


class FrameCompressor:
    """zstd frames of record bodies at ``level`` with an optional dictionary, on up to ``threads``
    threads (default: one per CPU, at most 4). :meth:`close` stops the threads (the compressor can
    still be used afterwards: it starts new ones)."""

    def __init__(self, level: int, dictionary: bytes = b"", threads: int | None = None) -> None:
        self.level, self.dictionary = level, bytes(dictionary)
        self.threads = max(1, int(threads or min(4, os.cpu_count() or 1)))
        self._context = self._new_context()  # the calling thread's
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _new_context(self) -> zstandard.ZstdCompressor:
        zdict = zstandard.ZstdCompressionDict(self.dictionary) if self.dictionary else None
        return zstandard.ZstdCompressor(level=self.level, dict_data=zdict, write_content_size=True,
                                        write_checksum=False)

    def compress(self, body: bytes) -> bytes:
        """The zstd frame of one body (on the calling thread)."""
        return self._context.compress(body)

    def submit(self, bodies: Bodies) -> Callable[[], list[bytes]]:
        """Start compressing ``bodies`` on the pool's threads (split in at most :attr:`threads`
        runs of at least :data:`MIN_PER_THREAD`); returns a function that waits for the frames."""
        n = len(bodies)
        runs = max(1, min(self.threads, n // MIN_PER_THREAD))
        cuts = [n * r // runs for r in range(runs + 1)]
        pool = self._executor()
        jobs: list[Future[list[bytes]]] = [
            pool.submit(self._compress_run, bodies, lo, hi) for lo, hi in zip(cuts, cuts[1:], strict=False) if hi > lo
        ]
        return lambda: [frame for job in jobs for frame in job.result()]

    def compress_many(self, bodies: Bodies) -> list[bytes]:
        """The zstd frames of ``bodies`` (the same frames as :meth:`compress` of each)."""
        return self.submit(bodies)()

    def close(self) -> None:
        """Stop the pool's threads (after the work already submitted)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="relabel-maps-zstd")
            return self._pool

    def _compress_run(self, bodies: Bodies, lo: int, hi: int) -> list[bytes]:
        context = getattr(self._local, "context", None)
        if context is None:  # one context per pool thread, kept: building one costs more than a frame
            context = self._local.context = self._new_context()
        view, cuts = memoryview(bodies.data), bodies.offsets[lo : hi + 1].tolist()
        return [context.compress(view[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
