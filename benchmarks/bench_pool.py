"""Per-sample soft-label cost: the official ReLabel data path vs ``relabel_maps.open()[key].pool(box)``.

Official-style path (one sample at a time, as a data loader does it): ``torch.load`` of the image's
own ``.pt`` file (a ``[2, 5, 15, 15]`` float32 tensor: scores, then class indices stored as floats),
scatter into a dense ``zeros(1000, 15, 15)``, ``torchvision.ops.roi_align`` (1x1, ``aligned=False``,
box ``coords * 15 - 0.5``), softmax. This library's path: one ``relabel_maps.open()`` of the whole
set, then ``maps[key].pool(box)`` per sample (lookup, decode, sparse pooling). Same maps, keys and
boxes; torch runs on one thread; both read from the page cache.

    python benchmarks/bench_pool.py [--n 300] [--samples 2000] [--rounds 5] [--real]

``--real`` uses the real label maps of benchmarks/real_maps.py (computed once by a packaged teacher,
then cached); the default uses synthetic maps with realistic structure (a few dominant classes in
spatial blobs over noise, 1000 classes, top-5, 15x15).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

C, K, G = 1000, 5, 15


def synthetic_maps(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` top-5 maps cut from smooth synthetic 1000-class logit maps (with exact lse)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:G, 0:G]
    idx = np.empty((n, K, G, G), np.uint16)
    sc = np.empty((n, K, G, G), np.float32)
    lse = np.empty((n, G, G), np.float32)
    for i in range(n):
        logits = rng.normal(scale=1.5, size=(C, G, G))
        for cls in rng.choice(C, size=rng.integers(2, 7), replace=False):
            cy, cx, r = rng.uniform(0, G, 2).tolist() + [rng.uniform(2, 12)]
            logits[cls] += rng.uniform(6, 20) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        top = np.argsort(-logits, axis=0)[:K]
        idx[i] = top
        sc[i] = np.take_along_axis(logits, top, 0)
        lse[i] = np.log(np.exp(logits).sum(axis=0))
    names = np.array([f"n{i % 50:08d}/n{i % 50:08d}_{i}.JPEG" for i in range(n)])
    return {"indices": idx, "scores": sc, "lse": lse, "names": names}


def real_maps(n: int) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import real_maps as rm  # benchmarks/real_maps.py

    data = rm.load(n)
    m = len(data["indices"])
    data["names"] = np.array([f"real/{i:05d}_{name}" for i, name in enumerate(data["names"][:m])])
    return data


def rrc_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) boxes, normalised (x0, y0, x1, y1)."""
    out = np.empty((n, 4))
    for i in range(n):
        for _ in range(10):
            area = rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = np.sqrt(area * ratio), np.sqrt(area / ratio)
            if w <= 1 and h <= 1:
                break
        else:
            w = h = 1.0
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        out[i] = (x0, y0, x0 + w, y0 + h)
    return out


def environment() -> str:
    import numpy
    import torch
    import torchvision
    import zstandard

    import relabel_maps

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"python {platform.python_version()} | numpy {numpy.__version__} | torch {torch.__version__} "
            f"(threads={torch.get_num_threads()}) | torchvision {torchvision.__version__} | zstandard "
            f"{zstandard.__version__} | relabel-maps {relabel_maps.__version__}\n"
            f"cpu: {cpu} | {os.cpu_count()} logical cores | {platform.system()} {platform.release()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="number of label maps")
    ap.add_argument("--samples", type=int, default=2000, help="samples (key, box) per timed pass")
    ap.add_argument("--rounds", type=int, default=5, help="timed passes per path (best is reported)")
    ap.add_argument("--real", action="store_true", help="use real maps (benchmarks/real_maps.py)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from _official import official_pool, topk_tensor  # benchmarks/_official.py

    import relabel_maps
    from relabel_maps.pooling import pool, to_official_coords

    torch.set_num_threads(1)
    data = real_maps(args.n) if args.real else synthetic_maps(args.n, args.seed)
    n = len(data["indices"])
    names = [str(s) for s in data["names"]]
    rng = np.random.default_rng(args.seed + 1)
    order = rng.integers(0, n, size=args.samples)
    boxes = rrc_boxes(rng, args.samples)
    box_list = [tuple(b) for b in boxes.tolist()]
    coords = [torch.tensor([[0.0, *[v * G - 0.5 for v in to_official_coords(b)]]], dtype=torch.float32)
              for b in box_list]

    tmp = Path(tempfile.mkdtemp(prefix="bench_pool_"))
    # official layout: one torch.save'd [2, 5, 15, 15] float32 tensor per image, ImageNet-style folders
    pt_paths = []
    for i, name in enumerate(names):
        p = tmp / "pt" / (name.rsplit(".", 1)[0] + ".pt")
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(topk_tensor(data["indices"][i], data["scores"][i]), p)
        pt_paths.append(str(p))
    files = {}
    for label, enc in (("default", None), ("f16", "f16")):
        path = tmp / f"maps-{label}.rlm"
        with relabel_maps.Writer(path, num_classes=C, k=K, encoding=enc) as w:
            for i, name in enumerate(names):
                w.add(name, data["indices"][i], data["scores"][i], lse=data["lse"][i])
        files[label] = path
    pt_bytes = sum(os.path.getsize(p) for p in pt_paths) / n

    def official(i: int, j: int) -> torch.Tensor:  # the official coords: aligned=False, coords * 15 - 0.5
        return official_pool(torch.load(pt_paths[i]), coords[j], aligned=False)

    loaded = [torch.load(p) for p in pt_paths]

    def official_preloaded(i: int, j: int) -> torch.Tensor:  # the same, minus torch.load
        return official_pool(loaded[i], coords[j], aligned=False)

    def ours(maps, i: int, j: int) -> np.ndarray:
        return maps[names[i]].pool(box_list[j])

    def timed(fn, *pre) -> float:
        best = float("inf")
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for j, i in enumerate(order.tolist()):
                fn(*pre, i, j)
            best = min(best, time.perf_counter() - t0)
        return best / args.samples

    # warm-up and correctness (official = relabel_compat; ours vs exact float32 pooling)
    from relabel_maps import LabelMap
    from relabel_maps.pooling import relabel_compat

    compat_err, enc_err = 0.0, {k: 0.0 for k in files}
    opened = {k: relabel_maps.open(p) for k, p in files.items()}
    for j, i in enumerate(order[:200].tolist()):
        exact = LabelMap(data["indices"][i], data["scores"][i], num_classes=C, lse=data["lse"][i])
        ref = official(i, j).numpy()
        compat_err = max(compat_err, float(np.abs(relabel_compat(exact, to_official_coords(box_list[j])) - ref).max()))
        want = pool(exact, box_list[j])
        for k, maps in opened.items():
            enc_err[k] = max(enc_err[k], float(np.abs(ours(maps, i, j) - want).max()))

    t_off = timed(official)
    results = {k: timed(ours, maps) for k, maps in opened.items()}
    t_off_pool = timed(official_preloaded)
    decode = {k: timed(lambda maps, i, j: maps[names[i]], maps) for k, maps in opened.items()}
    decoded = [opened["default"][name] for name in names]
    t_pool = timed(lambda i, j: decoded[i].pool(box_list[j]))

    print(environment())
    print(f"maps: {n} ({'real' if args.real else 'synthetic'}), 1000 classes, top-{K}, {G}x{G}; "
          f"{args.samples} random (key, RandomResizedCrop box) samples, best of {args.rounds} passes")
    enc_name = opened["default"].metadata.get("encoding", {})
    print(f"storage per image: official .pt {pt_bytes:,.0f} B | "
          + " | ".join(f"{k} ({enc_name.get('name') if k == 'default' else k}) "
                       f"{os.path.getsize(p) / n:,.0f} B" for k, p in files.items()))
    print(f"check: relabel_compat vs official path max |diff| = {compat_err:.2e}; pooled vs float32 maps: "
          + ", ".join(f"{k} {v:.2e}" for k, v in enc_err.items()))
    print(f"official  torch.load + scatter + roi_align + softmax : {t_off * 1e6:8.1f} us/sample "
          f"{1 / t_off:10,.0f} samples/s")
    for k, t in results.items():
        print(f"relabel-maps open()[key].pool(box)  [{k:7s}]       : {t * 1e6:8.1f} us/sample "
              f"{1 / t:10,.0f} samples/s   x{t_off / t:5.1f}")
    print(f"breakdown (us/sample): official torch.load {max(t_off - t_off_pool, 0) * 1e6:.1f} + scatter/roi_align/"
          f"softmax {t_off_pool * 1e6:.1f} | relabel-maps lookup+decode "
          + ", ".join(f"[{k}] {t * 1e6:.1f}" for k, t in decode.items())
          + f" + LabelMap.pool {t_pool * 1e6:.1f} (x{t_off_pool / t_pool:.1f} vs the official pooling alone)")
    for maps in opened.values():
        maps.close()


if __name__ == "__main__":
    main()
