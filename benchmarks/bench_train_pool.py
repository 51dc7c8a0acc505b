"""Training-time cost of soft labels from label maps: the official ReLabel-style path vs this library.

One run, same images and maps:

(a) data-loader throughput (images/s) with plain hard labels, and with soft labels
    * official-style: per sample ``torch.load`` of a ``[2, 5, 15, 15]`` tensor file, dense scatter to
      ``1000 x 15 x 15``, ``torchvision.ops.roi_align`` and a softmax, on the CPU in the loader;
    * library, ``mode="pool"``: sparse numpy pooling in the loader;
    * library, ``mode="map"``: the loader ships the sparse maps, the training step pools the batch with
      ``pool_batch`` (its cost is included, on the pooling device);
    -> overhead over plain labels, in percent (median epoch rate of each configuration; the
    configurations are interleaved epoch by epoch in a rotating order, draw the same shuffle and crops from the
    same seed and run with the same worker count). The image pipeline is the same random-resized crop + flip +
    to-tensor everywhere: stock v2 transforms for plain labels, the box-returning ones for the library
    (their fast lane skips part of the v2 dispatch; (c) shows both costs), and the functional ops the
    official code calls directly (a little cheaper than the v2 dispatch, so its overhead is if
    anything understated).
(b) batched pooling samples/s: ``pool_batch`` vs dense scatter + ``roi_align`` (CPU; CUDA when present).
(c) the per-sample CPU cost of each step, measured alone in a tight loop (steadier than (a) on a busy
    machine, but with warm caches: interleaved with JPEG decoding, as in a loader, reading and pooling
    one map cost several times more, which is why LabelMapDataset fetches a batch's labels together).

    python benchmarks/bench_train_pool.py                   # ~1 min on 2 CPU cores
    python benchmarks/bench_train_pool.py --images 512 --workers 4 --pool-batch 1024
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _official import dense_baseline, official_pool, topk_tensor  # benchmarks/_official.py
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import relabel_maps
from relabel_maps.torch import (
    CropBox,
    LabelMapDataset,
    RandomHorizontalFlipWithBox,
    RandomResizedCropWithBox,
    SparseLabel,
    collate_label_maps,
    image_folder_key,
    pool_batch,
    stack_label_maps,
    transform_with_box,
)

C, K, GRID = 1000, 5, 15


# ------------------------------------------------------------------------------------------ data
def photo_like(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Multi-scale noise: a JPEG of it at quality 90 is ~80 KB at 500x375, like an ImageNet photo
    (a smooth synthetic image decodes several times faster and would inflate every overhead)."""
    w, h = size
    acc = np.zeros((h, w, 3))
    for scale, amplitude in ((4, 90), (16, 50), (64, 30), (h, 100)):
        low = rng.normal(0, 1, (scale, max(1, scale * w // h), 3))
        low = ((low - low.min()) / (np.ptp(low) + 1e-9) * 255).astype(np.uint8)
        acc += amplitude * np.asarray(Image.fromarray(low).resize(size, Image.BICUBIC), dtype=np.float64) / 255
    return Image.fromarray(((acc - acc.min()) / np.ptp(acc) * 255).astype(np.uint8))


def make_data(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> tuple[Path, Path, Path]:
    """``n`` JPEG photo-like images in 10 class folders, their label maps (one .rlm) and the same
    maps as official-style per-image ``[2, k, 15, 15]`` tensor files."""
    rng = np.random.default_rng(seed)
    images, pt_dir, rlm = root / "images", root / "pt", root / "maps.rlm"
    keys = []
    for i in range(n):
        key = f"c{i % 10:02d}/img{i:05d}.jpg"
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        photo_like(rng, size).save(images / key, quality=90)
        keys.append(key)
    with relabel_maps.Writer(rlm, num_classes=C, k=K, teacher={"crop_mode": "squash", "input_size": [475, 475]}) as w:
        for key in keys:
            # ~80 candidate classes per image with smooth spatial fields, like real teacher maps
            cand = rng.choice(C, 80, replace=False)
            yy, xx = np.mgrid[0:GRID, 0:GRID] / GRID
            f = rng.normal(0, 1, (80, 3)) @ np.stack([np.ones_like(xx), xx, yy]).reshape(3, -1)
            f = (f.reshape(80, GRID, GRID) * 4 + rng.normal(0, 0.5, (80, GRID, GRID))).astype(np.float32)
            order = np.argsort(-f, axis=0)[:K]
            scores = np.take_along_axis(f, order, 0) + 8.0
            idx = cand[order]
            w.add(key, idx, scores)
            pt = pt_dir / (key + ".pt")
            pt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(topk_tensor(idx, scores), pt)
    return images, rlm, pt_dir


TO_TENSOR = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class Plain(Dataset):
    """ImageFolder + stock v2 RandomResizedCrop/flip + hard labels: the baseline."""

    def __init__(self, images: Path, size: int) -> None:
        self.base = ImageFolder(images)
        self.transform = v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), TO_TENSOR])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, target = self.base[i]
        return self.transform(img), target


class Official(Plain):
    """Official ReLabel-style: a crop transform returning normalised coords, then per sample
    ``torch.load`` of the image's top-k tensor, dense scatter, RoIAlign over the crop, softmax."""

    def __init__(self, images: Path, size: int, pt_dir: Path) -> None:
        super().__init__(images, size)
        self.pt_dir, self.size = pt_dir, size
        self.rrc = v2.RandomResizedCrop(size)

    def __getitem__(self, i: int):
        img, _ = self.base[i]
        p = self.rrc.make_params([img])  # RandomResizedCropWithCoords
        out = TF.resized_crop(img, **p, size=[self.size, self.size])
        if torch.rand(1) < 0.5:
            out = TF.horizontal_flip(out)
        w, h = img.size
        box = (p["left"] / w, p["top"] / h, (p["left"] + p["width"]) / w, (p["top"] + p["height"]) / h)
        return TO_TENSOR(out), self.label(i, box)  # the official pools flipped crops alike

    def label(self, i: int, box: tuple[float, float, float, float]) -> torch.Tensor:
        """``torch.load`` of image ``i``'s ``[2, k, 15, 15]`` tensor, then the official pooling of ``box``."""
        path = Path(self.base.samples[i][0]).relative_to(self.base.root)
        topk = torch.load(self.pt_dir / (str(path) + ".pt"))  # [2, k, 15, 15]: scores, indices
        x0, y0, x1, y1 = box
        roi = torch.tensor([[0.0, x0 * GRID, y0 * GRID, x1 * GRID, y1 * GRID]])
        return official_pool(topk, roi, aligned=True)


def loader_rate(dataset: Dataset, args: argparse.Namespace, collate=None, pool_device: str | None = None) -> float:
    """Images per second through a DataLoader (plus device pooling of ``mode="map"`` batches).

    Every configuration draws the same shuffle and crops (same seed). With ``--workers 0`` the rate
    is per CPU-second of this process (``time.process_time``), which other jobs on a shared machine
    barely disturb; with workers it is wall-clock."""
    torch.manual_seed(1234)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        collate_fn=collate, persistent_workers=False)
    clock = time.process_time if args.workers == 0 else time.perf_counter
    n, start = 0, clock()
    for batch in loader:
        if pool_device is not None:
            soft = batch[1].to(pool_device).pool()
            if soft.is_cuda:
                torch.cuda.synchronize()
        n += len(batch[0])
    return n / (clock() - start)


# ------------------------------------------------------------------------------------------ batched pooling
def pool_rate(fn, iters: int, batch: int, device: str) -> float:
    fn()  # warm up
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def bench_pooling(maps, args: argparse.Namespace, device: str) -> None:
    rng = np.random.default_rng(1)
    keys = list(maps)
    chosen = [maps[keys[i]] for i in rng.integers(0, len(keys), args.pool_batch)]
    boxes = []
    for _ in chosen:
        w, h = rng.uniform(0.3, 1.0, 2)
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        boxes.append((x0, y0, x0 + w, y0 + h))
    flips = rng.integers(0, 2, len(chosen)).astype(bool)
    batch = stack_label_maps(chosen, boxes, flips, device=device)
    base = lambda: dense_baseline(batch.indices, batch.scores, batch.boxes)  # noqa: E731
    r_base = pool_rate(base, args.pool_iters, len(chosen), device)
    print(f"  {device:5s} B={len(chosen):5d}  dense scatter + roi_align       {r_base:12,.0f} samples/s")
    for dtype in (torch.float64, torch.float32):
        ours = lambda dtype=dtype: pool_batch(  # noqa: E731
            batch.indices, batch.scores, batch.boxes, batch.flips, C, dtype=dtype
        )
        diff = float((ours() - base()).abs().max())
        r_ours = pool_rate(ours, args.pool_iters, len(chosen), device)
        print(f"  {device:5s} B={len(chosen):5d}  pool_batch ({str(dtype)[6:]} accumulation) {r_ours:12,.0f} samples/s"
              f"   {r_ours / r_base:6.1f}x   (max |diff| vs dense {diff:.1e})")


def cpu_us(fn, n: int, rounds: int = 5) -> float:
    """Best-of-``rounds`` CPU microseconds per call of ``fn(i)`` (same seed each round)."""
    best = float("inf")
    for _ in range(rounds):
        torch.manual_seed(0)
        start = time.process_time()
        for i in range(n):
            fn(i)
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def bench_components(images: Path, rlm: Path, pt_dir: Path, args: argparse.Namespace) -> None:
    """Per-sample CPU cost of each step the soft labels add, without DataLoader noise."""
    base = ImageFolder(images)
    n = min(len(base), 32)
    pil = [base[i][0] for i in range(n)]
    stock = v2.Compose([v2.RandomResizedCrop(args.crop), v2.RandomHorizontalFlip(), TO_TENSOR])
    boxed = v2.Compose([RandomResizedCropWithBox(args.crop), RandomHorizontalFlipWithBox(), TO_TENSOR])
    official = Official(images, args.crop, pt_dir)
    with relabel_maps.open(rlm) as maps:
        keys = [image_folder_key(base, i) for i in range(n)]
        lms = [maps[k] for k in keys]
        box = (0.1, 0.2, 0.7, 0.9)
        items = [(torch.zeros(1), SparseLabel(m.indices, m.scores, box, True, C, "logits", None, None, k))
                 for m, k in zip(lms, keys, strict=True)]
        rows = {
            "load + decode image (ImageFolder)": cpu_us(lambda i: base[i % n], 2 * n),
            "stock v2 crop + flip + to tensor": cpu_us(lambda i: stock(pil[i % n]), 2 * n),
            "same, CropBox through the v2 dispatch": cpu_us(
                lambda i: boxed(pil[i % n], CropBox.like(pil[i % n])), 2 * n
            ),
            "same, fast lane (transform_with_box)": cpu_us(lambda i: transform_with_box(boxed, pil[i % n]), 2 * n),
            "official: torch.load .pt + dense + roi_align": cpu_us(lambda i: official.label(i % n, box), 4 * n),
            "library: read record (decode)": cpu_us(lambda i: maps[keys[i % n]], 8 * n),
            "library: numpy pool of one crop": cpu_us(lambda i: lms[i % n].pool(box, flip=True), 8 * n),
            "library: collate_label_maps (per sample)": cpu_us(lambda i: collate_label_maps(items), 20) / n,
            "library: pool_batch on CPU (per sample)": cpu_us(lambda i: collate_label_maps(items)[1].pool(), 20) / n,
        }
    print("\n(c) per-sample CPU cost of each step (1 thread, best of 5)")
    for name, us in rows.items():
        print(f"  {name:48s} {us:8.1f} us")


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=192, help="images in the generated dataset")
    p.add_argument("--image-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: all in this process)")
    p.add_argument("--repeats", type=int, default=5, help="epochs per loader configuration (median taken)")
    p.add_argument("--pool-batch", type=int, default=256)
    p.add_argument("--pool-iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers use 1 each)")
    p.add_argument("--device", default="auto", help="where mode='map' batches are pooled (auto: cuda if present)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        images, rlm, pt_dir = make_data(Path(tmp), args.images, tuple(args.image_size))
        print(f"data: {args.images} JPEG {args.image_size[0]}x{args.image_size[1]}, maps {C} classes top-{K} "
              f"{GRID}x{GRID}, {rlm.stat().st_size / args.images:,.0f} B/map in .rlm vs "
              f"{sum(f.stat().st_size for f in pt_dir.rglob('*.pt')) / args.images:,.0f} B per .pt "
              f"({time.perf_counter() - t0:.1f}s to generate)")
        transform = v2.Compose([RandomResizedCropWithBox(args.crop), RandomHorizontalFlipWithBox(), TO_TENSOR])
        configs = {
            "plain hard labels": (Plain(images, args.crop), None, None),
            "official (load .pt + dense + roi_align)": (Official(images, args.crop, pt_dir), None, None),
            "relabel-maps mode=pool (CPU, loader)": (
                LabelMapDataset(ImageFolder(images), rlm, transform=transform, mode="pool"), None, None),
            f"relabel-maps mode=map + pool_batch ({device})": (
                LabelMapDataset(ImageFolder(images), rlm, transform=transform, mode="map"), collate_label_maps, device),
        }
        rates: dict[str, list[float]] = {name: [] for name in configs}
        for ds, collate, dev in configs.values():  # warm-up: page cache, lazy imports, first-call costs
            loader_rate(ds, args, collate, dev)
        names = list(configs)
        for r in range(args.repeats):  # interleaved, so that load changes hit every configuration alike,
            for name in names[r % len(names):] + names[: r % len(names)]:  # in a rotating order (no position bias)
                ds, collate, dev = configs[name]
                rates[name].append(loader_rate(ds, args, collate, dev))
        print(f"\n(a) data loader, batch {args.batch_size}, {args.workers} workers, crop {args.crop}, "
              f"median of {args.repeats} epochs")
        print("  overhead = plain rate / rate - 1 of the medians; [range] of the same ratio per interleaved round")
        plain_rates = rates["plain hard labels"]
        plain = statistics.median(plain_rates)
        for name, r in rates.items():
            rate = statistics.median(r)
            line = f"  {name:48s} {rate:8.1f} img/s"
            if r is not plain_rates:
                paired = sorted((p / x - 1.0) * 100 for p, x in zip(plain_rates, r, strict=True))
                line += (f"   overhead {(plain / rate - 1.0) * 100:+6.1f} % [{paired[0]:+5.1f} .. {paired[-1]:+5.1f}]"
                         f"   ({(1 / rate - 1 / plain) * 1e6:6.1f} us/sample)")
            print(line)

        print("\n(b) batched pooling, 1000 classes, top-5, 15x15, random boxes and flips, size 1")
        with relabel_maps.open(rlm) as maps:
            bench_pooling(maps, args, "cpu")
            if torch.cuda.is_available():
                bench_pooling(maps, args, "cuda")
            else:
                print("  cuda: not available (the GPU figures need a CUDA device)")
        bench_components(images, rlm, pt_dir, args)


if __name__ == "__main__":
    main()
