"""Annotator throughput: teacher forward-only vs end-to-end (JPEG folder, tar shards or Parquet →
finished label-map file), and what draft decode buys and changes.

Forward-only and end-to-end are measured in the same run on the same device with the same compute
step (normalise, teacher, dense head, top-k, log-sum-exp on the device), and the ratio shows how much
of the teacher's speed the whole pipeline (read, decode, resize, copy back, encode, compress, write)
keeps. ``--source folder,tar,parquet`` runs the pipeline over the same JPEGs as a folder, as
WebDataset tar shards and as a Parquet file (``Image`` structs, 64-row groups) in one run, and
prints each source's speed against the folder's. The sources run ``--repeat`` rounds in rotated
order and each keeps its best round; forward-only is measured before and after every round and the
best figure is kept (shared machines drift).

Draft decode (``--draft-study``, on by default): real photos (scikit-image's and the package's
samples) as JPEGs, at teacher input sizes where libjpeg's DCT scaling applies (photos at least
``2 x DRAFT_MARGIN`` times the input side): decode + resize time with and without it, the pixel
difference of the teacher frames, and the per-location top-1 agreement of the packaged ImageNet
teacher (EfficientNet-Lite0) on the two frames.

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
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from skimage import data as skdata

from relabel_maps.annotate import annotate, load_teacher
from relabel_maps.annotate.decode import DRAFT_MARGIN, draft_request, load_item, load_rgb, resize_array
from relabel_maps.annotate.head import dense_head
from relabel_maps.annotate.sources import list_images
from relabel_maps.annotate.step import PRECISIONS, get_step, resolve_precision

DEFAULT_CPU = ["lite0-packaged:pretrained:475:8:48", "resnet50:random:224:16:64"]
SOURCES = ("folder", "tar", "parquet")
SHIPPED = Path(__file__).resolve().parents[1] / "relabel_maps" / "data"


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
        p.parent.mkdir(exist_ok=True)
        os.symlink(files[i % len(files)], p)


def make_tar_shards(folder: Path, out: Path, shards: int = 4) -> Path:
    """The folder's images as WebDataset shards (member names = folder keys), split in ``shards`` runs."""
    items = list_images(folder)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(out / f"train-{s:04d}.tar", "w") as tf:
            for it in items[s * len(items) // shards : (s + 1) * len(items) // shards]:
                data = Path(it.path).read_bytes()
                info = tarfile.TarInfo(it.key)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return out


def make_parquet(folder: Path, out: Path, row_group: int = 64) -> Path:
    """The folder's images as one Parquet file of Hugging Face ``Image`` structs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = list_images(folder)
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [{"bytes": Path(it.path).read_bytes(), "path": it.key} for it in items]
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array(rows, type=kind)}), out / "train-00000-of-00001.parquet",
                   row_group_size=row_group)
    return out


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


def decode_rate(folder: Path, teacher, count: int = 256) -> float:
    """img/s of reading, decoding and resizing the folder's first ``count`` JPEGs as the annotator's
    worker path does (draft decode on), in this process with its torch threads: what the device
    loop pays per image when the decode runs on the same cores (``--workers 0``, a CPU-only run)."""
    items = list_images(folder)[:count]

    def once() -> None:
        for i, it in enumerate(items):
            load_item(i, it.key, it.path, size=teacher.input_size, crop_mode=teacher.crop_mode,
                      crop_pct=teacher.crop_pct, draft=True)

    once()
    return len(items) / (_best_ms(once, repeat=3) / 1e3)


def run_config(spec: str, args: argparse.Namespace) -> tuple[str, float, dict[str, float], float]:
    """``(label, forward-only img/s, {source: end-to-end img/s}, decode img/s)`` of one config."""
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
    options = dict(k=args.k, batch_size=batch_i, compile=args.compile, precision=args.precision,
                   workers=args.workers, device=str(device))
    try:
        make_jpeg_folder(tmp / "jpegs", n, size=args.photo_size)
        paths = {"folder": tmp / "jpegs"}
        if "tar" in args.source:
            paths["tar"] = make_tar_shards(tmp / "jpegs", tmp / "shards")
        if "parquet" in args.source:
            paths["parquet"] = make_parquet(tmp / "jpegs", tmp / "parquet")
        x = premade_batch(tmp / "jpegs", teacher, batch_i, device)
        fwd = forward_only(step, x, iters, device)
        decode = decode_rate(tmp / "jpegs", teacher)
        # one small warm-up run outside the timing: first-use costs (kernel selection for the
        # batch shape and the grid probe, nvJPEG start-up, compilation) are not throughput
        annotate(tmp / "jpegs", tmp / "warm.rlm", teacher, limit=batch_i, **options)
        e2e: dict[str, float] = {}
        for r in range(args.repeat):  # rounds in rotated order, best of each: shared machines drift
            order = args.source[r % len(args.source):] + args.source[: r % len(args.source)]
            for source in order:
                s = annotate(paths[source], tmp / f"out-{source}-{r}.rlm", teacher, level=args.level, **options)
                assert s.annotated == n, (source, s.annotated, s.failure_reasons)
                e2e[source] = max(e2e.get(source, 0.0), s.annotated / s.seconds)
            fwd = max(fwd, forward_only(step, x, iters, device))
        label = (f"{name} ({weights}) @{size_i} batch {batch_i}, {n} images, {device.type} {prec}"
                 f"{' compiled' if args.compile else ''}: {s.bytes_per_image:.0f} B/image")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return label, fwd, e2e, decode


def real_photos() -> dict[str, tuple[bytes, np.ndarray | None]]:
    """The real photos this machine has: name -> (JPEG file, lossless pixels or ``None``): the package's
    samples (JPEGs as shipped) and scikit-image's (encoded here at quality 90)."""
    from PIL import Image

    out: dict[str, tuple[bytes, np.ndarray | None]] = {
        p.name: (p.read_bytes(), None) for p in sorted(SHIPPED.glob("*.jpg"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("astronaut", "rocket", "coffee", "chelsea", "hubble_deep_field", "immunohistochemistry",
                     "retina", "motorcycle_left", "camera"):
            try:
                arr = getattr(skdata, name)()
            except Exception:  # noqa: BLE001 - an optional download this machine lacks
                continue
            rgb = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=90)
            out[f"{name}.jpg"] = (buf.getvalue(), rgb)
    return out


def _best_ms(fn, repeat: int = 7) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def _compare(step, a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, float]:
    """Teacher outputs on frames ``a`` (reference) and ``b``: locations, equal top-1, reference top-1
    within ``b``'s top-5, and the largest difference of the whole-image soft label (mean softmax)."""
    x = torch.from_numpy(np.stack([a, b]).astype(np.float32)).permute(0, 3, 1, 2)
    logits = step.logits(x)
    top1, top5 = logits.argmax(1), logits.topk(5, 1).indices
    whole = logits.softmax(1).mean((2, 3))
    return (top1[0].numel(), int((top1[0] == top1[1]).sum()), int((top5[1] == top1[0][None]).any(0).sum()),
            float((whole[0] - whole[1]).abs().max()))


def draft_study(sizes: list[int], margins: list[float]) -> None:
    """Draft decode against full decode on real photos, for each teacher input size and margin.

    Times are decode + resize on one thread (as in a DataLoader worker). The yardstick compares the
    teacher on the lossless pixels and on their JPEG (quality 90) for the same photos: the change
    JPEG compression itself makes, which every JPEG dataset carries."""
    from PIL import Image

    photos = real_photos()
    threads = torch.get_num_threads()
    print(f"\ndraft decode on {len(photos)} real photos (JPEG q90; default margin {DRAFT_MARGIN:g}); teacher: "
          "packaged EfficientNet-Lite0 (ImageNet weights); one thread")
    print(f"{'input':>5} {'margin':>6} {'photos':>6} {'scales':>9} {'full ms':>8} {'draft ms':>8} {'speed-up':>8} "
          f"{'mean|dpx|':>9} {'max|dpx|':>8} {'top-1 same':>10} {'in top-5':>8} {'label max|dp|':>13} "
          f"{'locations':>9} {'JPEG q90 yardstick: top-1 same':>31}")
    for size in sizes:
        step = get_step(load_teacher("lite0-packaged", input_size=size), 5, "fp32", True, False, False)
        frame = ((size, size), "squash", 1.0)
        for margin in margins:
            chosen = {}
            for name, (data, lossless) in photos.items():
                w, h = Image.open(io.BytesIO(data)).size
                if draft_request(w, h, frame[0], "squash", 1.0, margin) is not None:
                    chosen[name] = (data, lossless, w)
            if not chosen:
                print(f"{size:>5} {margin:>6g} {0:>6}  (no photo is {2 * margin:g} x the input side: no draft)")
                continue
            full_ms = draft_ms = 0.0
            diffs, maxes, scales = [], [], set()
            n = same = top5 = 0
            label = 0.0
            ys_n = ys_same = 0
            torch.set_num_threads(1)
            try:
                for data, lossless, w in chosen.values():
                    def full(d=data, f=frame):
                        return resize_array(load_rgb(d), f[0])

                    def drafted(d=data, m=margin, f=frame):
                        return resize_array(load_rgb(d, draft=f, draft_margin=m), f[0])

                    full_ms += _best_ms(full)
                    draft_ms += _best_ms(drafted)
                    scales.add(round(w / load_rgb(data, draft=frame, draft_margin=margin).shape[1]))
                    a, b = full(), drafted()
                    delta = np.abs(a.astype(np.int16) - b.astype(np.int16))
                    diffs.append(float(delta.mean()))
                    maxes.append(int(delta.max()))
                    locs, eq, in5, dp = _compare(step, a, b)
                    n, same, top5, label = n + locs, same + eq, top5 + in5, max(label, dp)
                    if lossless is not None:
                        locs, eq, _, _ = _compare(step, resize_array(lossless, frame[0]), a)
                        ys_n, ys_same = ys_n + locs, ys_same + eq
            finally:
                torch.set_num_threads(threads)
            k = len(chosen)
            yard = f"{100 * ys_same / ys_n:.1f}% of {ys_n}" if ys_n else "-"
            print(f"{size:>5} {margin:>6g} {k:>6} {','.join(f'1/{s}' for s in sorted(scales)):>9} "
                  f"{full_ms / k:>8.1f} {draft_ms / k:>8.1f} {full_ms / draft_ms:>7.2f}x {np.mean(diffs):>9.2f} "
                  f"{max(maxes):>8d} {100 * same / n:>9.1f}% {100 * top5 / n:>7.1f}% {label:>13.4f} {n:>9d} "
                  f"{yard:>31}", flush=True)


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


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", action="append", help="TEACHER:WEIGHTS:SIZE:BATCH:IMAGES (repeatable)")
    ap.add_argument("--precision", default="auto", choices=list(PRECISIONS))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--level", type=int, default=None, help="zstd level of the writer")
    ap.add_argument("--source", default=",".join(SOURCES),
                    help="comma-separated sources, the same JPEGs: folder, tar (4 shards), parquet (64-row groups)")
    ap.add_argument("--photo-size", type=_size, default=(500, 375), metavar="WxH",
                    help="size of the benchmark's JPEGs (default 500x375, ImageNet's typical size)")
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end rounds per source (best kept)")
    ap.add_argument("--draft-sizes", default="112,160,224,475", help="teacher input sizes of the draft study")
    ap.add_argument("--draft-margins", default=f"{DRAFT_MARGIN:g},1", help="draft margins of the draft study")
    ap.add_argument("--no-draft-study", action="store_true", help="skip the draft decode study")
    ap.add_argument("--peak-memory", metavar="TEACHER:SIZE:BATCH", help="trace peak memory instead (see above)")
    args = ap.parse_args(argv)
    if args.peak_memory:
        peak_memory(args.peak_memory)
        return 0
    args.source = [s.strip() for s in args.source.split(",") if s.strip()]
    unknown = sorted(set(args.source) - set(SOURCES))
    if unknown or "folder" not in args.source:
        ap.error(f"--source takes {', '.join(SOURCES)} and includes folder (the baseline), got {args.source}")
    configs = args.config or DEFAULT_CPU
    print(f"{'config':<86} {'source':>8} {'forward img/s':>14} {'end-to-end img/s':>17} {'ratio':>6} {'vs folder':>10}")
    decodes = []
    for spec in configs:
        label, fwd, e2e, decode = run_config(spec, args)
        decodes.append((label, fwd, decode, e2e["folder"]))
        for source, rate in e2e.items():
            print(f"{label:<86} {source:>8} {fwd:>14.1f} {rate:>17.1f} {rate / fwd:>6.2f} "
                  f"{rate / e2e['folder']:>9.2f}x", flush=True)
    print(f"\ndecode on the same cores ({args.photo_size[0]}x{args.photo_size[1]} JPEGs; read + decode + resize as "
          "the workers do, measured in this process): the ratio a run reaches when the decode cannot overlap "
          "the teacher is forward / (forward + decode) in time per image")
    print(f"{'config':<86} {'decode img/s':>13} {'decode ms/img':>14} {'ratio ceiling':>14} "
          f"{'end-to-end / ceiling':>21}")
    for label, fwd, decode, folder in decodes:
        ceiling = 1 / (1 + fwd / decode)
        print(f"{label:<86} {decode:>13.1f} {1e3 / decode:>14.2f} {ceiling:>14.2f} {folder / fwd / ceiling:>21.2f}")
    if not args.no_draft_study:
        draft_study([int(v) for v in args.draft_sizes.split(",")], [float(v) for v in args.draft_margins.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
