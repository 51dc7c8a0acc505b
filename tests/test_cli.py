"""The ``relabel-maps`` command line: every command, success and error paths (click's CliRunner)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

click_testing = pytest.importorskip("click.testing")
pytest.importorskip("rich")

import relabel_maps  # noqa: E402
from relabel_maps_cli.main import COMMANDS, main  # noqa: E402

NUM_CLASSES = 40
NAMES = [f"class-{i}" for i in range(NUM_CLASSES)]


def _random_map(rng: np.random.Generator, k: int = 3, h: int = 5, w: int = 6):
    idx = np.stack([rng.choice(NUM_CLASSES, size=k, replace=False) for _ in range(h * w)], axis=-1).reshape(k, h, w)
    scores = -np.sort(-rng.normal(0.0, 3.0, size=(k, h, w)).astype(np.float32), axis=0)
    return idx, scores


def make_dataset(path, n: int = 8, *, seed: int = 0, max_records: int | None = 3, names=NAMES, encoding: str = "f16"):
    rng = np.random.default_rng(seed)
    with relabel_maps.Writer(
        path, num_classes=NUM_CLASSES, k=3, encoding=encoding, class_names=names, class_set="toy-40",
        teacher={"name": "toy"}, max_records=max_records,
    ) as w:
        for i in range(n):
            w.add(f"dir/img{i:02d}.jpg", *_random_map(rng))
    return str(path)


@pytest.fixture()
def runner():
    return click_testing.CliRunner()


@pytest.fixture()
def dataset(tmp_path):
    return make_dataset(tmp_path / "maps")


@pytest.fixture()
def single(tmp_path):
    return make_dataset(tmp_path / "one.rlm", max_records=None)


def run(runner, *args, ok: bool = True):
    result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


# ------------------------------------------------------------------------------------------ group
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_examples(runner, name):
    result = runner.invoke(main, [name, "--help"])
    if name == "annotate" and result.exit_code != 0:
        pytest.skip("annotate command not available")
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output and "relabel-maps " + name in result.output


def test_group_help_lists_commands(runner):
    result = run(runner, "--help")
    for name in ("info", "verify", "show", "pool", "convert", "merge", "export", "push", "pull"):
        assert name in result.output


def test_group_help_does_not_import_heavy_modules():
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from relabel_maps_cli.main import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
        "print(sorted(m for m in ('torch', 'huggingface_hub', 'pyarrow', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------- info
def test_info_tables(runner, dataset):
    out = run(runner, "info", dataset).output
    assert "records" in out and "8" in out
    assert "compression ratio" in out and "top-1 classes" in out
    assert "maps-00001-of-00003.rlm" in out


def test_info_json_matches_library(runner, dataset):
    data = json.loads(run(runner, "info", dataset, "--json", "--top", "100").output)
    assert data["records"] == 8
    assert data["metadata"]["num_classes"] == NUM_CLASSES and data["metadata"]["class_names"] == "40 names"
    assert [f["file"] for f in data["files"]] == ["maps.index.json"] + [f"maps-0000{i}-of-00003.rlm" for i in (1, 2, 3)]
    assert sum(f.get("records", 0) for f in data["files"]) == 8
    total = sum(os.path.getsize(os.path.join(dataset, f["file"])) for f in data["files"])
    assert data["total_bytes"] == total
    assert data["bytes_per_image"] == pytest.approx(total / 8)
    raw = 2 * 3 * 5 * 6 * 4
    assert data["raw_f32_bytes_per_image"] == pytest.approx(raw)
    assert data["compression_ratio"] == pytest.approx(raw * 8 / total)
    # the histogram counts every location's top-1 class
    hist = np.zeros(NUM_CLASSES, int)
    with relabel_maps.open(dataset) as maps:
        for key in maps:
            hist += np.bincount(maps[key].indices[0].ravel(), minlength=NUM_CLASSES)
    got = {row["class"]: row["locations"] for row in data["top1_histogram"]}
    assert got == {c: int(n) for c, n in enumerate(hist) if n}
    assert sum(row["share"] for row in data["top1_histogram"]) == pytest.approx(1.0)
    assert data["top1_histogram"][0]["name"] == NAMES[data["top1_histogram"][0]["class"]]


def test_info_sample_and_single_file(runner, single):
    data = json.loads(run(runner, "info", single, "--json", "--sample", "3").output)
    assert data["records"] == 8 and data["scanned_records"] == 3
    assert data["files"] == [{"file": "one.rlm", "bytes": os.path.getsize(single), "records": 8}]


def test_info_missing_path(runner, tmp_path):
    result = run(runner, "info", tmp_path / "nope", ok=False)
    assert result.exit_code == 1
    assert "no such file or folder" in result.output and "Traceback" not in result.output


def test_info_corrupt_file_is_one_line(runner, tmp_path):
    bad = tmp_path / "bad.rlm"
    bad.write_bytes(b"not a label map file at all" * 10)
    result = run(runner, "info", bad, ok=False)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1


def test_debug_flag_shows_traceback(runner, tmp_path):
    bad = tmp_path / "bad.rlm"
    bad.write_bytes(b"x" * 200)
    result = runner.invoke(main, ["--debug", "info", str(bad)])
    assert result.exit_code != 0
    assert isinstance(result.exception, relabel_maps.FormatError)


# ----------------------------------------------------------------------------------------- verify
def test_verify_ok(runner, dataset, single):
    assert "OK: 8 records in 3 file(s)" in run(runner, "verify", dataset).output
    data = json.loads(run(runner, "verify", single, "--json").output)
    assert data["ok"] is True and data["records"] == 8 and data["problems"] == []


def _corrupt_last_record(path: str) -> None:
    with relabel_maps.open(path) as maps:
        key = list(maps)[-1]
        reader = maps.shard(len(maps.shard_names) - 1) if hasattr(maps, "shard") else maps
        i = list(reader).index(key)
        offset = reader.record_offset(i) + reader.record_nbytes(i) - 3
        file = reader.path
    with open(file, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_verify_reports_bad_record_and_shard(runner, dataset):
    _corrupt_last_record(dataset)
    result = run(runner, "verify", dataset, ok=False)
    assert result.exit_code == 1
    assert "maps-00003-of-00003.rlm" in result.output and "dir/img07.jpg" in result.output
    data = json.loads(run(runner, "verify", dataset, "--json", ok=False).output)
    assert data["ok"] is False
    assert any(p["where"] == "maps-00003-of-00003.rlm" and "img07" in p["problem"] for p in data["problems"])


def test_verify_truncated_shard_and_missing_shard(runner, dataset):
    shard = os.path.join(dataset, "maps-00002-of-00003.rlm")
    with open(shard, "r+b") as fh:
        fh.truncate(os.path.getsize(shard) - 10)
    result = run(runner, "verify", dataset, ok=False)
    assert result.exit_code == 1 and "maps-00002-of-00003.rlm" in result.output
    os.remove(shard)
    result = run(runner, "verify", dataset, ok=False)
    assert result.exit_code == 1 and "missing" in result.output


def test_verify_replaced_shard_sha_and_duplicate_keys(runner, dataset):
    import shutil

    shutil.copyfile(os.path.join(dataset, "maps-00001-of-00003.rlm"), os.path.join(dataset, "maps-00002-of-00003.rlm"))
    data = json.loads(run(runner, "verify", dataset, "--json", ok=False).output)
    assert data["ok"] is False
    problem = {"where": "maps-00002-of-00003.rlm", "problem": "SHA-256 differs from the one in the index"}
    assert problem in data["problems"]


def test_verify_missing_path(runner, tmp_path):
    result = run(runner, "verify", tmp_path / "nope.rlm", ok=False)
    assert result.exit_code == 1 and "no such file" in result.output


# ------------------------------------------------------------------------------------------- pool
def test_pool_json_equals_library(runner, dataset):
    args = ("pool", dataset, "dir/img03.jpg", "--box", "0.1,0.2,0.7,0.9", "--flip", "--top", "4", "--json")
    data = json.loads(run(runner, *args).output)
    with relabel_maps.open(dataset) as maps:
        probs = maps["dir/img03.jpg"].pool((0.1, 0.2, 0.7, 0.9), flip=True)
    order = np.argsort(-probs, kind="stable")[:4]
    assert [r["class"] for r in data["top"]] == order.tolist()
    assert [r["prob"] for r in data["top"]] == pytest.approx(probs[order].tolist(), abs=1e-7)
    assert data["top"][0]["name"] == NAMES[order[0]] and data["fill"] == "zero" and data["flip"] is True


def test_pool_size_fill_temperature_and_table(runner, dataset):
    args = ("pool", dataset, "dir/img01.jpg", "--size", "2", "--fill", "topk", "--temperature", "2", "--json")
    data = json.loads(run(runner, *args).output)
    with relabel_maps.open(dataset) as maps:
        probs = maps["dir/img01.jpg"].pool((0, 0, 1, 1), size=2, fill="topk", temperature=2.0)
    assert len(data["cells"]) == 4
    cell = data["cells"][3]
    assert (cell["row"], cell["col"]) == (1, 1)
    assert cell["top"][0]["prob"] == pytest.approx(float(probs[:, 1, 1].max()), abs=1e-7)
    out = run(runner, "pool", dataset, "dir/img01.jpg").output
    assert "rank" in out and "class-" in out


def test_pool_compat_mode(runner, dataset):
    from relabel_maps.pooling import relabel_compat

    args = ("pool", dataset, "dir/img02.jpg", "--box", "0.1,0.2,0.6,0.8", "--compat", "--json")
    data = json.loads(run(runner, *args).output)
    with relabel_maps.open(dataset) as maps:
        probs = relabel_compat(maps["dir/img02.jpg"], (0.2, 0.1, 0.8, 0.6))
    assert data["fill"] == "compat"
    assert data["top"][0]["class"] == int(np.argmax(probs))
    assert data["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-7)
    result = run(runner, "pool", dataset, "dir/img02.jpg", "--compat", "--size", "2", ok=False)
    assert result.exit_code == 2


def test_pool_with_a_class_map_gives_the_label_over_your_classes(runner, dataset, tmp_path):
    from relabel_maps.classmap import load_class_map

    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("teacher,dataset\n0-9,low\n10-19,mid\nclass-20,high\n")
    args = ("pool", dataset, "dir/img04.jpg", "--box", "0.2,0.1,0.9,0.8", "--class-map", str(csv_path))
    for leftover in ("renormalize", "other"):
        data = json.loads(run(runner, *args, "--leftover", leftover, "--json").output)
        with relabel_maps.open(dataset) as maps:
            cmap = load_class_map(csv_path, metadata=maps.metadata, leftover=leftover)
            probs = maps["dir/img04.jpg"].pool((0.2, 0.1, 0.9, 0.8), class_map=cmap)
        assert len(probs) == (3 if leftover == "renormalize" else 4)
        order = np.argsort(-probs, kind="stable")[:5]
        assert [r["name"] for r in data["top"]] == [cmap.names[i] for i in order]
        assert [r["prob"] for r in data["top"]] == pytest.approx(probs[order].tolist(), abs=1e-7)
        assert data["class_map"] == {"path": str(csv_path), "leftover": leftover}
    table = run(runner, *args).output
    assert "low" in table and "mid" in table and "high" in table
    assert run(runner, "pool", dataset, "dir/img04.jpg", "--leftover", "other", ok=False).exit_code == 2
    assert run(runner, *args, "--compat", ok=False).exit_code == 2
    (tmp_path / "bad.csv").write_text("teacher,dataset\nno such class,x\n")
    bad = run(runner, "pool", dataset, "dir/img04.jpg", "--class-map", str(tmp_path / "bad.csv"), ok=False)
    assert bad.exit_code == 1 and "bad.csv" in bad.output and len(bad.output.strip().splitlines()) == 1


@pytest.mark.parametrize("box", ["1,1,0,0", "0,0,1", "a,b,c,d", "0,0,nan,1", "0.5,0,0.5,1"])
def test_pool_bad_box(runner, dataset, box):
    result = run(runner, "pool", dataset, "dir/img01.jpg", "--box", box, ok=False)
    assert result.exit_code == 2 and "--box" in result.output and "Traceback" not in result.output


def test_pool_out_of_range_box_is_library_error(runner, dataset):
    # accepted by the parser; whatever the pooler decides, there is no traceback
    result = run(runner, "pool", dataset, "dir/img01.jpg", "--box", "-5,-5,-4,-4", ok=False)
    assert "Traceback" not in result.output


def test_pool_box_outside_the_frame_is_allowed_with_a_note(runner, dataset):
    result = run(runner, "pool", dataset, "dir/img01.jpg", "--box", "0.5,0.5,1.5,1.5")
    assert "extends outside the teacher's frame" in result.stderr
    inside = run(runner, "pool", dataset, "dir/img01.jpg", "--box", "0.5,0.5,1,1")
    assert "outside" not in inside.stderr


def test_pool_grid_prints_one_table_with_a_row_per_cell(runner, dataset):
    out = run(runner, "pool", dataset, "dir/img01.jpg", "--size", "4", "--top", "2").output
    assert out.count("4x4 cells") == 1
    lines = out.splitlines()
    for r in range(4):
        for c in range(4):
            assert sum(line.strip("│ ").startswith(f"{r},{c} ") for line in lines) == 1, (r, c)


def test_keys_lists_filters_and_counts(runner, dataset):
    with relabel_maps.open(dataset) as maps:
        everything = list(maps)
    assert run(runner, "keys", dataset).output.splitlines() == everything
    picked = run(runner, "keys", dataset, "--glob", "dir/img0[12].jpg").output.splitlines()
    assert picked == ["dir/img01.jpg", "dir/img02.jpg"]
    assert run(runner, "keys", dataset, "--glob", "*", "--count").output.strip() == str(len(everything))
    assert json.loads(run(runner, "keys", dataset, "--glob", "nothing*", "--json").output) == []


def test_pool_unknown_key(runner, dataset):
    result = run(runner, "pool", dataset, "no/such.jpg", ok=False)
    assert result.exit_code == 1 and "no/such.jpg" in result.output and "not found" in result.output


def test_pool_bad_fill_for_logits_without_lse(runner, dataset):
    result = run(runner, "pool", dataset, "dir/img01.jpg", "--fill", "uniform", ok=False)
    assert result.exit_code == 1 and "lse" in result.output


# ------------------------------------------------------------------------------------------- show
def _synthetic_two_class_map(tmp_path):
    k, h, w = 2, 4, 6
    idx = np.zeros((k, h, w), np.int64)
    idx[0, :, :3], idx[1, :, :3] = 7, 1  # left half: class 7
    idx[0, :, 3:], idx[1, :, 3:] = 21, 1  # right half: class 21
    scores = np.stack([np.full((h, w), 5.0), np.full((h, w), 1.0)]).astype(np.float32)
    path = tmp_path / "two.rlm"
    with relabel_maps.Writer(path, num_classes=NUM_CLASSES, k=k, encoding="f32", class_names=NAMES) as wr:
        wr.add("two", idx, scores)
    return str(path)


def test_show_png_size_and_colours(runner, tmp_path):
    from PIL import Image

    from relabel_maps_cli.show import MARGIN, TITLE_H, canvas_size

    path = _synthetic_two_class_map(tmp_path)
    out = tmp_path / "two.png"
    result = run(runner, "show", path, "two", "--out", out, "--panel", "120")
    assert out.exists() and "wrote" in result.output
    img = Image.open(out).convert("RGB")
    assert img.size == canvas_size(120, with_image=False)
    # the class map panel is the first panel; 6x4 grid fitted into 120x120 -> 120x80, centred
    x0, y0 = MARGIN, MARGIN + TITLE_H + (120 - 80) // 2
    left = img.getpixel((x0 + 20, y0 + 40))
    right = img.getpixel((x0 + 100, y0 + 40))
    assert left != right
    assert img.getpixel((x0 + 5, y0 + 5)) == left and img.getpixel((x0 + 115, y0 + 75)) == right
    assert left != (255, 255, 255) and right != (255, 255, 255)


def test_show_with_image(runner, tmp_path):
    from PIL import Image

    from relabel_maps_cli.show import canvas_size

    path = _synthetic_two_class_map(tmp_path)
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (90, 60), (10, 200, 30)).save(photo)
    out = tmp_path / "with.png"
    run(runner, "show", path, "two", "--image", photo, "--out", out, "--panel", "100")
    assert Image.open(out).size == canvas_size(100, with_image=True)


def test_show_errors(runner, tmp_path, dataset):
    out = tmp_path / "x.png"
    assert run(runner, "show", dataset, "nokey", "--out", out, ok=False).exit_code == 1
    assert run(runner, "show", tmp_path / "missing", "k", "--out", out, ok=False).exit_code == 1
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"not an image")
    result = run(runner, "show", dataset, "dir/img00.jpg", "--image", bad_image, "--out", out, ok=False)
    assert result.exit_code == 1 and "cannot read image" in result.output
    assert not out.exists()


def test_show_colours_are_distinct():
    from relabel_maps_cli.show import class_colours

    colours = class_colours(list(range(40)))
    assert len(set(colours.values())) == 40


# ----------------------------------------------------------------------------------------- export
def test_export_parquet_cli(runner, dataset, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "summary.parquet"
    result = run(runner, "export", dataset, "--parquet", out, "--top", "3")
    assert "8 rows" in result.output
    table = pq.read_table(out)
    assert table.num_rows == 8 and table.column("key").to_pylist()[0] == "dir/img00.jpg"
    assert len(table.column("top_classes").to_pylist()[0]) == 3


def test_export_missing_input(runner, tmp_path):
    result = run(runner, "export", tmp_path / "nope", "--parquet", tmp_path / "x.parquet", ok=False)
    assert result.exit_code == 1


# ------------------------------------------------------------------------------------------ merge
def test_merge_cli_and_duplicates(runner, tmp_path):
    a = make_dataset(tmp_path / "a", n=4, seed=1)
    b = make_dataset(tmp_path / "b", n=6, seed=2)  # keys img00..img03 collide with a
    out = tmp_path / "merged"
    result = run(runner, "merge", a, b, "--out", out, ok=False)
    assert result.exit_code == 1 and "--on-duplicate" in result.output
    assert not out.exists()
    result = run(runner, "merge", a, b, "--out", out, "--on-duplicate", "last")
    assert "6 records" in result.output
    with relabel_maps.open(out) as merged, relabel_maps.open(b) as mb:
        assert len(merged) == 6 and merged["dir/img00.jpg"] == mb["dir/img00.jpg"]
    assert "OK" in run(runner, "verify", out).output


def test_merge_missing_input(runner, tmp_path):
    result = run(runner, "merge", tmp_path / "nope", "--out", tmp_path / "o", ok=False)
    assert result.exit_code == 1 and "no such file" in result.output


# ---------------------------------------------------------------------------------------- convert
def test_convert_cli_missing_and_empty(runner, tmp_path):
    result = run(runner, "convert", tmp_path / "nope", tmp_path / "out", ok=False)
    assert result.exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(runner, "convert", empty, tmp_path / "out", ok=False)
    assert result.exit_code == 1 and "no convertible" in result.output


# ------------------------------------------------------------------------------------ push / pull
@pytest.mark.parametrize("repo", ["no-slash", "a/b/c", "bad--name/x", "owner/.hidden", "owner/name.git", "ow ner/x"])
def test_push_and_pull_bad_repo_id(runner, dataset, repo):
    result = run(runner, "push", dataset, repo, ok=False)
    assert result.exit_code == 2 and "repo id" in result.output
    result = run(runner, "pull", repo, ok=False)
    assert result.exit_code == 2 and "repo id" in result.output


# ------------------------------------------------------------------------------------ error policy
def test_unexpected_error_is_one_line_unless_debug(runner, dataset, monkeypatch):
    import relabel_maps.export as export_mod

    def boom(*a, **k):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(export_mod, "export_parquet", boom)
    result = runner.invoke(main, ["export", dataset, "--parquet", "x.parquet"])
    assert result.exit_code == 1
    expected = "Error: unexpected RuntimeError: something broke (run with --debug for the traceback)"
    assert result.output.strip() == expected
    result = runner.invoke(main, ["--debug", "export", dataset, "--parquet", "x.parquet"])
    assert isinstance(result.exception, RuntimeError)


def test_folder_of_files_without_index(runner, tmp_path):
    folder = tmp_path / "loose"
    folder.mkdir()
    make_dataset(folder / "a.rlm", n=2, max_records=None, seed=1)
    rng = np.random.default_rng(9)
    with relabel_maps.Writer(folder / "b.rlm", num_classes=NUM_CLASSES, k=3, encoding="f16", class_names=NAMES,
                             class_set="toy-40", teacher={"name": "toy"}) as w:
        w.add("other.jpg", *_random_map(rng))
    assert "OK: 3 records in 2 file(s)" in run(runner, "verify", folder).output
    data = json.loads(run(runner, "info", folder, "--json").output)
    assert data["records"] == 3 and [f["file"] for f in data["files"]] == ["a.rlm", "b.rlm"]
    run(runner, "merge", folder, "--out", tmp_path / "indexed")
    assert sorted(os.listdir(tmp_path / "indexed"))[-1] == "indexed.index.json"
