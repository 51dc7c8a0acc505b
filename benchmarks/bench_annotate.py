"""Annotator throughput: teacher forward-only vs end-to-end (JPEG folder → finished label-map file).

Both are measured in the same run on the same device with the same compute step (normalise,
teacher, dense head, top-k, log-sum-exp on the device), and the ratio shows how much of the
teacher's speed the whole pipeline (decode, resize, copy back, encode, compress, write) keeps.
Forward-only is measured before and after the end-to-end run and the better figure is kept.

    python benchmarks/bench_annotate.py                       # CPU: lite0-packaged@475, resnet50@224
    python benchmarks/bench_annotate.py --device cuda --compile \\
        --config efficientnet_l2:random:475:64:2048 --config resnet50:random:224:256:20000

A config is ``TEACHER:WEIGHTS:SIZE:BATCH:IMAGES`` with WEIGHTS ``pretrained``, ``random``
(random init: throughput only) or a checkpoint path. The precision is the annotator's default (fp32,
TF32 off) unless ``--precision`` says otherwise; run it again with ``--precision fp16`` (or ``tf32``)
on a GPU to see what the faster precisions gain (``bench_precision.py`` shows what they change).

``--peak-memory TEACHER:SIZE:BATCH`` instead traces the device step's peak memory (weights included)
per precision with fake tensors, on any machine: the figures ``--help`` and the README give for
EfficientNet-L2 (``--peak-memory efficientnet_l2:475:128``).
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
import timm
import torch
from PIL import Image
from skimage import data as skdata

from relabel_maps.annotate import annotate, load_teacher
from relabel_maps.annotate.decode import load_item
from relabel_maps.annotate.head import dense_head
from relabel_maps.annotate.sources import list_images
from relabel_maps.annotate.step import PRECISIONS, get_step, resolve_precision

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


def peak_memory(spec: str) -> None:
    """Print the traced peak memory of the annotator's forward (features, dense head, top-k) of
    ``TEACHER:SIZE:BATCH`` in fp32 and under fp16/bf16 autocast (CPU autocast on fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from relabel_maps.annotate.presets import resolve_preset

    name, size, batch = spec.split(":")
    preset = resolve_preset(name)
    arch = preset.model if preset else name
    with FakeTensorMode():
        model = timm.create_model(arch, pretrained=False).eval()
        for prec in ("fp32", "fp16", "bf16"):
            x = torch.zeros(int(batch), 3, int(size), int(size))
            tracker = MemTracker()
            tracker.track_external(model)
            amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)
            with tracker, torch.inference_mode(), torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=bool(amp)):
                feats = model.forward_features(x)
                with torch.autocast("cpu", enabled=False):
                    dense_head(model, feats.float(), x.shape[-2:]).topk(5, 1)
            peak = sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())
            print(f"{arch} @ {size} px, batch {batch}, {prec}: peak {peak / 2**30:.1f} GiB (weights included)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", action="append", help="TEACHER:WEIGHTS:SIZE:BATCH:IMAGES (repeatable)")
    ap.add_argument("--precision", default="auto", choices=list(PRECISIONS))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--level", type=int, default=None, help="zstd level of the writer")
    ap.add_argument("--peak-memory", metavar="TEACHER:SIZE:BATCH", help="trace peak memory instead (see above)")
    args = ap.parse_args(argv)
    if args.peak_memory:
        peak_memory(args.peak_memory)
        return 0
    configs = args.config or DEFAULT_CPU
    print(f"{'config':<90} {'forward img/s':>14} {'end-to-end img/s':>17} {'ratio':>7}")
    for spec in configs:
        label, fwd, e2e = run_config(spec, args)
        print(f"{label:<90} {fwd:>14.1f} {e2e:>17.1f} {e2e / fwd:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
