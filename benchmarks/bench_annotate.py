"""Annotator throughput: teacher forward-only vs end-to-end (JPEG folder → finished label-map file).

Both are measured in the same run on the same device with the same compute step (normalise,
teacher, dense head, top-k, log-sum-exp on the device), and the ratio shows how much of the
teacher's speed the whole pipeline (decode, resize, copy back, encode, compress, write) keeps.
Forward-only is measured before and after the end-to-end run and the better figure is kept.

    python benchmarks/bench_annotate.py                       # CPU: lite0-packaged@475, resnet50@224
    python benchmarks/bench_annotate.py --device cuda --compile \\
        --config efficientnet_l2:random:475:64:2048 --config resnet50:random:224:256:20000

A config is ``TEACHER:WEIGHTS:SIZE:BATCH:IMAGES`` with WEIGHTS ``pretrained``, ``random``
(random init: throughput only) or a checkpoint path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from relabel_maps.annotate import annotate, load_teacher
from relabel_maps.annotate.decode import load_item
from relabel_maps.annotate.sources import list_images
from relabel_maps.annotate.step import get_step, resolve_precision

DEFAULT_CPU = ["lite0-packaged:pretrained:475:8:48", "resnet50:random:224:16:64"]


def make_jpeg_folder(root: Path, n: int, size: tuple[int, int] = (500, 375), unique: int = 128) -> None:
    """``n`` JPEGs of ImageNet-like size: ``unique`` distinct photos, the rest symlinks to them."""
    photos = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket(), skdata.hubble_deep_field()]
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(min(n, unique)):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        y, x = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = Image.fromarray(img[y : y + 3 * h // 4, x : x + 3 * w // 4]).resize(size, Image.BILINEAR)
        p = root / f"c{i % 10}" / f"img_{i:06d}.jpg"
        p.parent.mkdir(exist_ok=True)
        crop.save(p, quality=90)
        files.append(p)
    for i in range(len(files), n):
        p = root / f"c{i % 10}" / f"img_{i:06d}.jpg"
        os.symlink(files[i % len(files)], p)


def premade_batch(folder: Path, teacher, batch: int, device):
    """The first ``batch`` images of ``folder``, decoded and resized as the pipeline does, on ``device``
    (real photos, not noise: noise can hit slow denormal paths on CPUs)."""
    items = list_images(folder)[:batch]
    frames = [load_item(i, it.key, it.path, size=teacher.input_size, crop_mode=teacher.crop_mode,
                        crop_pct=teacher.crop_pct).data
              for i, it in enumerate(items)]
    return torch.stack(frames).to(device).float()


def forward_only(step, x, iters: int, device) -> float:
    """img/s of the compute step on pre-made device tensors (uint8-valued floats, like the pipeline's)."""
    batch = x.shape[0]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up (and compilation)
        step(x)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        out = step(x)
    out[0].cpu()
    sync()
    return batch * iters / (time.perf_counter() - t0)


def run_config(spec: str, args: argparse.Namespace) -> tuple[str, float, float]:
    name, weights, size, batch, images = spec.split(":")
    size_i, batch_i, n = int(size), int(batch), int(images)
    device = torch.device(args.device)
    teacher = load_teacher(
        name,
        checkpoint=None if weights in ("pretrained", "random") else weights,
        pretrained=weights != "random",
        input_size=size_i,
        device=device,
    )
    prec = resolve_precision(args.precision, device.type)
    is_cuda = device.type == "cuda"
    step = get_step(teacher, args.k, prec, True, is_cuda, args.compile)  # the step annotate() uses
    iters = max(2, n // batch_i)
    tmp = Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    try:
        make_jpeg_folder(tmp / "jpegs", n)
        x = premade_batch(tmp / "jpegs", teacher, batch_i, device)
        fwd = forward_only(step, x, iters, device)
        # one small warm-up run outside the timing: first-use costs (kernel selection for the
        # batch shape and the grid probe, nvJPEG start-up, compilation) are not throughput
        annotate(tmp / "jpegs", tmp / "warm.rlm", teacher, k=args.k, batch_size=batch_i, limit=batch_i,
                 compile=args.compile, precision=args.precision, workers=args.workers, device=str(device))
        s = annotate(tmp / "jpegs", tmp / "out.rlm", teacher, k=args.k, batch_size=batch_i, compile=args.compile,
                     precision=args.precision, workers=args.workers, device=str(device), level=args.level)
        e2e = s.annotated / s.seconds
        # forward-only again after the run, best of the two: shared machines drift
        fwd = max(fwd, forward_only(step, x, iters, device))
        label = (f"{name} ({weights}) @{size_i} batch {batch_i}, {n} images, {device.type} {prec}"
                 f"{' compiled' if args.compile else ''}: {s.bytes_per_image:.0f} B/image")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return label, fwd, e2e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", action="append", help="TEACHER:WEIGHTS:SIZE:BATCH:IMAGES (repeatable)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--level", type=int, default=None, help="zstd level of the writer")
    args = ap.parse_args(argv)
    configs = args.config or DEFAULT_CPU
    print(f"{'config':<90} {'forward img/s':>14} {'end-to-end img/s':>17} {'ratio':>7}")
    for spec in configs:
        label, fwd, e2e = run_config(spec, args)
        print(f"{label:<90} {fwd:>14.1f} {e2e:>17.1f} {e2e / fwd:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
