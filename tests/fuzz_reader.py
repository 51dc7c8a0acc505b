"""Fuzz the label-map reader with mutated, truncated and spliced files.

Every input must either read cleanly or raise a ``RelabelMapsError`` subclass -- never another
exception, never a hang. Half of the mutated files get their section and trailer CRCs recomputed so
that mutations reach the index, metadata and record decoders instead of stopping at a checksum.
``--memory`` measures each case's peak of traced memory (``tracemalloc``: Python objects, numpy
arrays, decompressed frames); the run also reports how much the process's peak RSS grew, which
covers untraced native allocations too.

    python tests/fuzz_reader.py --iterations 100000 --seed 1 --memory
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import resource
import struct
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import relabel_maps as rm
from relabel_maps import format as fmt
from relabel_maps.layout import read_index_json
from relabel_maps.shards import from_index

_TRAILER = struct.Struct("<QQIIQIIIHHII8s")
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFFFF, 2**63, 2**64 - 1)
ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MAGICS = (0x184D2A50, 0x184D2A57, 0x184D2A5F)


def base_files(seed: int = 0) -> list[bytes]:
    """Small valid files covering the format's variants (dictionary, counts/lse, u32 indices, empty)."""
    rng = np.random.default_rng(seed)
    variants: list[dict[str, Any]] = [
        dict(num_classes=20, k=3, encoding="f32", dictionary=False, n=6, extra=False),
        dict(num_classes=20, k=3, encoding="f16", dictionary=True, n=40, extra=True),
        dict(num_classes=70000, k=2, encoding="f32", dictionary=False, n=4, extra=True),
        dict(num_classes=5, k=1, encoding="f16", dictionary=False, n=0, extra=False),
        dict(num_classes=30, k=4, encoding=None, dictionary=False, n=5, extra=True),
    ]
    out = []
    with tempfile.TemporaryDirectory() as d:
        for j, v in enumerate(variants):
            path = Path(d) / f"v{j}.rlm"
            enc = v["encoding"]
            with rm.Writer(path, num_classes=v["num_classes"], k=v["k"], encoding=enc, dictionary=v["dictionary"],
                           level=3) as w:
                for i in range(v["n"]):
                    h, wd = int(rng.integers(1, 5)), int(rng.integers(1, 5))
                    idx = np.stack([rng.choice(v["num_classes"], v["k"], replace=False) for _ in range(h * wd)], 1)
                    sc = rng.normal(size=(v["k"], h, wd)).astype(np.float32)
                    kw = {}
                    if v["extra"] and i % 2:
                        kw = {"lse": np.full((h, wd), 4.0, np.float32),
                              "counts": rng.integers(1, v["k"] + 1, (h, wd)).astype(np.uint8)}
                    w.add(f"key/{i:03d}-é", idx.reshape(v["k"], h, wd), sc, **kw)
            out.append(path.read_bytes())
    return out


def refresh_crcs(data: bytes) -> bytes:
    """Recompute the section CRCs, record CRCs and trailer CRC where the layout is consistent."""
    if len(data) < 80:
        return data
    f = list(_TRAILER.unpack(data[-64:]))
    footer, count, ml, dl, il = f[0], f[1], f[2], f[3], f[4]
    if footer + ml + dl + il + 64 != len(data) or footer < 16 or count * 24 > il:
        return data
    buf = bytearray(data)
    index_at = footer + ml + dl
    for r in range(min(count, 10_000)):
        row = index_at + 24 * r
        off, n = struct.unpack_from("<QI", buf, row)
        if 16 <= off and off + n <= footer:
            struct.pack_into("<I", buf, row + 12, fmt.crc32(buf[off : off + n]))
    f[5] = fmt.crc32(buf[footer : footer + ml])
    f[6] = fmt.crc32(buf[footer + ml : index_at])
    f[7] = fmt.crc32(buf[index_at : index_at + il])
    head = _TRAILER.pack(*f)[:52]
    return bytes(buf[:-64]) + head + struct.pack("<I", fmt.crc32(head)) + fmt.END_MAGIC


JSON_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 1, 3, 255, 256, 65536, 2**40, 1.5, float("1e308"), "", "x", "f16", "compact",
    [], [1], {}, {"name": "compact", "step": 0.5}, {"name": "f32"}, {"codec": "zstd"},
)


def mutate_metadata(data: bytes, rng: np.random.Generator) -> bytes:
    """Replace or delete one metadata value (nested one level) and rebuild a consistent file."""
    try:
        t = fmt.parse_trailer(data[-64:], len(data))
        meta = json.loads(data[t.footer_offset : t.footer_offset + t.metadata_length])
    except (rm.RelabelMapsError, ValueError):
        return data
    if not isinstance(meta, dict) or not meta:
        return data
    target = meta
    key = str(rng.choice(sorted(meta)))
    if isinstance(meta[key], dict) and meta[key] and rng.random() < 0.5:
        target, key = meta[key], str(rng.choice(sorted(meta[key])))
    if rng.random() < 0.2:
        del target[key]
    else:
        target[key] = JSON_VALUES[int(rng.integers(0, len(JSON_VALUES)))]
    rest = data[16 : t.footer_offset]
    dic = data[t.dictionary_offset : t.index_offset]
    index = data[t.index_offset : -64]
    return fmt.assemble(rest, json.dumps(meta).encode(), dic, index, t.record_count, (t.major, t.minor))


def mutate_frame_header(data: bytes, rng: np.random.Generator) -> bytes:
    """Rewrite the zstd frame header of one record in place (same length): a skippable frame declaring
    up to 4 GiB, or a frame declaring a huge or absent content size."""
    n = len(data)
    if n < 80:
        return data
    footer, count, ml, dl = struct.unpack_from("<QQII", data, n - 64)
    index_at = footer + ml + dl
    if not count or index_at + 24 * count > n - 64:
        return data
    off, nbytes = struct.unpack_from("<QI", data, index_at + 24 * int(rng.integers(0, count)))
    frame_at = off + fmt.RECORD_HEADER_SIZE
    if off < 16 or off + nbytes > footer or nbytes < fmt.RECORD_HEADER_SIZE + 13:
        return data
    buf = bytearray(data)
    choice = int(rng.integers(0, 3))
    if choice == 0:  # skippable frame: its size field is not a content size
        size = int(rng.choice([0, 1, nbytes - 16, 0xFFFFFFF0, 0xFFFFFFFF]))
        struct.pack_into("<II", buf, frame_at, int(rng.choice(SKIPPABLE_MAGICS)), size & 0xFFFFFFFF)
    elif choice == 1:  # single-segment frame with an 8-byte content size
        sizes = (0, 1, 2**31, 2**32, 2**40, 2**63, 2**64 - 1)
        size = sizes[int(rng.integers(0, len(sizes)))]
        struct.pack_into("<IBQ", buf, frame_at, ZSTD_MAGIC, 0xE0, size)
    else:  # flip the content-size flags of the frame header descriptor
        buf[frame_at + 4] ^= int(rng.choice([0x20, 0x40, 0x80, 0xC0, 0xE0]))
    return bytes(buf)


def mutate(data: bytes, rng: np.random.Generator, pool: list[bytes]) -> bytes:
    """One random mutation: bit flips, interesting values, truncation, splices, chunk edits, metadata
    values, zstd frame headers."""
    buf = bytearray(data)
    n = len(buf)
    op = int(rng.integers(0, 12))
    footer = struct.unpack_from("<Q", buf, n - 64)[0] if n >= 80 else 0
    if op == 10:
        return mutate_metadata(data, rng)
    if op == 11:
        return mutate_frame_header(data, rng)
    if op == 8 and 16 < footer < n:  # flip bits inside the records area
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(16, footer))] ^= 1 << int(rng.integers(0, 8))
    elif op == 9 and 16 < footer < n:  # overwrite a field of an index row or a record header
        fields = _TRAILER.unpack(bytes(buf[-64:]))
        index_at, count = footer + fields[2] + fields[3], fields[1]
        if count and index_at + 24 * count <= n - 64:
            row = index_at + 24 * int(rng.integers(0, count))
            pos, width = [(0, 8), (8, 4), (16, 4), (20, 4)][int(rng.integers(0, 4))]
            value = int(rng.choice(INTERESTING)) if rng.random() < 0.5 else int(rng.integers(0, footer + 64))
            buf[row + pos : row + pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
            if rng.random() < 0.5:  # or a record header field instead
                off = struct.unpack_from("<Q", buf, row)[0]
                if 16 <= off < footer - 8:
                    buf[off + int(rng.integers(0, 6))] = int(rng.choice([0, 1, 2, 4, 5, 255]))
    elif op == 0 and n:  # flip a few bits anywhere
        for _ in range(int(rng.integers(1, 9))):
            buf[int(rng.integers(0, n))] ^= 1 << int(rng.integers(0, 8))
    elif op == 1 and n:  # bit flips concentrated in the footer and trailer
        start = max(0, n - int(rng.integers(64, 400)))
        for _ in range(int(rng.integers(1, 5))):
            buf[int(rng.integers(start, n))] ^= 1 << int(rng.integers(0, 8))
    elif op == 2:  # truncate
        return bytes(buf[: int(rng.integers(0, n + 1))])
    elif op == 3:  # splice with another file
        other = pool[int(rng.integers(0, len(pool)))]
        return bytes(buf[: int(rng.integers(0, n + 1))]) + other[int(rng.integers(0, len(other) + 1)) :]
    elif op == 4 and n >= 8:  # write an interesting integer at a random or structural position
        width = int(rng.choice([1, 2, 4, 8]))
        value = int(rng.choice(INTERESTING)) & ((1 << (8 * width)) - 1)
        near_end = rng.random() < 0.5
        pos = int(rng.integers(max(0, n - 64) if near_end else 0, n - width + 1))
        buf[pos : pos + width] = value.to_bytes(width, "little")
    elif op == 5 and n:  # delete a chunk
        a = int(rng.integers(0, n))
        del buf[a : a + int(rng.integers(1, 64))]
    elif op == 6 and n:  # duplicate a chunk in place
        a = int(rng.integers(0, n))
        chunk = buf[a : a + int(rng.integers(1, 64))]
        buf[a:a] = chunk
    else:  # random bytes over a span
        if n:
            a = int(rng.integers(0, n))
            span = min(n - a, int(rng.integers(1, 16)))
            buf[a : a + span] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
    return bytes(buf)


def base_index(seed: int = 0) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A valid shard index (parsed) of a small sharded dataset, and its shard files' bytes by name."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "ds"
        with rm.Writer(folder, num_classes=20, k=2, max_records=2, level=3) as w:
            for i in range(5):
                idx = np.stack([rng.choice(20, 2, replace=False) for _ in range(6)], 1).reshape(2, 2, 3)
                w.add(f"k{i}", idx.astype(np.uint16), -np.sort(-rng.normal(size=(2, 2, 3)), axis=0).astype(np.float32))
        index = json.loads((folder / "ds.index.json").read_text())
        files = {p.name: p.read_bytes() for p in folder.glob("*.rlm")}
    return index, files


#: values written into a shard index; ``HUGE`` stands for an integer of thousands of digits
HUGE = "<huge>"
INDEX_VALUES: tuple[Any, ...] = (
    None, True, -1, 0, 1, 2, 5, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, 10**30, 1.5, 1e308, "", "1.0",
    "\u0661.\u0660", "1" * 5000 + ".0", "9.9", "a.rlm", "../x.rlm", "k0", "\U0010ffff", [], {}, HUGE,
)


def mutate_index(index: dict[str, Any], rng: np.random.Generator) -> str:
    """The text of ``index`` with one value (top level, a shard entry or the metadata) replaced or deleted."""
    obj = json.loads(json.dumps(index))
    shards = obj["shards"]
    where = int(rng.integers(0, 3))
    if where == 1 and shards:
        target = shards[int(rng.integers(0, len(shards)))]
        key = str(rng.choice(["file", "records", "bytes", "sha256", "first_key", "last_key"]))
    else:
        target = obj if where == 0 else obj["metadata"]
        key = str(rng.choice(sorted(target)))
    if rng.random() < 0.15:
        target.pop(key, None)
    else:
        target[key] = INDEX_VALUES[int(rng.integers(0, len(INDEX_VALUES)))]
    return json.dumps(obj).replace(json.dumps(HUGE), "7" * 5000)


def exercise_index(text: str, files: dict[str, bytes]) -> str:
    """Parse an index text and read the dataset it describes; return the outcome.

    Raises whatever is not a ``RelabelMapsError``.
    """
    try:
        index = read_index_json(text)
        with from_index(index, lambda f: io.BytesIO(files.get(f, b"")), verify=True) as maps:
            for i, key in enumerate(maps):
                maps[key]
                if i >= 10:
                    break
            problems = maps.verify()
        return "ok" if not problems else "verify-problems"
    except rm.RelabelMapsError as exc:
        return type(exc).__name__


def exercise(data: bytes) -> str:
    """Open and read everything (records with CRC checks, then ``verify``); return the outcome.

    Raises whatever is not a ``RelabelMapsError``.
    """
    try:
        with rm.open(io.BytesIO(data), verify=True) as maps:
            _ = dict(maps.metadata), len(maps)
            for i, key in enumerate(maps):
                maps[key]
                maps.record_nbytes(key)
                if i >= 50:
                    break
            if len(maps):
                maps.at(-1)
            problems = maps.verify()
        return "ok" if not problems else "verify-problems"
    except rm.RelabelMapsError as exc:
        return type(exc).__name__


class FuzzStats:
    """What a fuzz run found: outcome counts, the slowest case and (with ``memory``) the largest
    per-case peak of traced memory, each with its iteration number."""

    def __init__(self) -> None:
        self.outcomes: collections.Counter = collections.Counter()
        self.slowest_s, self.slowest_case = 0.0, -1
        self.peak_bytes, self.peak_case = 0, -1
        self.rss_growth_bytes = 0

    def __repr__(self) -> str:
        return f"FuzzStats({vars(self)})"

    def record(self, it: int, seconds: float, peak: int) -> None:
        if seconds > self.slowest_s:
            self.slowest_s, self.slowest_case = seconds, it
        if peak > self.peak_bytes:
            self.peak_bytes, self.peak_case = peak, it


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # kilobytes on Linux


def _measure(case: Callable[[], str], memory: bool) -> tuple[str, float, int]:
    """``(outcome, seconds, peak traced bytes)`` of one case (peak 0 without ``memory``)."""
    if memory:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    outcome = case()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base if memory else 0
    return outcome, seconds, peak


def run(iterations: int, seed: int, pool: list[bytes] | None = None, *, memory: bool = False) -> FuzzStats:
    """Run ``iterations`` cases (``memory``: measure each case's peak of traced memory)."""
    pool = pool or base_files(seed)
    index, shard_files = base_index(seed)
    rng = np.random.default_rng(seed)
    stats = FuzzStats()
    rss0 = _max_rss_bytes()
    if memory:
        tracemalloc.start()
    try:
        for it in range(iterations):
            if rng.random() < 0.05:  # a mutated shard index instead of a mutated file
                text = mutate_index(index, rng)
                try:
                    outcome, seconds, peak = _measure(lambda t=text: exercise_index(t, shard_files), memory)
                except Exception as exc:
                    raise AssertionError(f"iteration {it} (seed {seed}), index {text[:300]!r}: {exc!r}") from exc
            else:
                data = pool[int(rng.integers(0, len(pool)))]
                for _ in range(int(rng.integers(1, 4))):
                    data = mutate(data, rng, pool)
                if rng.random() < 0.5:
                    data = refresh_crcs(data)
                try:
                    outcome, seconds, peak = _measure(lambda d=data: exercise(d), memory)
                except Exception as exc:
                    raise AssertionError(f"iteration {it} (seed {seed}): {type(exc).__name__}: {exc}") from exc
            stats.outcomes[outcome] += 1
            stats.record(it, seconds, peak)
    finally:
        if memory:
            tracemalloc.stop()
    stats.rss_growth_bytes = _max_rss_bytes() - rss0
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", action="store_true", help="measure each case's peak of traced memory (slower)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    stats = run(args.iterations, args.seed, memory=args.memory)
    dt = time.perf_counter() - t0
    print(f"{args.iterations} cases (seed {args.seed}) in {dt:.1f} s ({args.iterations / dt:.0f}/s); slowest case "
          f"{stats.slowest_s * 1e3:.1f} ms (iteration {stats.slowest_case})")
    if args.memory:
        print(f"largest peak of traced memory in one case: {stats.peak_bytes / 2**20:.2f} MiB "
              f"(iteration {stats.peak_case})")
    print(f"peak RSS of the process grew by {stats.rss_growth_bytes / 2**20:.1f} MiB over the run")
    untyped = [name for name in stats.outcomes if name not in ("ok", "verify-problems")
               and not issubclass(getattr(rm.errors, name, Exception), rm.RelabelMapsError)]
    for name, count in stats.outcomes.most_common():
        print(f"  {name:24s} {count}")
    print("only typed errors" if not untyped else f"UNTYPED: {untyped}")
    return 0 if not untyped else 1


if __name__ == "__main__":
    sys.exit(main())
