"""ImageNet-scale writing and reading: writer records/s per encoding and zstd level, and the reader's
open time, lookup latency, key iteration and memory (parent and forked workers), each against the
previous implementation measured in the same run.

Maps: the real ones of ``benchmarks/real_maps.py`` (packaged EfficientNet-Lite0 teacher, 15x15 top-5,
1000 classes), cycled under distinct ImageNet-style keys (``train/nXXXXXXXX/nXXXXXXXX_I.JPEG``),
or with ``--maps synthetic`` smooth random logit maps of the same shape (no torch needed).

Baselines, same run, same machine:

- writing: ``Writer.add`` one map at a time at zstd level 19 (the previous default level; the
  previous writer had no batch path), and at the new default level;
- reading: the same files read with the previous reader's key storage -- per shard a ``list`` of
  ``str`` keys, a ``{key: position}`` dict and ``list``s of record offsets, sizes and CRCs, built
  the way the previous ``Reader`` built them -- looked up through the same decoder;
- iteration: the previous dataset iteration (``sorted`` of the dict of every key).

Memory comes from ``/proc/self/smaps_rollup`` (USS = Private_Clean + Private_Dirty, PSS,
Anonymous), of the parent after random lookups over every shard and of ``--workers`` processes
forked from it that each look up ``--worker-lookups`` random keys (as DataLoader workers do). Each
reader variant runs in its own fresh process. "Cold" lookups follow ``posix_fadvise(DONTNEED)`` on
every shard file (records not read before, their pages dropped from the page cache).

    python benchmarks/bench_scale.py                   # 40,000 maps: a few minutes
    python benchmarks/bench_scale.py --imagenet        # 1,281,167 maps (ImageNet-1k train): long
    python benchmarks/bench_scale.py --json out.json   # also write every figure as JSON
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import relabel_maps as rm  # noqa: E402
from relabel_maps.shards import ShardedReader, from_index, read_index_json  # noqa: E402

IMAGENET = 1_281_167
PER_CLASS = 1300  # keys per class folder (ImageNet: 732-1300)
NUM_CLASSES, K, H, W = 1000, 5, 15, 15
BATCH = 256  # maps per Writer.add_many call (an annotator batch)


# ----------------------------------------------------------------------------------- maps and keys
def key_of(i: int) -> str:
    """The ``i``-th key (sorted order = ``i`` order): an ImageNet-style relative path."""
    c, j = divmod(i, PER_CLASS)
    return f"train/n{c:08d}/n{c:08d}_{j:04d}.JPEG"


def synthetic_maps(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` smooth random top-5 logit maps (15x15, 1000 classes): per image 800 candidate classes
    with Gumbel strengths, a low-frequency wave and per-location noise each; the top 5 per location.
    Close to the real maps' statistics: ~150 distinct classes and ~45 distinct top-1 classes per
    image, top-1 logits around 7, ~2.35 KB per record (compact, level 19; real maps: 2.44 KB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, H, dtype=np.float32), np.linspace(0, 1, W, dtype=np.float32),
                         indexing="ij")
    idx, sc = np.empty((n, K, H, W), np.uint16), np.empty((n, K, H, W), np.float32)
    for s in range(0, n, 16):
        b, cand = min(16, n - s), 800
        cls = np.argsort(rng.random((b, NUM_CLASSES)), axis=1)[:, :cand]
        base = rng.gumbel(0, 0.75, (b, cand, 1, 1)).astype(np.float32)
        fx, fy, ph = rng.uniform(0.5, 3, (3, b, cand, 1, 1)).astype(np.float32)
        field = base + 1.5 * np.sin(2 * np.pi * (fx * xx + fy * yy) + 6.3 * ph)
        field += rng.normal(0, 1.0, (b, cand, H, W)).astype(np.float32)
        top = np.argsort(-field, axis=1)[:, :K]
        sc[s : s + b] = np.take_along_axis(field, top, axis=1)
        idx[s : s + b] = np.take_along_axis(cls[:, :, None, None], top, axis=1)
    return {"indices": idx, "scores": sc}


def load_maps(kind: str) -> tuple[dict[str, np.ndarray], str]:
    """The maps cycled through the dataset, and what they are."""
    if kind == "real":
        import real_maps  # needs the annotate extra the first time (cached afterwards)

        return real_maps.load(180), f"180 real maps ({real_maps.TEACHER}), cycled"
    return synthetic_maps(512), "512 synthetic smooth top-5 maps (bench_scale.synthetic_maps), cycled"


def batches(maps: dict[str, np.ndarray], start: int, stop: int) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """``(keys, indices, scores)`` of maps ``start .. stop - 1``, :data:`BATCH` at a time."""
    m = len(maps["indices"])
    for s in range(start, stop, BATCH):
        e = min(stop, s + BATCH)
        pick = np.arange(s, e) % m
        yield [key_of(i) for i in range(s, e)], maps["indices"][pick], maps["scores"][pick]


# ------------------------------------------------------------------------------------------ writing
def write(path: str, maps: dict[str, np.ndarray], n: int, *, batch: bool, **kw: Any) -> dict[str, float]:
    """Write ``n`` maps; records/s (wall), CPU microseconds per record, bytes per record."""
    t, c = time.perf_counter(), time.process_time()
    with rm.Writer(path, num_classes=NUM_CLASSES, k=K, overwrite=True, **kw) as w:
        for keys, idx, sc in batches(maps, 0, n):
            if batch:
                w.add_many(keys, idx, sc)
            else:
                for j, key in enumerate(keys):
                    w.add(key, idx[j], sc[j])
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) if os.path.isdir(path) \
        else os.path.getsize(path)
    return {"records_per_s": n / wall, "cpu_us_per_record": cpu / n * 1e6, "bytes_per_record": size / n}


def writer_table(maps: dict[str, np.ndarray], tmp: str, n: int, n_base: int, encodings: list[str],
                 levels: list[int], rounds: int = 3) -> list[dict[str, Any]]:
    """Writer throughput per encoding and level (add_many), plus the one-by-one baselines: ``rounds``
    rounds in rotated order, each row keeping its fastest round (shared machines drift)."""
    default = rm.Writer.__init__.__kwdefaults__["level"]  # type: ignore[index]
    plan = [("compact", 19, "add, one by one (previous default level)", n_base, False),
            ("compact", default, "add, one by one", n_base, False)]
    plan += [(enc, level, "add_many", n, True) for enc in encodings for level in levels]
    best: dict[int, dict[str, float]] = {}
    for r in range(max(1, rounds)):
        for i in [*range(r % len(plan), len(plan)), *range(r % len(plan))]:
            enc, level, _, count, batch = plan[i]
            got = write(os.path.join(tmp, "w.rlm"), maps, count, batch=batch, encoding=enc, level=level)
            if i not in best or got["records_per_s"] > best[i]["records_per_s"]:
                best[i] = got
    rows = [{"encoding": enc, "level": level, "how": how, "records": count, **best[i]}
            for i, (enc, level, how, count, _) in enumerate(plan)]
    a, b = os.path.join(tmp, "a.rlm"), os.path.join(tmp, "b.rlm")
    m = min(n_base, 2 * BATCH + 7)
    write(a, maps, m, batch=False, encoding="compact")
    write(b, maps, m, batch=True, encoding="compact")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), "add_many and add must write the same bytes"
    return rows


# ------------------------------------------------------------------------------------------ memory
def smaps() -> dict[str, int]:
    """This process's memory from /proc/self/smaps_rollup, in kB (USS = private clean + dirty)."""
    out: dict[str, int] = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    out["USS"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


class OldKeys:
    """The previous reader's key storage over a dataset (the baseline): per shard, built on first
    use as the previous ``Reader`` did, a list of keys, a ``{key: position}`` dict and lists of
    record offsets, sizes and CRCs; first keys in a list for bisection (the previous
    ``ShardedReader``). Records are read and decoded by the current shard readers."""

    def __init__(self, maps: ShardedReader) -> None:
        import bisect

        self.maps, self.bisect = maps, bisect.bisect_right
        ranges = [maps.shard(s).key_range for s in range(len(maps.shard_names))] if maps._ranges is None else \
            [maps._ranges[s] for s in range(len(maps.shard_names))]
        self.firsts = [r[0] for r in ranges if r is not None]
        self.lasts = [r[1] for r in ranges if r is not None]
        self.shards: dict[int, tuple[list[str], dict[str, int], list[int], list[int], list[int]]] = {}

    def _shard(self, s: int) -> tuple[list[str], dict[str, int], list[int], list[int], list[int]]:
        got = self.shards.get(s)
        if got is None:
            r = self.maps.shard(s)
            keys = r.key_slice(0, len(r))  # the previous Reader decoded every key at open
            rows, _ = r._rows(0, len(r))
            got = self.shards[s] = (keys, {k: i for i, k in enumerate(keys)}, rows["offset"].tolist(),
                                    rows["nbytes"].tolist(), rows["crc32"].tolist())
        return got

    def __getitem__(self, key: str) -> Any:
        c = self.bisect(self.firsts, key) - 1
        if c < 0 or key > self.lasts[c]:
            raise KeyError(key)
        keys, lookup, offsets, nbytes, _ = self._shard(c)
        j = lookup[key]
        r = self.maps.shard(c)
        return r._decoder.decode(r._source().read(offsets[j], nbytes[j]), keys[j])

    def iterate(self) -> int:
        """The previous dataset iteration: every key into one dict, then sorted."""
        lookup: dict[str, int] = {}
        for s in range(len(self.maps.shard_names)):
            for j, key in enumerate(self.maps.shard(s).key_slice(0, len(self.maps.shard(s)))):
                lookup[key] = j
        return sum(1 for _ in sorted(lookup))


def _timed(fn: Callable[[str], Any], keys: list[str]) -> float:
    """Mean microseconds of ``fn(key)`` over ``keys``."""
    t = time.perf_counter()
    for key in keys:
        fn(key)
    return (time.perf_counter() - t) / max(1, len(keys)) * 1e6


def _evict(folder: str) -> None:
    for f in os.listdir(folder):
        if f.endswith(".rlm"):
            fd = os.open(os.path.join(folder, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def open_variant(variant: str, folder: str) -> ShardedReader:
    """The dataset as a variant reads it: from paths ("new", "old"), or ("new-fileobj") from file
    objects opened by callables (both read with ``pread``: no file page is mapped)."""
    if variant != "new-fileobj":
        maps = rm.open(folder)
        assert isinstance(maps, ShardedReader)
        return maps
    (name,) = [f for f in os.listdir(folder) if f.endswith(".index.json")]
    with open(os.path.join(folder, name), "rb") as f:
        index = read_index_json(f.read())
    return from_index(index, lambda file: functools.partial(open, os.path.join(folder, file), "rb"))


def probe(variant: str, folder: str, n: int, lookups: int, workers: int, worker_lookups: int) -> dict[str, Any]:
    """Reader figures of one variant ("new", "new-fileobj" or "old") in this (fresh) process."""
    rng = random.Random(1)
    base = smaps()
    t = time.perf_counter()
    maps = open_variant(variant, folder)
    opened = time.perf_counter() - t
    shards = len(maps.shard_names)
    t = time.perf_counter()
    for s in range(shards):
        maps.shard(s)
    open_all = time.perf_counter() - t
    get: Callable[[str], Any] = OldKeys(maps).__getitem__ if variant == "old" else maps.__getitem__
    starts = np.concatenate(([0], np.cumsum([maps.shard(s).__len__() for s in range(shards)])))
    first = [key_of(int(starts[s])) for s in range(shards)]  # one key in every shard
    first_touch = _timed(get, first)  # builds each shard's key lookup (hash index / list + dict)
    sample = [key_of(rng.randrange(n)) for _ in range(lookups)]
    cold_keys = [key_of(rng.randrange(n)) for _ in range(min(lookups, 2000))]
    warm_first = _timed(get, sample)
    warm = min(_timed(get, sample) for _ in range(3))
    _evict(folder)
    cold = _timed(get, cold_keys)
    assert get(sample[0]).key == sample[0]
    parent = smaps()
    t = time.perf_counter()
    count = OldKeys(maps).iterate() if variant == "old" else sum(1 for _ in maps)
    iterate = time.perf_counter() - t
    assert count == n
    children = []
    for w in range(workers):
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a worker
            try:
                local = random.Random(100 + w)
                for _ in range(worker_lookups):
                    get(key_of(local.randrange(n)))
                os.write(wr, json.dumps(smaps()).encode())
            finally:
                os._exit(0)
        os.close(wr)
        children.append((pid, rd))
    reports = []
    for pid, rd in children:
        chunks = []
        while True:
            b = os.read(rd, 65536)
            if not b:
                break
            chunks.append(b)
        os.close(rd)
        os.waitpid(pid, 0)
        reports.append(json.loads(b"".join(chunks)))
    return {
        "variant": variant, "shards": shards, "open_s": opened, "open_all_shards_s": open_all,
        "first_lookup_per_shard_us": first_touch, "lookup_us_first_pass": warm_first, "warm_lookup_us": warm,
        "cold_lookup_us": cold, "iterate_s": iterate, "base_kb": base, "parent_kb": parent, "workers_kb": reports,
    }


def run_probe(variant: str, folder: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", variant, folder, "-n", str(n),
           "--lookups", str(args.lookups), "--workers", str(args.workers), "--worker-lookups", str(args.worker_lookups)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


# ------------------------------------------------------------------------------------------ report
def mb(kb: float) -> str:
    return f"{kb / 1024:7.1f}"


VARIANTS = ("new", "new-fileobj", "old")


def report(writes: list[dict[str, Any]], dataset: dict[str, Any], reads: list[dict[str, Any]]) -> None:
    if writes:
        base = writes[0]
        print(f"\nwriting ({base['records']} maps for the one-by-one baselines; add_many in batches of {BATCH}; "
              "best of the rotated rounds)")
        print(f"{'encoding':<8} {'level':>5}  {'how':<42} {'records/s':>10} {'CPU us/rec':>10} {'B/record':>9} "
              f"{'vs baseline':>11} {'bytes vs baseline':>17}")
        for r in writes:
            print(f"{r['encoding']:<8} {r['level']:5d}  {r['how']:<42} {r['records_per_s']:10.0f} "
                  f"{r['cpu_us_per_record']:10.1f} {r['bytes_per_record']:9.1f} "
                  f"{r['records_per_s'] / base['records_per_s']:10.1f}x "
                  f"{(r['bytes_per_record'] / base['bytes_per_record'] - 1) * 100:+16.2f}%")
        print(f"\ndataset: {dataset['records']} maps in {dataset['shards']} shards, written with the defaults "
              f"(add_many) at {dataset['records_per_s']:.0f} records/s, {dataset['bytes_per_record']:.1f} B/record")
    by = {r["variant"]: r for r in reads}
    new, old = by["new"], by["old"]
    print(f"\nreading (new: paths, read with pread; previous: the same files with the previous key storage)"
          f"\n{'':<42}{'new':>12}{'previous':>12}{'ratio':>9}")
    for label, key, unit, scale in (
        ("open the dataset (index)", "open_s", "ms", 1e3),
        ("open every shard", "open_all_shards_s", "ms", 1e3),
        ("first lookup in a shard", "first_lookup_per_shard_us", "us", 1.0),
        ("random lookup, first pass", "lookup_us_first_pass", "us", 1.0),
        ("random lookup, warm", "warm_lookup_us", "us", 1.0),
        ("random lookup, cold (page cache dropped)", "cold_lookup_us", "us", 1.0),
        ("iterate every key", "iterate_s", "s", 1.0),
    ):
        a, b = new[key] * scale, old[key] * scale
        print(f"  {label:<40} {a:10.3f}{unit:<2} {b:10.3f}{unit:<2} {b / a if a else 0:7.2f}x")
    print("\nmemory (MB): Anonymous / USS (= Private_Dirty + Private_Clean) / PSS; Private_Clean = file pages "
          "mapped by this process only")
    print(f"  {'':<24}" + "".join(f"{v:>40}" for v in by))
    rows = [("process before opening", [r["base_kb"] for r in by.values()]),
            ("parent after lookups", [r["parent_kb"] for r in by.values()])]
    rows += [(f"worker {i}", [r["workers_kb"][i] for r in by.values()]) for i in range(len(new["workers_kb"]))]
    for what, cells in rows:
        print(f"  {what:<24}" + "".join(
            f"  {mb(c['Anonymous'])} {mb(c['USS'])} ({mb(c['Private_Dirty'])} +{mb(c['Private_Clean'])}) {mb(c['Pss'])}"
            for c in cells))
    for v, r in by.items():
        grow = (r["parent_kb"]["Anonymous"] - r["base_kb"]["Anonymous"]) / 1024
        dirty = max(w["Private_Dirty"] for w in r["workers_kb"]) / 1024
        uss = max(w["USS"] for w in r["workers_kb"]) / 1024
        print(f"  {v:<10} parent anonymous added by the open dataset {grow:7.1f} MB; per worker at most: "
              f"private dirty {dirty:6.1f} MB, USS {uss:6.1f} MB")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40_000, help="maps in the dataset")
    ap.add_argument("--imagenet", action="store_true", help=f"n = {IMAGENET:,} (ImageNet-1k train)")
    ap.add_argument("--maps", choices=("real", "synthetic"), default="real")
    ap.add_argument("--shard-records", type=int, default=40_000, help="records per shard")
    ap.add_argument("--write-sample", type=int, default=20_000, help="maps per writer measurement")
    ap.add_argument("--baseline-sample", type=int, default=2_000, help="maps for the one-by-one baselines")
    ap.add_argument("--write-rounds", type=int, default=3, help="writer rounds (rotated order, best kept)")
    ap.add_argument("--encodings", default="compact,f16,f32")
    ap.add_argument("--levels", default="1,3,5,6,9")
    ap.add_argument("--lookups", type=int, default=4096, help="random lookups of the parent")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--worker-lookups", type=int, default=2048, help="random lookups of each forked worker")
    ap.add_argument("--out", help="dataset folder (kept); default: a temporary folder")
    ap.add_argument("--reuse", action="store_true", help="only read the dataset already in --out")
    ap.add_argument("--json", help="also write every figure to this file")
    ap.add_argument("--probe", nargs=2, metavar=("VARIANT", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    n = IMAGENET if args.imagenet else args.n
    if args.probe:
        result = probe(args.probe[0], args.probe[1], n, args.lookups, args.workers, args.worker_lookups)
        print(json.dumps(result))
        return result
    maps, what = load_maps(args.maps) if not args.reuse else ({}, "the dataset in --out")
    print(f"maps: {what}; keys like {key_of(0)!r}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or os.path.join(tmp, "dataset")
        writes: list[dict[str, Any]] = []
        if args.reuse:  # reading only
            dataset = {"records": n, "shards": len([f for f in os.listdir(folder) if f.endswith(".rlm")])}
        else:
            levels = [int(v) for v in args.levels.split(",")]
            writes = writer_table(maps, tmp, min(n, args.write_sample), min(n, args.baseline_sample),
                                  args.encodings.split(","), levels, args.write_rounds)
            w = write(folder, maps, n, batch=True, max_records=args.shard_records)
            dataset = {"records": n, "shards": -(-n // args.shard_records), **w}
        reads = [run_probe(v, folder, n, args) for v in VARIANTS]
    report(writes, dataset, reads)
    result = {"maps": what, "writes": writes, "dataset": dataset, "reads": reads, "load": os.getloadavg()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
