"""Shared test configuration and fixtures.

Markers: ``gpu`` tests need a CUDA device and are skipped (with the reason) without one; ``slow``
tests take seconds each and run by default (``pytest -m "not slow"`` for a quick pass).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import relabel_maps

TESTS = Path(__file__).resolve().parent

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "default",
        deadline=None,
        max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60")),
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    settings.load_profile("default")
except ImportError:  # hypothesis is a dev extra
    pass


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fuzz() -> ModuleType:
    """The reader fuzzer (``tests/fuzz_reader.py``, also runnable as a script)."""
    spec = importlib.util.spec_from_file_location("fuzz_reader", TESTS / "fuzz_reader.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_image_folder_with_maps(
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
    from PIL import Image

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


@pytest.fixture(scope="session")
def image_folder_with_maps() -> Callable[..., tuple[Path, Path]]:
    """Factory: ``image_folder_with_maps(root, classes, per_class, image_shape, ext, num_classes=, k=,
    grid=, with_lse=False, **writer)`` writes an ImageFolder of random images and their label maps
    and returns ``(images, maps)``."""
    return write_image_folder_with_maps
