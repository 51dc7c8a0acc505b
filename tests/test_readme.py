"""The README's Python snippets run as written: each block is executed verbatim, in a folder that holds
the files it names (``photos/``, ``maps.rlm``, ``maps/``, ``classes.csv``; the class-map file is the
README's own ``text`` block). Snippets that need the network (``hf://``) are not run.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import relabel_maps

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(section: str, lang: str = "python") -> list[str]:
    """The ``lang`` code blocks under the heading ``section`` (up to the next heading of any level)."""
    text = README.read_text(encoding="utf-8")
    start = re.search(rf"^#+ {re.escape(section)}\n", text, re.M)
    assert start is not None, f"README has no section {section!r}"
    end = re.search(r"^#+ ", text[start.end():], re.M)
    body = text[start.end(): start.end() + end.start() if end else len(text)]
    return re.findall(rf"^```{lang}\n(.*?)^```$", body, re.M | re.S)


def run(code: str, where: Path, monkeypatch: pytest.MonkeyPatch, **names: object) -> dict[str, object]:
    """Execute ``code`` in ``where`` (``names`` predefined) and return its namespace."""
    monkeypatch.chdir(where)
    namespace: dict[str, object] = {"__name__": "__readme__", **names}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own snippet
    return namespace


def _imagenet_maps(path: Path, keys: list[str], rng: np.random.Generator, **writer: object) -> None:
    from relabel_maps.classmap import imagenet_classes

    with relabel_maps.Writer(path, num_classes=1000, k=5, class_set="imagenet-1k",
                             class_names=list(imagenet_classes()[1]), **writer) as w:
        for key in keys:
            idx = np.stack([rng.choice(1000, 5, replace=False) for _ in range(9)], 1).reshape(5, 3, 3)
            scores = -np.sort(-rng.normal(0, 3, (5, 3, 3)), axis=0).astype(np.float32)
            lse = np.log(np.exp(scores.astype(np.float64)).sum(0) + 995).astype(np.float32)
            w.add(key, idx, scores, lse=lse)


def test_read_label_maps_snippets_run_verbatim(tmp_path, monkeypatch):
    read, write = blocks("Read label maps (no torch needed)")
    rng = np.random.default_rng(0)
    _imagenet_maps(tmp_path / "maps", ["n01440764/n01440764_10026.JPEG", "n01440764/n01440764_10027.JPEG"], rng,
                   teacher={"name": "EfficientNet-L2"}, max_records=1)
    ns = run(read, tmp_path, monkeypatch)
    assert ns["problems"] == [] and ns["label"].shape == (1000,) and ns["grid"].shape == (1000, 4, 4)
    arrays = {"indices": np.stack([rng.choice(1000, 5, replace=False) for _ in range(4)], 1).reshape(5, 2, 2),
              "scores": np.broadcast_to(np.arange(5.0, 0.0, -1.0, dtype=np.float32)[:, None, None], (5, 2, 2)),
              "lse": np.full((2, 2), 6.0, np.float32)}
    run(write, tmp_path, monkeypatch, **{**ns, **arrays})  # the second block goes on from the first
    with relabel_maps.open(tmp_path / "maps.rlm") as maps:
        assert list(maps) == ["img_0001.jpg"] and maps.metadata["teacher"]["name"] == "my-teacher"


@pytest.mark.slow
def test_train_with_label_maps_snippet_runs_verbatim(tmp_path, monkeypatch, image_folder_with_maps):
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    (code,) = blocks("Train with label maps")
    images, maps = image_folder_with_maps(tmp_path, ("cat", "cup"), 3, (60, 80), "jpg", num_classes=10, k=3, grid=4,
                                          teacher={"crop_mode": "squash"})
    images.rename(tmp_path / "photos")
    ns = run(code, tmp_path, monkeypatch)
    assert ns["data"].num_classes == 10 and ns["soft"].shape == (6, 10)
    assert math.isfinite(ns["loss"].item()) and ns["loss"].item() > 0


def test_own_classes_snippets_run_verbatim(tmp_path, monkeypatch):
    (table,) = blocks("Your own classes", "text")
    (code,) = blocks("Your own classes")
    (tmp_path / "classes.csv").write_text(table)
    keys = [f"{c}/{v}.jpg" for c in ("cat", "cup", "rocket") for v in ("crop", "whole")]
    _imagenet_maps(tmp_path / "maps.rlm", keys, np.random.default_rng(1))
    ns = run(code, tmp_path, monkeypatch)
    assert ns["classes"].names == ["cat", "cup", "rocket"]
    assert ns["label"].shape == (3,) and float(ns["label"].sum()) == pytest.approx(1.0, abs=1e-6)
