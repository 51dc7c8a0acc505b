"""How each precision and each preprocessing path changes the label maps, against the fp32 reference.

Teacher: the packaged EfficientNet-Lite0 ImageNet teacher (``lite0-packaged``, real weights) at 475 px,
15x15 maps. Images: real photos, skimage.data chelsea, coffee, astronaut and rocket (saved as JPEG,
quality 95) and the two JPEGs shipped with the package, then random crops (8-100 % of the area,
some mirrored) of them up to ``--views`` images. Reference: fp32 on the CPU with the
annotator's preprocessing (PIL decode, torch float32 antialiased bicubic, rounded to 8 bit).

Rows, each against the reference:

* precisions: the annotator's device step (``relabel_maps.annotate.step``) on ``--device`` in fp32
  (IEEE: TF32 off), tf32, fp16 and bf16 (autocast backbone, float32 head). On the CPU, fp16/bf16 run
  under CPU autocast and TF32 is EMULATED (every convolution's and linear layer's input and weight
  rounded to TF32's 10 mantissa bits): CPU rows estimate what CUDA does, they are not CUDA figures.
* preprocessing (fp32 on the CPU): PIL's 8-bit resize (the CPU worker path of 0.1.0) and the
  annotator's device-decode path (torchvision decode on ``--device`` - nvJPEG on CUDA - then the
  same resize on the device, through ``relabel_maps.annotate.batches.assemble``).
* storage: the reference maps written with the default encoding through the real Writer and read back.

Columns: per-location top-1 agreement, top-5 set agreement, top-5 order agreement, max |logit - ref|
(all classes and locations; for storage: the stored top-5), pooled-label error (max |p - p_ref| over
classes and 48 random boxes per image, zero fill, from the top-5 maps with their log-sum-exp: what
training sees), images with a non-finite value, and the forward pass's img/s on the device.

The acceptance bar of the CUDA default precision: >= 99 % per-location top-1 and a pooled error no
larger than the storage row's.

    python benchmarks/bench_precision.py                  # CPU (autocast on the CPU, TF32 emulated)
    python benchmarks/bench_precision.py --device cuda    # real CUDA precisions, nvJPEG decoding
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

import relabel_maps
from relabel_maps import LabelMap
from relabel_maps.annotate import load_teacher
from relabel_maps.annotate.batches import TeacherInput, assemble, batch_loader, plan_loader
from relabel_maps.annotate.decode import DEFAULT_MAX_PIXELS, load_rgb
from relabel_maps.annotate.sources import list_images, sample_images_dir
from relabel_maps.annotate.step import CUDA_DEFAULT_PRECISION, TopKStep
from relabel_maps.frame import source_window

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
K = 5
TOP1_BAR = 0.99


def make_images(folder: Path, views: int, seed: int = 0) -> None:
    """The photos as JPEG files (quality 95), copies of the shipped samples, and random crops of them
    (some mirrored) up to ``views`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = {name: getattr(skdata, name)() for name in PHOTOS}
    for name, img in photos.items():
        Image.fromarray(img).save(folder / f"{name}.jpg", quality=95)
    for p in sorted(sample_images_dir().glob("*.jpg")):
        (folder / f"sample_{p.name}").write_bytes(p.read_bytes())
        photos[f"sample_{p.stem}"] = load_rgb(p.read_bytes())
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    for i in range(max(0, views - len(names))):
        img = photos[names[i % len(names)]]
        h, w = img.shape[:2]
        area, aspect = rng.uniform(0.08, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(16, round(np.sqrt(area * h * w / aspect)))))
        cw = int(min(w, max(16, round(np.sqrt(area * h * w * aspect)))))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[y0 : y0 + ch, x0 : x0 + cw]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"view_{i:03d}.jpg", quality=95)


def frames(folder: Path, spec: TeacherInput, device: torch.device, device_decode: bool) -> torch.Tensor:
    """The annotator's ``(N, 3, H, W)`` input for every image of ``folder``: worker path (PIL decode)
    or device-decode path (``device_decode``), through the annotator's own loader and ``assemble``."""
    items = list_images(folder)
    loader = batch_loader(items, [list(range(len(items)))], spec, jpeg_passthrough=device_decode,
                          loader=plan_loader(0, len(items), 0, None), pin_memory=False)
    failed: list[str] = []
    keep, x = assemble(next(iter(loader)), spec, device, lambda i, reason, detail: failed.append(reason))
    assert x is not None and not failed and keep == list(range(len(items))), failed
    return x


def pil_frames(folder: Path, spec: TeacherInput) -> torch.Tensor:
    """0.1.0's CPU path: PIL decode and PIL's 8-bit antialiased bicubic resize."""
    out = []
    for it in list_images(folder):
        arr = load_rgb(Path(it.path).read_bytes(), max_pixels=DEFAULT_MAX_PIXELS)
        top, left, ch, cw = source_window(arr.shape[0], arr.shape[1], spec.size, spec.crop_mode, spec.crop_pct)
        window = np.ascontiguousarray(arr[top : top + ch, left : left + cw])
        img = Image.fromarray(window).resize((spec.size[1], spec.size[0]), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    return torch.stack(out).float()


def _round_tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to TF32 (10 explicit mantissa bits, round to nearest even); float32 storage."""
    bits = t.float().contiguous().view(torch.int32)
    odd = (bits >> 13) & 1
    return ((bits + 0xFFF + odd) & ~0x1FFF).view(torch.float32)


@contextlib.contextmanager
def emulated_tf32(model: torch.nn.Module) -> Iterator[None]:
    """CPU emulation of TF32 convolutions and matmuls: inputs and weights rounded to TF32."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    saved = [m.weight.data for m in layers]
    hooks = [m.register_forward_pre_hook(lambda _m, args: (_round_tf32(args[0]), *args[1:])) for m in layers]
    for m in layers:
        m.weight.data = _round_tf32(m.weight.data)
    try:
        yield
    finally:
        for m, w in zip(layers, saved, strict=True):
            m.weight.data = w
        for h in hooks:
            h.remove()


def top_maps(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k indices, values and log-sum-exp of ``(N, C, h, w)`` logits, as numpy."""
    logits = logits.float().cpu()
    vals, idx = logits.topk(K, dim=1)
    return idx.numpy(), vals.numpy(), torch.logsumexp(logits, 1).numpy()


class Pooled:
    """Soft labels of fixed random boxes (zero fill, from top-k maps) and their worst difference."""

    def __init__(self, n_images: int, boxes: int = 48, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        side = np.exp(rng.uniform(np.log(0.02), 0.0, (n_images, boxes, 2)))  # sub-cell to whole image
        x0, y0 = rng.uniform(0, 1 - side[..., 0]), rng.uniform(0, 1 - side[..., 1])
        self.boxes = np.stack([x0, y0, x0 + side[..., 0], y0 + side[..., 1]], axis=-1)

    def labels(self, idx: np.ndarray, vals: np.ndarray, lse: np.ndarray | None) -> np.ndarray:
        out = []
        for i in range(len(idx)):
            if not np.isfinite(vals[i]).all():
                out.append(np.full((len(self.boxes[i]), 1000), np.nan))
                continue
            lm = LabelMap.from_arrays(idx[i], vals[i], num_classes=1000, lse=None if lse is None else lse[i])
            out.append(np.stack([lm.pool(tuple(b), fill="zero") for b in self.boxes[i]]))
        return np.stack(out)


def compare(logits: torch.Tensor, ref: torch.Tensor, pooled: Pooled, ref_labels: np.ndarray) -> dict[str, Any]:
    logits, ref = logits.float().cpu(), ref.float().cpu()
    finite = torch.isfinite(logits).flatten(1).all(1)
    top = logits.topk(K, dim=1).indices
    rtop = ref.topk(K, dim=1).indices
    idx, vals, lse = top_maps(logits)
    labels = pooled.labels(idx, vals, lse)
    return {
        "top1": float((logits.argmax(1) == ref.argmax(1)).float().mean()),
        "top5_set": float((top.sort(1).values == rtop.sort(1).values).all(1).float().mean()),
        "top5_order": float((top == rtop).all(1).float().mean()),
        "max_logit": float((logits - ref).abs().max()) if bool(finite.all()) else float("inf"),
        "pooled": float(np.abs(labels - ref_labels).max()) if bool(finite.all()) else float("inf"),
        "pooled_mean": float(np.abs(labels - ref_labels).max(-1).mean()) if bool(finite.all()) else float("inf"),
        "nonfinite": int((~finite).sum()),
    }


def storage_row(ref: torch.Tensor, pooled: Pooled, ref_labels: np.ndarray) -> dict[str, Any]:
    """The reference maps through the real Writer (default encoding, with lse) and back."""
    idx, vals, lse = top_maps(ref)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "maps.rlm"
        with relabel_maps.Writer(path, num_classes=1000, k=K) as w:
            for i in range(len(idx)):
                w.add(f"{i:03d}", idx[i], vals[i], lse=lse[i])
        with relabel_maps.open(path) as maps:
            encoding = maps.metadata["encoding"]
            back = [maps[f"{i:03d}"] for i in range(len(idx))]
            d_vals = np.stack([m.scores for m in back])
            d_lse = np.stack([m.lse for m in back])
            assert all(np.array_equal(m.indices, idx[i]) for i, m in enumerate(back))
    labels = pooled.labels(idx, d_vals, d_lse)
    step = f", step 1/{round(1 / encoding['step'])}" if "step" in encoding else ""
    err = np.abs(labels - ref_labels)
    return {"label": f"storage: default encoding ({encoding['name']}{step})", "top1": 1.0, "top5_set": 1.0,
            "top5_order": 1.0, "max_logit": float(np.abs(d_vals - vals).max()), "pooled": float(err.max()),
            "pooled_mean": float(err.max(-1).mean()), "nonfinite": 0}


def timed_logits(step: TopKStep, x: torch.Tensor, emulate_tf32: bool, repeats: int) -> tuple[torch.Tensor, float]:
    """The step's full logits of ``x`` and the best img/s over ``repeats`` passes (after one warm-up)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    ctx = emulated_tf32(step.teacher.model) if emulate_tf32 else contextlib.nullcontext()
    with ctx:
        logits = step.logits(x)
        best = float("inf")
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            step.logits(x)
            sync()
            best = min(best, time.perf_counter() - t0)
    return logits, len(x) / best if repeats else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--views", type=int, default=24, help="images: the 6 photos, then random crops of them")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per precision [3 on CUDA, 0 on CPU]")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    is_cuda = device.type == "cuda"
    repeats = args.repeats if args.repeats is not None else (3 if is_cuda else 0)
    t_start = time.perf_counter()
    ref_teacher = load_teacher("lite0-packaged")
    spec = TeacherInput(ref_teacher.input_size, ref_teacher.crop_mode, ref_teacher.crop_pct, DEFAULT_MAX_PIXELS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, args.views)
        x_ref = frames(folder, spec, torch.device("cpu"), device_decode=False)
        x_pil = pil_frames(folder, spec)
        x_dec = frames(folder, spec, device, device_decode=True).cpu()
    n = len(x_ref)
    ref_step = TopKStep(ref_teacher, K, "fp32", True, False, False)
    ref = ref_step.logits(x_ref)
    pooled = Pooled(n)
    ref_labels = pooled.labels(*top_maps(ref))

    rows: list[dict[str, Any]] = []
    teacher = load_teacher("lite0-packaged", device=device) if is_cuda else ref_teacher
    where = "CUDA" if is_cuda else "CPU autocast" if device.type == "cpu" else device.type
    for prec in PRECISIONS:
        step = TopKStep(teacher, K, prec, True, is_cuda, False)
        emulate = prec == "tf32" and not is_cuda
        logits, ips = timed_logits(step, x_ref.to(device), emulate, repeats)
        note = "emulated TF32" if emulate else ("IEEE" if prec == "fp32" else where)
        rows.append({"label": f"precision {prec} on {device} ({note})", "prec": prec, "img_s": ips,
                     **compare(logits, ref, pooled, ref_labels)})
    for label, x in ((f"preprocess: device decode on {device} + torch resize", x_dec),
                     ("preprocess: PIL 8-bit resize (0.1.0 CPU path)", x_pil)):
        rows.append({"label": label, **compare(ref_step.logits(x), ref, pooled, ref_labels)})
    store = storage_row(ref, pooled, ref_labels)
    rows.append(store)

    print(f"lite0-packaged @ {spec.size[0]}x{spec.size[1]}, {n} real photos x 15x15 = {n * 225} locations; "
          f"reference: fp32 on the CPU, torch float resize; torch {torch.__version__}")
    head = (f"{'row':<58} {'top-1':>7} {'top-5 set':>9} {'top-5 ord':>9} {'max |dlogit|':>12} "
            f"{'pooled max':>10} {'mean':>8} {'non-finite':>10} {'img/s':>7}  bar")
    print(head)
    for r in rows:
        passes = r["top1"] >= TOP1_BAR and r["pooled"] <= store["pooled"]
        ips = f"{r['img_s']:7.1f}" if "img_s" in r else f"{'':>7}"
        bar = ("pass" if passes else "FAIL") if "prec" in r else ""
        print(f"{r['label']:<58} {100 * r['top1']:6.2f}% {100 * r['top5_set']:8.2f}% {100 * r['top5_order']:8.2f}% "
              f"{r['max_logit']:12.4f} {r['pooled']:10.2e} {r['pooled_mean']:8.1e} {r['nonfinite']:10d} {ips}  {bar}")
    ok = [r for r in rows if "prec" in r and r["top1"] >= TOP1_BAR and r["pooled"] <= store["pooled"]]
    if is_cuda:
        best = max(ok, key=lambda r: r["img_s"])["prec"] if ok else "none"
        print(f"\nfastest precision within the bar on {device}: {best}; the annotator's CUDA default: "
              f"{CUDA_DEFAULT_PRECISION}")
    else:
        print(f"\nwithin the bar (CPU emulation): {', '.join(r['prec'] for r in ok) or 'none'}; the annotator's "
              f"CUDA default: {CUDA_DEFAULT_PRECISION} (img/s on the CPU say nothing about CUDA)")
    print(f"({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
