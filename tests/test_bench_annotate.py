"""benchmarks/bench_annotate.py end to end on a tiny config: forward-only, end-to-end per source and
the decode ceiling are measured and printed, with the photo size asked for."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

bench_annotate = pytest.importorskip("bench_annotate", reason="needs the annotate extra (torch, timm)")


def test_photo_size_parses_w_x_h():
    assert bench_annotate._size("171x128") == (171, 128)
    assert bench_annotate._size("500X375") == (500, 375)


@pytest.mark.slow
def test_bench_annotate_tiny_run(capsys, tmp_path):
    folder = tmp_path / "jpegs"
    bench_annotate.make_jpeg_folder(folder, 6, size=(96, 72), unique=3)
    sizes = {p.name: Image.open(p).size for p in folder.rglob("*.jpg")}
    assert len(sizes) == 6 and set(sizes.values()) == {(96, 72)}

    assert bench_annotate.main([
        "--config", "resnet18:random:64:4:8", "--source", "folder,tar", "--repeat", "1", "--no-draft-study",
        "--photo-size", "96x72", "--workers", "0",
    ]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("resnet18 (random) @64")]
    assert len(rows) == 3  # folder, tar, and the decode row
    assert "96x72 JPEGs" in out
    fwd, e2e, ratio = (float(v) for v in rows[0].split()[-4:-1])
    assert fwd > 0 and e2e > 0 and ratio == pytest.approx(e2e / fwd, abs=0.01)
    decode, ms, ceiling, kept = (float(v) for v in rows[2].split()[-4:])
    assert decode > 0 and ms == pytest.approx(1e3 / decode, abs=0.006)  # printed with 2 decimals
    assert ceiling == pytest.approx(1 / (1 + fwd / decode), abs=0.01) and 0 < ceiling < 1 and kept > 0
    assert re.search(r"\d+ B/image", rows[0])
