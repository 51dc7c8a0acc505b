"""Shared test data: a small ImageFolder and its label-map file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

import relabel_maps


def image_folder_with_maps(
    root: Path,
    classes: Sequence[str],
    per_class: int,
    image_shape: tuple[int, int],
    ext: str,
    *,
    num_classes: int,
    k: int,
    grid: int,
    with_lse: bool = False,
    **writer: Any,
) -> tuple[Path, Path]:
    """``root/images/<class>/<i>.<ext>``: ``per_class`` random RGB images of ``image_shape``
    ``(H, W)`` per class, and ``root/maps.rlm``: a random ``k x grid x grid`` logit map per image,
    keyed by its path relative to ``root/images`` (``with_lse``: with the log-sum-exp of the stored
    scores plus ``num_classes - k`` unit terms). ``writer``: further :class:`relabel_maps.Writer`
    options. Returns ``(images, maps)``."""
    rng = np.random.default_rng(0)
    keys = []
    for cls in classes:
        (root / "images" / cls).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 255, (*image_shape, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / cls / f"{i}.{ext}")
            keys.append(f"{cls}/{i}.{ext}")
    path = root / "maps.rlm"
    with relabel_maps.Writer(path, num_classes=num_classes, k=k, **writer) as w:
        for key in keys:
            idx = np.stack([rng.choice(num_classes, k, replace=False) for _ in range(grid * grid)], 1)
            sc = rng.normal(0, 2, (k, grid, grid)).astype(np.float32)
            lse = np.log(np.exp(sc).sum(0) + num_classes - k).astype(np.float32) if with_lse else None
            w.add(key, idx.reshape(k, grid, grid), sc, lse=lse)
    return root / "images", path
