"""Bytes per image and pooled-label error of every storage layout, on real label maps.

Maps: benchmarks/real_maps.py (packaged EfficientNet-Lite0 ImageNet teacher, fully convolutional at
475 px -> 15x15, top-5 logits, skimage.data photos plus random crops/flips). Baselines, measured in the
same run: the official ReLabel layout (one ``torch.save``'d ``[2, 5, 15, 15]`` float32 tensor per
image), raw arrays, zstd of raw arrays; then every codec through the real container
(``relabel_maps.Writer`` -> file size / images). Error: max |p - p_f32| over all classes of the soft
label of random boxes (RoIAlign, output 1x1, zero fill for classes outside the top-k, softmax over
1000 classes), against the float32 maps; also with the "topk" fill (softmax over the stored classes,
then pooled) and the "uniform" fill (exp(score - lse) with the float32 lse, leftover mass spread over
the other classes, then pooled).

    python benchmarks/bench_size.py [-n 180] [--boxes 48]
    RELABEL_REAL_TEACHER=lite2-packaged python benchmarks/bench_size.py   # maps of a stronger teacher
    python benchmarks/bench_size.py --levels 1,3,5,6,9,19   # only: bytes and zstd time per level

The layouts are compared at zstd level 19; ``--levels`` measures what the level costs and saves
(bytes per image through the real container, one-thread zstd microseconds per record) for the
writers' default encodings (spec/ENCODINGS.md, "Compression level").
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zstandard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_maps  # noqa: E402

from relabel_maps.codecs import FLAG_LSE, RecordArrays, get_codec  # noqa: E402
from relabel_maps.pooling import box_weights  # noqa: E402

NUM_CLASSES = 1000
LEVEL = 19
ENCODINGS: list[tuple[str, dict[str, Any]]] = [
    ("f32", {"name": "f32"}),
    ("f16", {"name": "f16"}),
    ("compact step 1/128", {"name": "compact", "step": 2.0**-7, "fine_ranks": 2}),
    ("compact step 1/256 (default)", {"name": "compact", "step": 2.0**-8, "fine_ranks": 2}),
    ("compact step 1/256, every rank", {"name": "compact", "step": 2.0**-8, "fine_ranks": 255}),
    ("compact step 1/256, fine_ranks 1", {"name": "compact", "step": 2.0**-8, "fine_ranks": 1}),
    ("compact step 1/128, every rank", {"name": "compact", "step": 2.0**-7, "fine_ranks": 255}),
    ("compact step 1/128, fine_ranks 1", {"name": "compact", "step": 2.0**-7, "fine_ranks": 1}),
    ("compact step 1/64, every rank", {"name": "compact", "step": 2.0**-6, "fine_ranks": 255}),
    ("compact step 1/16", {"name": "compact", "step": 2.0**-4}),
    ("compact step 1/4", {"name": "compact", "step": 2.0**-2}),
]  # "step 1/s": ranks below fine_ranks (default 2) at step s, lower ranks at 2s


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` normalised boxes, side lengths log-uniform in [1/50, 1] (from sub-cell to whole image)."""
    side = np.exp(rng.uniform(np.log(0.02), 0.0, (n, 2)))
    x0, y0 = rng.uniform(0, 1 - side[:, 0]), rng.uniform(0, 1 - side[:, 1])
    return np.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], axis=1)


class PooledError:
    """Max soft-label error of decoded maps against the float32 maps, over fixed random boxes, for one
    fill mode: "zero" (ReLabel), "topk" or "uniform" (which uses the float32 ``lse``)."""

    def __init__(
        self, indices: np.ndarray, scores: np.ndarray, boxes: int, seed: int = 0,
        fill: str = "zero", lse: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        rng = np.random.default_rng(seed)
        self.indices, self.fill, self.lse = indices, fill, lse
        _, k, h, w = indices.shape
        scale = np.array([w, h, w, h], dtype=np.float64)
        self.weights = [
            np.concatenate([box_weights(b * scale, h, w) for b in random_boxes(rng, boxes)]) for _ in indices
        ]
        self.ref = [self._probs(i, scores[i]) for i in range(len(indices))]

    def _probs(self, i: int, scores: np.ndarray) -> np.ndarray:
        k, h, w = scores.shape
        s = scores.reshape(k, h * w).astype(np.float64)
        dense = np.zeros((h * w, NUM_CLASSES))
        if self.fill == "topk":
            s = np.exp(s - s.max(axis=0))
            s /= s.sum(axis=0)
        elif self.fill == "uniform":
            if self.lse is None:
                raise ValueError("the uniform fill needs the float32 lse")
            s = np.exp(s - self.lse[i].reshape(h * w))
            dense += (np.clip(1.0 - s.sum(axis=0), 0.0, None) / (NUM_CLASSES - k))[:, None]
        dense[np.tile(np.arange(h * w), k), self.indices[i].reshape(-1)] = s.reshape(-1)
        z = self.weights[i] @ dense
        if self.fill != "zero":
            return z
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def __call__(self, scores: np.ndarray) -> float:
        return max(float(np.abs(self._probs(i, s) - self.ref[i]).max()) for i, s in enumerate(scores))


def official_bytes(indices: np.ndarray, scores: np.ndarray) -> float:
    """Mean torch.save size of the official per-image [2, k, H, W] float32 tensor."""
    import torch
    from _official import topk_tensor  # benchmarks/_official.py

    sizes = []
    for i, s in zip(indices, scores, strict=True):
        buf = io.BytesIO()
        torch.save(topk_tensor(i, s), buf)
        sizes.append(buf.tell())
    return float(np.mean(sizes))


def through_container(
    spec: dict[str, Any], data: dict[str, np.ndarray], with_lse: bool, dictionary: bool = False
) -> tuple[float, np.ndarray, str]:
    """(bytes per image, decoded scores, how measured): file size / images through the real
    Writer and open(); codec body + zstd when the container is not usable."""
    try:
        import relabel_maps

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "maps.rlm")
            k = data["indices"].shape[1]
            with relabel_maps.Writer(path, num_classes=NUM_CLASSES, k=k, encoding=spec, level=LEVEL,
                                     dictionary=dictionary) as wr:
                for n, (i, s, lse) in enumerate(zip(data["indices"], data["scores"], data["lse"], strict=True)):
                    wr.add(f"{n:05d}", i, s, lse=lse if with_lse else None)
            size = os.path.getsize(path) / len(data["indices"])
            with relabel_maps.open(path) as maps:
                keys = list(maps)
                dec = np.stack([maps[key].scores for key in keys])
                records = float(np.mean([maps.record_nbytes(key) for key in keys]))
        how = f"Writer file / images; records alone {records:.0f} B"
        if dictionary:
            how += "; the file holds a 16 KiB dictionary"
        return size, dec, how
    except Exception as exc:  # the container is optional for this measurement
        why = f"codec body + zstd ({type(exc).__name__}: {exc})"
    codec, cz = get_codec(spec), zstandard.ZstdCompressor(level=LEVEL)
    sizes: list[int] = []
    decoded: list[np.ndarray] = []
    for i, s, lse in zip(data["indices"], data["scores"], data["lse"], strict=True):
        body = codec.encode(RecordArrays(i, s, None, lse if with_lse else None))
        sizes.append(len(cz.compress(body)))
        k, h, w = i.shape
        decoded.append(codec.decode(body, k, h, w, FLAG_LSE if with_lse else 0, i.dtype).scores)
    return float(np.mean(sizes)), np.stack(decoded), why


def decode_us(spec: dict[str, Any], data: dict[str, np.ndarray]) -> tuple[float, float]:
    """Microseconds to decode one record body and to decompress its zstd frame (best of 7 runs)."""
    codec = get_codec(spec)
    i, s = data["indices"][0], data["scores"][0]
    body = codec.encode(RecordArrays(i, s, None, None))
    frame = zstandard.ZstdCompressor(level=LEVEL).compress(body)
    dctx = zstandard.ZstdDecompressor()

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(300):
                fn()
            times.append((time.perf_counter() - t) / 300)
        return min(times) * 1e6

    k, h, w = i.shape
    return best(lambda: codec.decode(body, k, h, w, 0, i.dtype)), best(lambda: dctx.decompress(frame))


def level_sweep(data: dict[str, np.ndarray], levels: list[int]) -> None:
    """Bytes per image (through the container) and zstd microseconds per record, per level."""
    import relabel_maps

    specs = [("compact", ENCODINGS[3][1]), ("f16", ENCODINGS[1][1]), ("f32", ENCODINGS[0][1])]
    k = data["indices"].shape[1]
    sizes: dict[tuple[str, int], float] = {}
    print(f"\n{'level':>5}  " + "  ".join(f"{name + ' B/image':>16} {'zstd us/rec':>11}" for name, _ in specs))
    for level in levels:
        cells = []
        for name, spec in specs:
            codec = get_codec(spec)
            bodies = [codec.encode(RecordArrays(i, s, None, None)) for i, s in zip(data["indices"], data["scores"],
                                                                                    strict=True)]
            cz = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
            best = min(_seconds(lambda b=bodies, c=cz: [c.compress(x) for x in b]) for _ in range(3))
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "maps.rlm")
                keys = [f"{n:05d}" for n in range(len(bodies))]
                with relabel_maps.Writer(path, num_classes=NUM_CLASSES, k=k, encoding=spec, level=level) as wr:
                    wr.add_many(keys, data["indices"], data["scores"])
                sizes[name, level] = os.path.getsize(path) / len(bodies)
            cells.append(f"{sizes[name, level]:16.1f} {best / len(bodies) * 1e6:11.1f}")
        print(f"{level:5d}  " + "  ".join(cells))
    top = max(levels)
    for name, _ in specs:
        print(f"{name}: bytes vs level {top}: " + ", ".join(
            f"{lv}: {(sizes[name, lv] / sizes[name, top] - 1) * 100:+.2f}%" for lv in levels))


def _seconds(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=180, help="number of real maps")
    ap.add_argument("--boxes", type=int, default=48, help="random boxes per map for the pooled error")
    ap.add_argument("--levels", help="only measure these zstd levels (comma-separated)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = real_maps.load(args.n)
    if args.levels:
        print(real_maps.describe(data))
        level_sweep(data, [int(v) for v in args.levels.split(",")])
        print(f"({time.perf_counter() - t0:.0f} s)")
        return
    idx, sc = data["indices"], data["scores"]
    print(real_maps.describe(data))
    err = PooledError(idx, sc, args.boxes)
    err_topk = PooledError(idx, sc, args.boxes, fill="topk")
    err_unif = PooledError(idx, sc, args.boxes, fill="uniform", lse=data["lse"])

    def errors(dec: np.ndarray) -> tuple[float, float, float]:
        return err(dec), err_topk(dec), err_unif(dec)
    cz = zstandard.ZstdCompressor(level=LEVEL)
    f16 = sc.astype(np.float16).astype(np.float32)
    rows: list[tuple[str, float, tuple[float, float, float], str]] = []
    official = official_bytes(idx, sc)
    rows.append(("official: torch.save [2,5,15,15] f32", official, (0.0, 0.0, 0.0), "per-image .pt"))
    for name, parts, dec in [
        ("raw uint16 + float32", lambda i, s: i.tobytes() + s.tobytes(), sc),
        ("raw uint16 + float16", lambda i, s: i.tobytes() + s.astype(np.float16).tobytes(), f16),
    ]:
        e = errors(dec)
        pairs = list(zip(idx, sc, strict=True))
        rows.append((name, float(np.mean([len(parts(i, s)) for i, s in pairs])), e, "bytes"))
        rows.append(("zstd(" + name + ")", float(np.mean([len(cz.compress(parts(i, s))) for i, s in pairs])),
                     e, f"zstd -{LEVEL}"))
    for with_lse in (False, True):
        for name, spec in ENCODINGS if not with_lse else ENCODINGS[:4]:
            size, dec, how = through_container(spec, data, with_lse)
            rows.append((f"{name}{' + lse' if with_lse else ''}", size, errors(dec), how))
    for name, spec in (ENCODINGS[1], ENCODINGS[3]):
        size, dec, how = through_container(spec, data, False, dictionary=True)
        rows.append((f"{name} + zstd dictionary", size, errors(dec), how))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'layout':<{width}}  {'B/image':>8}  {'x smaller':>9}  {'pooled max err: zero':>20}  {'topk':>8}  "
          f"{'uniform':>8}  measured as")
    for name, size, e, how in rows:
        print(f"{name:<{width}}  {size:8.0f}  {official / size:8.1f}x  {e[0]:20.2e}  {e[1]:8.2e}  {e[2]:8.2e}  {how}")
    f16_err = errors(f16)
    ok = [r for r in rows if all(a <= b for a, b in zip(r[2], f16_err, strict=True)) and "lse" not in r[0]]
    best = min(ok, key=lambda r: r[1])
    print(f"\nfloat16 pooled error on these maps/boxes (zero / topk / uniform fill): "
          f"{' / '.join(f'{e:.2e}' for e in f16_err)}; smallest layout at or below it in all three: "
          f"{best[0]} = {best[1]:.0f} B/image, {official / best[1]:.1f}x smaller than the official layout "
          f"({official:.0f} B); goal 1300 B")
    for name, spec in ENCODINGS[:4]:
        body_us, zstd_us = decode_us(spec, data)
        print(f"decode {name}: {body_us:.1f} us/record body + {zstd_us:.1f} us zstd")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
