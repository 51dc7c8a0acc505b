"""The examples run end to end on a tiny generated ImageFolder and label-map file (CPU, 2 steps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
C, K, GRID = 10, 3, 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, image_folder_with_maps):
    return image_folder_with_maps(tmp_path_factory.mktemp("tiny"), ("a", "b"), 4, (48, 64), "jpg", num_classes=C, k=K,
                                  grid=GRID, teacher={"crop_mode": "squash", "input_size": [64, 64]})


def run(args, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(EXAMPLES.parent))
    proc = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_minimal_example(tiny, tmp_path):
    images, maps = tiny
    out = run([EXAMPLES / "minimal.py", images, maps, 2], tmp_path)
    lines = [line for line in out.splitlines() if line.startswith("step")]
    assert [line.split()[1] for line in lines] == ["1", "2"]
    assert all(np.isfinite(float(line.split()[3])) for line in lines)


@pytest.mark.slow
def test_train_example_with_cutmix(tiny, tmp_path):
    images, maps = tiny
    out = run([EXAMPLES / "train.py", "--data", images, "--maps", maps, "--model", "resnet10t", "--img-size", 32,
               "--batch-size", 4, "--steps", 2, "--workers", 2, "--device", "cpu", "--log-every", 1,
               "--mix-prob", 1.0, "--alpha", 0.1, "--output", tmp_path / "model.pt"], tmp_path)
    lines = [line for line in out.splitlines() if line.startswith("step")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all(np.isfinite(float(line.split()[3])) for line in lines)
    assert (tmp_path / "model.pt").stat().st_size > 0


def test_sample_images(tmp_path):
    pytest.importorskip("skimage")
    run([EXAMPLES / "sample_images.py", tmp_path / "photos"], tmp_path)
    names = sorted(p.name for p in (tmp_path / "photos").iterdir())
    assert names == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
