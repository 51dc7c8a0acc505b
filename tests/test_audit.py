"""``relabel_maps.audit`` and ``relabel-maps audit``: evidence, label sources, flags, outputs, cleanlab.

Real photos and the packaged ImageNet teacher (``audit_photos``) check the flags end to end; maps
built by hand (an object = a class boosted over a region of the grid) check each rule exactly.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

import relabel_maps
from relabel_maps.audit import (
    NO_LABEL,
    UNKNOWN_LABEL,
    ClassResolver,
    Thresholds,
    audit,
    compute_evidence,
    load_labels,
)
from relabel_maps.audit.flags import object_groups
from relabel_maps.errors import InvalidArgumentError, RelabelMapsError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("PIL")

C, K, GRID = 10, 3, 8
FULL, LEFT, RIGHT = (0, GRID, 0, GRID), (0, GRID, 0, GRID // 2), (0, GRID, GRID // 2, GRID)


def write_maps(path: Path, images: dict[str, list[tuple[int, tuple[int, int, int, int], float]]], *, seed: int = 0,
               num_classes: int = C, k: int = K, grid: int = GRID, noise: float = 0.3) -> Path:
    """One map per key: logits ``N(0, noise)`` plus ``strength`` for each ``(class, region, strength)``
    over its region ``(y0, y1, x0, x1)``; top-``k`` stored with the exact log-sum-exp."""
    rng = np.random.default_rng(seed)
    names = [f"class{i}" for i in range(num_classes)]
    with relabel_maps.Writer(path, num_classes=num_classes, k=k, class_names=names, encoding="f32") as w:
        for key, objects in images.items():
            logits = rng.normal(0.0, noise, (num_classes, grid, grid))
            for cls, (y0, y1, x0, x1), strength in objects:
                logits[cls, y0:y1, x0:x1] += strength
            order = np.argsort(-logits, axis=0, kind="stable")[:k]
            scores = np.take_along_axis(logits, order, axis=0)
            top = logits.max(axis=0)
            lse = top + np.log(np.exp(logits - top).sum(axis=0))
            w.add(key, order, scores.astype(np.float32), lse=lse.astype(np.float32))
    return path


def write_images(root: Path, keys: list[str]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / key)
    return root


def clean_set(per_class: int = 4, classes: int = 6) -> dict[str, list]:
    """``per_class`` single-object images of each class, in folders named ``class<i>``."""
    return {f"class{c}/img{i}.png": [(c, FULL, 3.0)] for c in range(classes) for i in range(per_class)}


def table(path: Path) -> dict[str, dict]:
    return {row["key"]: row for row in pq.read_table(path).to_pylist()}


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, Path]:
    """Clean images plus one of each case: wrong label, two objects, one object with two classes,
    nothing visible; ImageFolder labels."""
    spec = clean_set()
    spec["class0/wrong.png"] = [(3, FULL, 3.0)]  # labelled class0, shows class3
    spec["class1/two.png"] = [(1, LEFT, 3.0), (4, RIGHT, 3.0)]  # two objects side by side
    spec["class2/breeds.png"] = [(2, FULL, 3.0), (7, FULL, 2.8)]  # one object, two close classes interleaved
    spec["class5/blank.png"] = []  # nothing the teacher knows
    maps = write_maps(tmp_path / "maps.rlm", spec)
    images = write_images(tmp_path / "images", list(spec))
    return maps, images


# ---------------------------------------------------------------------------------------------- evidence
@pytest.mark.parametrize("fill", [None, "zero", "topk", "uniform"])
def test_evidence_pooled_probabilities_equal_labelmap_pool(tmp_path: Path, fill: str | None) -> None:
    maps = relabel_maps.open(write_maps(tmp_path / "m.rlm", clean_set(2, 5) | {"x/two.png": [(1, LEFT, 2.0)]}))
    ms = [maps[key] for key in maps]
    labels = np.arange(len(ms)) % C
    ev = compute_evidence(ms, labels, fill=fill, keep_pooled=True)
    assert ev.pooled is not None
    for i, m in enumerate(ms):
        expected = m.pool(fill=fill or "uniform")
        np.testing.assert_allclose(ev.pooled[i], expected, rtol=0, atol=2e-7)
        order = np.argsort(-expected, kind="stable")[:5]
        np.testing.assert_allclose(ev.top_probs[i], expected[order], atol=2e-7)
        assert ev.p_label[i] == pytest.approx(expected[labels[i]], abs=2e-7)
        assert ev.label_rank[i] == int((expected > expected[labels[i]] + 1e-7).sum())
        probs = np.exp(m.scores - m.lse)  # exact per-location probabilities of the stored classes
        wins = (m.top1() == ev.top_classes[i, 0]) & (probs[0] >= 1 / np.sqrt(C))
        assert ev.top_shares[i][0] == pytest.approx(np.mean(wins))
        u = (1 - probs.sum(0)) / (C - K)
        label_map = np.where((m.indices == labels[i]).any(0), (probs * (m.indices == labels[i])).sum(0), u)
        assert ev.label_local_max[i] == pytest.approx(label_map.max(), abs=1e-6)
        assert ev.teacher_local_max[i] == pytest.approx(probs[0].max(), abs=1e-6)


def test_evidence_of_variable_k_probability_maps_and_mixed_shapes() -> None:
    rng = np.random.default_rng(3)
    ms = []
    for i, (h, w) in enumerate([(4, 4), (3, 5), (4, 4)]):
        p = rng.dirichlet(np.ones(C), size=h * w)
        idx = np.argsort(-p, axis=1)[:, :4]
        sc = np.take_along_axis(p, idx, axis=1)
        counts = rng.integers(1, 5, h * w)
        sc = np.where(np.arange(4) < counts[:, None], sc, 0.0)
        idx = np.where(np.arange(4) < counts[:, None], idx, 0)
        ms.append(relabel_maps.LabelMap.from_arrays(
            idx.T.reshape(4, h, w), sc.T.reshape(4, h, w), num_classes=C, score_kind="probabilities",
            counts=counts.reshape(h, w), key=f"k{i}"))  # fmt: skip
    ev = compute_evidence(ms, [1, NO_LABEL, 2], keep_pooled=True)
    assert ev.keys == ["k0", "k1", "k2"] and ev.fill == ["uniform"] * 3
    assert ev.pooled is not None
    for i, m in enumerate(ms):
        np.testing.assert_allclose(ev.pooled[i], m.pool(), atol=2e-7)
    assert np.isnan(ev.p_label[1]) and ev.label_rank[1] == -1 and np.isnan(ev.label_local_max[1])


def test_evidence_rejects_bad_arguments(tmp_path: Path) -> None:
    maps = relabel_maps.open(write_maps(tmp_path / "m.rlm", clean_set(1, 2)))
    ms = [maps[key] for key in maps]
    with pytest.raises(InvalidArgumentError):
        compute_evidence(ms, [0])
    with pytest.raises(InvalidArgumentError):
        compute_evidence(ms, [0, 1], top=0)
    with pytest.raises(InvalidArgumentError):
        compute_evidence(ms, [0, 1], fill="nearest")


# ---------------------------------------------------------------------------------------------- labels
def test_resolver_reads_indices_wordnet_ids_and_names() -> None:
    r = ClassResolver.from_metadata({"num_classes": 1000, "class_set": "imagenet-1k",
                                     "class_names": _imagenet_names()})  # fmt: skip
    assert r.index("285") == 285 and r.index(285) == 285
    assert r.index("n02124075") == 285 and r.index("n07920052") == 967
    assert r.index("Egyptian cat") == 285 == r.index("egyptian_cat") == r.index("  Egyptian   Cat ")
    assert r.index("notebook computer") == 681 and r.index("laptop") == 620
    assert r.name(681) == "notebook"
    for bad, why in [("crane", "ambiguous"), ("1000", "outside"), ("-3", "outside"), ("n99999999", "not one of"),
                     ("zebra crossing", "not a class")]:  # fmt: skip
        res = r.resolve(bad)
        assert res.index == UNKNOWN_LABEL and why in (res.problem or ""), (bad, res)
    assert set(r.problems()) == {"crane", "1000", "-3", "n99999999", "zebra crossing"}


def test_resolver_without_wordnet_ids_or_names_reports() -> None:
    r = ClassResolver(5)
    assert r.index("3") == 3
    assert r.index("n02124075") == UNKNOWN_LABEL and "no WordNet ids" in (r.resolve("n02124075").problem or "")
    assert r.index("cat") == UNKNOWN_LABEL and "no class names" in (r.resolve("cat").problem or "")


def _imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def test_label_sources_give_the_same_audit(tmp_path: Path, small: tuple[Path, Path]) -> None:
    maps, images = small
    keys = list(relabel_maps.open(maps))
    labels = {key: key.split("/")[0] for key in keys}
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "target"])
        w.writerows(labels.items())
    (tmp_path / "bare.csv").write_text("".join(f"{k},{v}\n" for k, v in labels.items()))
    pq.write_table(pa.table({"key": list(labels), "label": [int(v[5:]) for v in labels.values()]}),
                   tmp_path / "labels.parquet")  # fmt: skip
    image_struct = [{"path": k, "bytes": b""} for k in labels]
    pq.write_table(pa.table({"image": image_struct, "cls": list(labels.values())}), tmp_path / "hf.parquet")
    shards = tmp_path / "shards"
    shards.mkdir()
    for part, chunk in enumerate((keys[:10], keys[10:])):
        with tarfile.open(shards / f"part-{part}.tar", "w") as tf:
            for key in chunk:
                for ext, data in ((".png", (images / key).read_bytes()), (".cls", labels[key][5:].encode())):
                    info = tarfile.TarInfo(key.rsplit(".", 1)[0] + ext)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    sources = {
        "folder": load_labels(images),
        "csv": load_labels(tmp_path / "labels.csv", key_column="filename", label_column="target"),
        "bare-csv": load_labels(tmp_path / "bare.csv"),
        "parquet": load_labels(tmp_path / "labels.parquet"),
        "hf-parquet": load_labels(tmp_path / "hf.parquet"),
        "tar": load_labels(shards),
    }
    results = {name: audit(maps, src, tmp_path / name, gallery=5) for name, src in sources.items()}
    rows = {name: table(r.paths["table"]) for name, r in results.items()}
    flags = ("label", "mislabelled", "multi_object", "not_visible")
    for name, got in rows.items():
        assert {k: tuple(r[f] for f in flags) for k, r in got.items()} == {
            k: tuple(r[f] for f in flags) for k, r in rows["folder"].items()
        }, name
        assert results[name].summary["missing_maps"]["count"] in (None, 0)
    assert rows["folder"]["class0/wrong.png"]["label_given"] == "class0"
    assert rows["tar"]["class0/wrong.png"]["label_given"] == "0"
    # thumbnails: from the tree, from the tar shards; a CSV has none unless --images is given
    assert all(item.thumbnail for item in results["folder"].gallery)
    assert all(item.thumbnail for item in results["tar"].gallery)
    assert not any(item.thumbnail for item in results["csv"].gallery)
    with_images = audit(maps, load_labels(tmp_path / "bare.csv", images=images), tmp_path / "csv-img", gallery=5)
    assert all(item.thumbnail for item in with_images.gallery)


def test_label_source_errors(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "bad.csv").write_text("key,colour\na,red\n")
    (tmp_path / "one.csv").write_text("a\nb\n")
    for call in (
        lambda: load_labels(tmp_path / "missing"),
        lambda: load_labels(tmp_path / "x.json"),
        lambda: load_labels(tmp_path / "bad.csv"),
        lambda: load_labels(tmp_path / "one.csv"),
        lambda: load_labels(tmp_path / "bad.csv", label_column="nope"),
        lambda: load_labels(tmp_path, format="yaml"),
    ):
        with pytest.raises(RelabelMapsError):
            call()


# ---------------------------------------------------------------------------------------------- flags
def test_flags_on_constructed_maps(tmp_path: Path, small: tuple[Path, Path]) -> None:
    maps, images = small
    result = audit(maps, images, tmp_path / "out")
    rows = table(result.paths["table"])
    mislabelled = {k for k, r in rows.items() if r["mislabelled"]}
    multi = {k for k, r in rows.items() if r["multi_object"]}
    hidden = {k for k, r in rows.items() if r["not_visible"]}
    assert mislabelled == {"class0/wrong.png"}
    assert rows["class0/wrong.png"]["suggested"] == 3 and rows["class0/wrong.png"]["teacher_class"] == 3
    assert multi == {"class1/two.png"}
    assert sorted(rows["class1/two.png"]["objects"]) == [1, 4]
    assert sorted(rows["class1/two.png"]["real_labels"]) == [1, 4]
    assert rows["class2/breeds.png"]["objects"] == [2] and sorted(rows["class2/breeds.png"]["real_labels"]) == [2, 7]
    assert hidden == {"class5/blank.png"}
    for key, row in rows.items():
        assert row["label"] == int(key.split("/")[0][5:])
        assert (row["suspicion"] > 0.9) == (key in mislabelled), key
    real = json.loads(result.paths["real_labels"].read_text())
    assert real == {k: r["real_labels"] for k, r in rows.items()}
    counts = result.summary["counts"]
    assert (counts["images"], counts["mislabelled"], counts["multi_object"], counts["not_visible"]) == (28, 1, 1, 1)


def test_thresholds_chosen_from_data_and_overridden(tmp_path: Path, small: tuple[Path, Path]) -> None:
    maps, images = small
    result = audit(maps, images, tmp_path / "a", report=False)
    r = result.thresholds
    rows = table(result.paths["table"])
    agree = [row["label_local_max"] for row in rows.values() if row["teacher_class"] == row["label"]]
    assert r.weak == pytest.approx(np.sqrt(np.median(agree) / C), rel=0.03)  # 0.01-decade histogram bins
    selfconf = {c: [row["p_label"] for row in rows.values() if row["label"] == c] for c in range(C)}
    g = np.mean([p for ps in selfconf.values() for p in ps])
    for c, ps in selfconf.items():  # confident learning's per-class mean, shrunk with 5 images of the global mean
        assert r.confident[c] == pytest.approx((sum(ps) + 5 * g) / (len(ps) + 5), rel=1e-5)
    assert set(r.chosen_from_data) == {"confident", "weak"}
    strict = audit(maps, images, tmp_path / "b", report=False, thresholds=Thresholds(confident=0.99, weak=0.5))
    assert strict.thresholds.chosen_from_data == () and strict.summary["counts"]["mislabelled"] == 0
    assert strict.summary["counts"]["not_visible"] == 2  # the wrong one too: the teacher is never that sure
    wide = audit(maps, images, tmp_path / "c", report=False, thresholds=Thresholds(region=0.6))
    assert wide.summary["counts"]["multi_object"] == 0
    for bad in ({"weak": 1.5}, {"region": -0.1}, {"prior": -1}, {"confident": "high"}):
        with pytest.raises(InvalidArgumentError):
            Thresholds(**bad)  # type: ignore[arg-type]


def test_object_groups_link_chains_of_similar_maps() -> None:
    sim = np.eye(4, dtype=np.float32)[None].repeat(2, axis=0)
    sim[0, 0, 1] = sim[0, 1, 0] = 0.5  # 0-1 linked, 1-3 linked: one group {0, 1, 3}; 2 alone
    sim[0, 1, 3] = sim[0, 3, 1] = 0.4
    np.testing.assert_array_equal(object_groups(sim, 0.3), [[0, 0, 2, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(object_groups(sim, 0.45), [[0, 0, 2, 3], [0, 1, 2, 3]])


def test_unknown_and_missing_labels_are_reported_not_guessed(tmp_path: Path) -> None:
    spec = clean_set(3, 3)
    maps = write_maps(tmp_path / "m.rlm", spec)
    keys = list(spec)
    lines = [f"{k},{k.split('/')[0]}" for k in keys[:-2]] + [f"{keys[-2]},zebra", "absent.png,class1"]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    result = audit(maps, tmp_path / "l.csv", tmp_path / "out")
    rows = table(result.paths["table"])
    assert rows[keys[-2]]["label"] == UNKNOWN_LABEL and rows[keys[-2]]["unknown_label"]
    assert rows[keys[-2]]["label_given"] == "zebra" and rows[keys[-2]]["p_label"] is None
    assert rows[keys[-1]]["label"] == NO_LABEL and rows[keys[-1]]["label_given"] is None
    s = result.summary
    assert s["unknown_labels"] == [{"label": "zebra", "images": 1, "reason": "'zebra' is not a class of the teacher"}]
    assert s["missing_maps"] == {"count": 1, "examples": ["absent.png"]}
    assert (s["counts"]["unknown_label"], s["counts"]["unlabelled"], s["counts"]["labelled"]) == (1, 1, 7)


# ---------------------------------------------------------------------------------------------- outputs
def test_workers_chunks_and_table_formats_give_identical_results(tmp_path: Path, small: tuple[Path, Path]) -> None:
    maps, images = small
    one = audit(maps, images, tmp_path / "one", workers=1, chunk=512, report=False)
    many = audit(maps, images, tmp_path / "many", workers=2, chunk=3, report=False)
    assert pq.read_table(one.paths["table"]).equals(pq.read_table(many.paths["table"]))
    assert one.paths["real_labels"].read_bytes() == many.paths["real_labels"].read_bytes()
    as_csv = audit(maps, images, tmp_path / "csv", table="rows.csv", report=False)
    with open(as_csv.paths["table"], newline="") as fh:
        csv_rows = {r["key"]: r for r in csv.DictReader(fh)}
    for key, row in table(one.paths["table"]).items():
        got = csv_rows[key]
        assert json.loads(got["objects"]) == row["objects"] and json.loads(got["top_classes"]) == row["top_classes"]
        assert int(got["mislabelled"]) == row["mislabelled"] and float(got["p_label"]) == pytest.approx(row["p_label"])
    assert not list((tmp_path / "one").glob(".*"))  # no working files left behind


def test_summary_counts_confusions_both_ways(tmp_path: Path) -> None:
    spec = clean_set(4, 4)
    for i in range(3):  # class0 images that look like class1, and one the other way: a duplicate pair
        spec[f"class0/dup{i}.png"] = [(1, FULL, 3.0)]
    spec["class1/dup.png"] = [(0, FULL, 3.0)]
    spec["class2/x.png"] = [(3, FULL, 3.0)]
    maps = write_maps(tmp_path / "m.rlm", spec)
    result = audit(maps, write_images(tmp_path / "img", list(spec)), tmp_path / "out", report=False)
    confusions = result.summary["classes"]["confusions"]
    assert [(c["label"], c["teacher"], c["count"], c["reverse"]) for c in confusions] == [
        (0, 1, 3, 1), (1, 0, 1, 3), (2, 3, 1, 0)]  # fmt: skip
    per_class = {c["class"]: c for c in result.summary["classes"]["per_class"]}
    assert per_class[0]["images"] == 7 and per_class[0]["agreement"] == pytest.approx(4 / 7)
    assert result.summary["classes"]["per_class"][0]["class"] == 0  # lowest agreement first
    saved = json.loads(result.paths["summary"].read_text())
    assert saved["counts"] == result.summary["counts"] and saved["outputs"]["table"].endswith("audit.parquet")


def test_report_is_self_contained_sorted_and_escaped(tmp_path: Path) -> None:
    spec = clean_set(3, 4)
    spec["class0/<b>&x.png"] = [(2, FULL, 3.0)]
    spec["class1/two.png"] = [(1, LEFT, 3.0), (3, RIGHT, 3.0)]
    spec["class3/wrong.png"] = [(0, FULL, 3.0)]
    maps = write_maps(tmp_path / "m.rlm", spec)
    result = audit(maps, write_images(tmp_path / "img", list(spec)), tmp_path / "out", gallery=2)
    page = result.paths["report"].read_text()
    assert page.count('<div class="card"') == 2 == len(result.gallery)
    assert {item.key for item in result.gallery} == {"class0/<b>&x.png", "class3/wrong.png"}  # the two mislabelled
    assert "class0/&lt;b&gt;&amp;x.png" in page and "<b>&x" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing loaded from elsewhere
    assert page.count("data:image/jpeg;base64,") == 2 and page.count("data:image/png;base64,") == 2
    suspicion = [float(x) for x in re.findall(r'data-suspicion="([0-9.]+)"', page)]
    assert suspicion == sorted(suspicion, reverse=True)
    assert "The 2 most suspicious of 3 flagged images" in page


def test_audit_rejects_bad_options(tmp_path: Path, small: tuple[Path, Path]) -> None:
    maps, images = small
    for kwargs in ({"table": "rows.xlsx"}, {"chunk": 0}, {"gallery": -1}, {"fill": "nearest"}):
        with pytest.raises(InvalidArgumentError):
            audit(maps, images, tmp_path / "out", **kwargs)  # type: ignore[arg-type]


def test_fewer_classes_than_top_and_an_empty_dataset(tmp_path: Path) -> None:
    spec = {f"class{c}/i{i}.png": [(c, FULL, 3.0)] for c in range(3) for i in range(3)}
    spec["class0/w.png"] = [(2, FULL, 3.0)]
    maps = write_maps(tmp_path / "m.rlm", spec, num_classes=3, k=2)
    rows = table(audit(maps, write_images(tmp_path / "img", list(spec)), tmp_path / "o").paths["table"])
    assert rows["class0/w.png"]["top_classes"] == [2, 1, 0] and rows["class0/w.png"]["mislabelled"]
    assert sum(r["mislabelled"] for r in rows.values()) == 1
    with relabel_maps.Writer(tmp_path / "empty.rlm", num_classes=5, k=2):
        pass
    result = audit(tmp_path / "empty.rlm", tmp_path / "img", tmp_path / "e")
    assert result.summary["counts"]["images"] == 0 and pq.read_table(result.paths["table"]).num_rows == 0
    assert 'id="cards"></div>' in result.paths["report"].read_text()
    with pytest.raises(InvalidArgumentError):
        compute_evidence([relabel_maps.open(maps)["class0/w.png"]], [7])


# ---------------------------------------------------------------------------------------------- cleanlab
def test_cleanlab_comparison_explains_multi_object_images(tmp_path: Path) -> None:
    pytest.importorskip("cleanlab")
    spec = clean_set(8, 4)
    for c in range(4):
        spec[f"class{c}/wrong.png"] = [((c + 1) % 4, FULL, 3.0)]
        # the label's object on the top quarter, a more confident second object below it
        spec[f"class{c}/small.png"] = [(c, (0, 2, 0, GRID), 3.0), ((c + 2) % 4, (2, GRID, 0, GRID), 4.0)]
    maps = write_maps(tmp_path / "m.rlm", spec, noise=0.5)
    result = audit(maps, write_images(tmp_path / "img", list(spec)), tmp_path / "out", cleanlab=True)
    comp = result.comparison
    assert comp is not None and comp.images == len(spec)
    rows = table(result.paths["table"])
    assert {k for k, r in rows.items() if r["mislabelled"]} == {f"class{c}/wrong.png" for c in range(4)}
    assert comp.both == 4 and comp.audit_only == 0
    differ = {d["key"]: d for d in comp.differences}
    assert comp.cleanlab_only == len(differ) == 4  # cleanlab also calls the two-object images issues
    for key, d in differ.items():
        assert key.endswith("small.png") and d["cleanlab"] and not d["audit"]
        assert d["reason"].startswith("multi-object:") and "multi_object" in d["flags"]
    assert comp.agreement == pytest.approx((comp.both + comp.neither) / comp.images)
    assert result.summary["cleanlab"]["differences"] == comp.differences
    assert "Audit vs cleanlab" in result.paths["report"].read_text()


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_audit(tmp_path: Path, small: tuple[Path, Path]) -> None:
    click_testing = pytest.importorskip("click.testing")
    from relabel_maps_cli.main import main

    maps, images = small
    runner = click_testing.CliRunner()
    res = runner.invoke(main, ["audit", str(maps), "--labels", str(images), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "likely mislabelled" in res.output and "class0/wrong.png" in res.output
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"audit.parquet", "summary.json", "real_labels.json",
                                                           "report.html"}  # fmt: skip
    res = runner.invoke(main, ["audit", str(maps), "--labels", str(images), "--out", str(tmp_path / "j"), "--json",
                               "--no-report", "--table", "t.csv", "--weak", "0.2", "--region", "0.3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["thresholds"]["weak"] == 0.2 and summary["thresholds"]["region"] == 0.3
    assert summary["outputs"]["table"].endswith("t.csv") and "report" not in summary["outputs"]
    for args in (["--labels", str(tmp_path / "none")], ["--labels", str(images), "--table", "t.txt"]):
        res = runner.invoke(main, ["audit", str(maps), "--out", str(tmp_path / "e"), *args])
        assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output


# ---------------------------------------------------------------------------------------------- real photos
@pytest.mark.slow
def test_real_photos_flags(tmp_path: Path) -> None:
    from audit_photos import CORRECT, TWO_OBJECTS, WRONG, WRONG_UNSURE, photo_set

    photos = photo_set()
    result = audit(photos.maps, photos.images, tmp_path / "out")
    rows = table(result.paths["table"])
    assert set(rows) == set(CORRECT) | set(WRONG) | set(WRONG_UNSURE)
    mislabelled = {k for k, r in rows.items() if r["mislabelled"]}
    assert set(WRONG) <= mislabelled and not mislabelled & set(CORRECT)
    for key in WRONG_UNSURE:
        assert rows[key]["mislabelled"] or rows[key]["not_visible"]
    assert not any(rows[k]["not_visible"] for k in CORRECT)
    assert rows[TWO_OBJECTS]["multi_object"]
    assert set(rows[TWO_OBJECTS]["objects"]) == {285, 967}  # Egyptian cat, espresso
    assert {285, 967} <= set(rows[TWO_OBJECTS]["real_labels"])
    for single in ("n02124075/chelsea.jpg", "n07920052/coffee.jpg"):
        assert not rows[single]["multi_object"] and rows[single]["teacher_class"] == rows[single]["label"]
    assert rows["n07920052/chelsea.jpg"]["suggested"] == 285 and rows["n02124075/coffee.jpg"]["suggested"] == 967
    flagged = [item.key for item in result.gallery]
    assert set(flagged) == {k for k, r in rows.items() if r["mislabelled"] or r["multi_object"] or r["not_visible"]}
    assert all(item.thumbnail and item.overlay for item in result.gallery)


@pytest.mark.slow
def test_real_photos_cleanlab_comparison(tmp_path: Path) -> None:
    pytest.importorskip("cleanlab")
    from audit_photos import WRONG, photo_set

    photos = photo_set()
    result = audit(photos.maps, photos.images, tmp_path / "out", cleanlab=True, report=False)
    comp = result.comparison
    assert comp is not None and comp.images == 9
    # measured: both flag the three clear cases; only the audit flags the astronaut under "tench"
    # (its teacher class, football helmet, is just above its confidence threshold); agreement 8/9
    assert comp.both == 3 and comp.cleanlab_only == 0
    assert set(WRONG).isdisjoint(d["key"] for d in comp.differences)
    for d in comp.differences:
        assert d["reason"] and d["audit"] != d["cleanlab"]
    assert comp.agreement == pytest.approx(8 / 9) or comp.agreement == pytest.approx(1.0)
