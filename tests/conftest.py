"""Shared test configuration and fixtures.

Markers: ``gpu`` tests need a CUDA device and are skipped (with the reason) without one; ``slow``
tests take seconds each and run by default (``pytest -m "not slow"`` for a quick pass).
"""

from __future__ import annotations

import importlib.util
import os
import sys
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


@pytest.fixture()
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A local Hugging Face Hub (``tests/hub_server.py``) that this process's huggingface_hub talks to, with a
    fresh HF cache and home under ``tmp_path``, no token and fast retries (10 ms backoff).
    ``hub_server.env()`` holds the variables that point a subprocess at it."""
    hf = pytest.importorskip("huggingface_hub")
    module = sys.modules.get("hub_server")
    if module is None:  # loaded once, and registered: its dataclasses need their module
        spec = importlib.util.spec_from_file_location("hub_server", TESTS / "hub_server.py")
        assert spec is not None and spec.loader is not None
        module = sys.modules["hub_server"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    server = module.HubServer().start()
    server.patch_client(monkeypatch)
    home, cache = tmp_path / "hf-home", tmp_path / "hf-cache"
    for name, value in (("HF_HOME", home), ("HF_HUB_CACHE", cache)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf.constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RELABEL_MAPS_HUB_RETRY_DELAY", "0.01")
    yield server
    server.stop()
