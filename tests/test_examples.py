"""The examples run end to end on a tiny generated ImageFolder and label-map file (CPU, 2 steps)."""

from __future__ import annotations

import json
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


NAMES = ["a", "b", *(f"class{i}" for i in range(2, C))]  # the folders "a" and "b" are the teacher's classes 0 and 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, image_folder_with_maps):
    return image_folder_with_maps(tmp_path_factory.mktemp("tiny"), ("a", "b"), 4, (48, 64), "jpg", num_classes=C, k=K,
                                  grid=GRID, teacher={"crop_mode": "squash", "input_size": [64, 64]},
                                  class_names=NAMES)


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory, image_folder_with_maps):
    return image_folder_with_maps(tmp_path_factory.mktemp("unnamed"), ("cat", "cup"), 2, (48, 64), "jpg",
                                  num_classes=C, k=K, grid=GRID)


def run(args, tmp_path, returncode=0):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(EXAMPLES.parent))
    proc = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert proc.returncode == returncode, proc.stdout + proc.stderr
    return proc.stdout if returncode == 0 else proc.stderr


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


@pytest.mark.slow
def test_train_example_refuses_hard_labels_of_another_label_space(unnamed, tmp_path):
    """0.1.0 mixed the folders' class ids 0-1 in as the teacher's classes 0-1 (ImageNet: tench, goldfish)."""
    images, maps = unnamed
    base = [EXAMPLES / "train.py", "--data", images, "--maps", maps, "--model", "resnet10t", "--img-size", 32,
            "--batch-size", 4, "--steps", 1, "--workers", 0, "--device", "cpu"]
    err = run([*base, "--alpha", 0.5], tmp_path, returncode=1)
    assert "--alpha 0.5 mixes in the ImageFolder's labels" in err and "'cat' has no place" in err
    (tmp_path / "classes.json").write_text(json.dumps({"cat": ["0-4"], "cup": ["5-8"]}))
    out = run([*base, "--alpha", 0.5, "--class-map", tmp_path / "classes.json", "--log-every", 1], tmp_path)
    assert out.splitlines()[-1].startswith("step 1/1 loss")
