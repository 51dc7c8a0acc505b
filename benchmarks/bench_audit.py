"""Throughput and memory of ``relabel_maps.audit`` over a synthetic dataset (CPU, table only).

Dataset: ``--images`` maps (default 100,000) of 15x15 locations, top-5 of 1000 classes with the
per-location log-sum-exp, ``compact`` encoding (what ``relabel-maps annotate`` writes); labels from
ImageFolder-style keys (``0123/0000042.jpg``: the folder is the class index). About 5% of the labels
are wrong and 10% of the images hold a second object. Built once and cached under ``--cache``.

Measured in one run, each in a fresh process:

* baseline: the loop a user writes with the public API, one image at a time: ``maps.at(i)``, the
  whole-image ``LabelMap.pool()``, its top-5 classes, the label's probability, the top-1 share
  (no flags, no output), over the first ``--baseline-images`` images;
* the audit, table only (``report=False``: the Parquet table, ``summary.json``, the ReaL-style sets),
  with 1 and with 2 worker processes;
* memory of the audit (1 worker) at two sizes, ``N/5`` and ``N``: the rise of the peak resident set
  over the opened dataset (anonymous memory: the mapped file's pages are the page cache's; it
  includes pyarrow's and pandas' one-time imports), and, in a separate run, tracemalloc's peak
  (Python and numpy allocations during the audit).
  Flat in ``N`` means the second pair of numbers is about the first.

    python benchmarks/bench_audit.py                    # 100k images
    python benchmarks/bench_audit.py --images 20000     # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

import relabel_maps

C, K, GRID, POOL = 1000, 5, 15, 12


def build(path: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` synthetic maps to ``path`` (skipped when it exists)."""
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:GRID, 0:GRID]
    centre = ((ys - 7) ** 2 + (xs - 7) ** 2 <= 30).reshape(-1)
    right = (xs >= 9).reshape(-1)
    with relabel_maps.Writer(path, num_classes=C, k=K, level=3) as w:  # the file appears when complete
        for start in range(0, n, 1000):
            b = min(1000, n - start)
            label = rng.integers(0, C, b)
            shown = np.where(rng.random(b) < 0.05, rng.integers(0, C, b), label)  # 5% wrong labels
            second = rng.random(b) < 0.10  # 10% with a second object on the right
            pools = rng.integers(0, C, (b, POOL))
            pools[:, 0], pools[:, 1], pools[:, 2] = shown, (shown + 1) % C, rng.integers(0, C, b)
            logits = rng.normal(0.0, 1.2, (b, POOL, GRID * GRID))
            logits[:, 0, :] += np.where(centre, 4.5, 0.5)
            logits[:, 1, :] += np.where(centre, 3.0, 0.0)
            logits[second, 2, :] += np.where(right, 6.0, 0.0)
            logits[second, 0, :] -= np.where(right, 4.0, 0.0)
            order = np.argsort(-logits, axis=1)[:, :K]
            scores = np.take_along_axis(logits, order, axis=1).astype(np.float32)
            idx = np.take_along_axis(pools[:, :, None], order, axis=1)
            lse = np.log(np.exp(logits).sum(axis=1) + (C - POOL)).astype(np.float32)
            for j in range(b):
                w.add(f"{label[j]:04d}/{start + j:07d}.jpg", idx[j].reshape(K, GRID, GRID),
                      scores[j].reshape(K, GRID, GRID), lse=lse[j].reshape(GRID, GRID))  # fmt: skip


def _anon_mb() -> float:
    """Anonymous resident memory (heap, numpy and Arrow buffers; not the dataset's mapped file pages)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _PeakSampler(threading.Thread):
    """The highest :func:`_anon_mb` seen while running (sampled every 5 ms)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self._stop_event = _anon_mb(), threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.005):
            self.peak = max(self.peak, _anon_mb())

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak, _anon_mb())


def child_baseline(path: str, n: int) -> dict[str, float]:
    maps = relabel_maps.open(path)
    n = min(n, len(maps))
    t0 = time.perf_counter()
    for i in range(n):
        key, m = maps.at(i)
        p = m.pool(fill="uniform")
        top = np.argpartition(-p, 5)[:5]
        top = top[np.argsort(-p[top])]
        _ = float(p[int(key[:4])]), float(np.mean(m.top1() == top[0]))
    return {"images": n, "seconds": time.perf_counter() - t0}


def child_audit(path: str, workers: int, measure: str) -> dict[str, float]:
    """One audit in this process; ``measure``: ``"time"``, ``"anon"`` (peak anonymous memory, sampled)
    or ``"traced"`` (tracemalloc's peak; it slows the run and adds its own memory, so it runs apart)."""
    from relabel_maps.audit import FolderLabels, audit

    maps = relabel_maps.open(path)
    for i in range(0, len(maps), max(1, len(maps) // 50)):  # touch the index and a few records first
        maps.at(i)
    with tempfile.TemporaryDirectory() as tmp:
        labels = FolderLabels(tmp)  # labels from the keys' folders; no images
        anon_open = _anon_mb()
        sampler = _PeakSampler()
        if measure == "anon":
            sampler.start()
        elif measure == "traced":
            tracemalloc.start()
        t0 = time.perf_counter()
        result = audit(maps, labels, Path(tmp) / "out", report=False, workers=workers)
        seconds = time.perf_counter() - t0
        traced = tracemalloc.get_traced_memory()[1] / 2**20 if measure == "traced" else 0.0
        peak = sampler.stop() if measure == "anon" else anon_open
    counts = result.summary["counts"]
    return {
        "images": len(maps), "seconds": seconds, "anon_open_mb": anon_open, "peak_rise_mb": peak - anon_open,
        "tracemalloc_peak_mb": traced, "mislabelled": counts["mislabelled"], "multi_object": counts["multi_object"],
    }  # fmt: skip


def run_child(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--baseline-images", type=int, default=10_000)
    ap.add_argument("--cache", default=tempfile.gettempdir())
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path, *rest = args.child
        if kind == "baseline":
            print(json.dumps(child_baseline(path, int(rest[0]))))
        else:
            print(json.dumps(child_audit(path, int(rest[0]), kind)))
        return

    big = Path(args.cache) / f"relabel_audit_bench_{args.images}.rlm"
    small = Path(args.cache) / f"relabel_audit_bench_{args.images // 5}.rlm"
    t0 = time.perf_counter()
    build(big, args.images)
    build(small, args.images // 5)
    print(f"dataset: {args.images:,} images, {GRID}x{GRID} top-{K} of {C} classes, "
          f"{big.stat().st_size / 2**20:.0f} MiB ({time.perf_counter() - t0:.0f} s to build or load); "
          f"{os.cpu_count()} CPUs")  # fmt: skip

    base = run_child("baseline", str(big), str(args.baseline_images))
    base_rate = base["images"] / base["seconds"]
    rows = [("baseline: per-image loop, public API (1 process)", base_rate)]
    for workers in (1, 2):
        r = run_child("time", str(big), str(workers))
        rows.append((f"audit, table only, {workers} worker{'s' if workers > 1 else ''}", r["images"] / r["seconds"]))
    print(f"\n{'path':<52} {'images/s':>10} {'vs baseline':>12}")
    for name, rate in rows:
        print(f"{name:<52} {rate:>10,.0f} {rate / base_rate:>11.2f}x")
    print("goal: >= 20,000 images/s table-only on 2 cores")

    print(f"\n{'memory (audit, 1 worker)':<28} {'images':>9} {'open':>8} {'peak rise':>10} {'tracemalloc':>12}")
    for path in (small, big):
        m, t = run_child("anon", str(path), "1"), run_child("traced", str(path), "1")
        print(f"{'':<28} {m['images']:>9,} {m['anon_open_mb']:>6.0f}MB {m['peak_rise_mb']:>8.1f}MB "
              f"{t['tracemalloc_peak_mb']:>10.1f}MB")  # fmt: skip
    print("(anonymous resident memory: once the dataset is open, and the rise of its peak during the audit;\n"
          " the dataset's file pages, mapped and shared with the page cache, are not counted)")


if __name__ == "__main__":
    main()
