"""Training from tar shards and Hugging Face datasets: a WebDataset pipeline (:class:`LabelMapStage`),
a ``wids`` dataset and a ``datasets.Dataset`` each give the labels ``LabelMapDataset`` gives over a
folder of the same images with the same crops; maps made from one layout serve the others through
the key rules of :mod:`relabel_maps.samplekeys`."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
wds = pytest.importorskip("webdataset")
pytest.importorskip("pyarrow")
pytest.importorskip("skimage")

import shard_photos as sp  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

import relabel_maps  # noqa: E402
from relabel_maps.annotate import annotate, load_teacher  # noqa: E402
from relabel_maps.errors import InvalidArgumentError, MissingKeyError  # noqa: E402
from relabel_maps.torch import (  # noqa: E402
    HFImages,
    LabelMapDataset,
    LabelMapStage,
    RandomHorizontalFlipWithBox,
    RandomResizedCropWithBox,
    ShardImages,
    collate_label_maps,
    dataset_key,
    folder_key_without_extension,
    image_folder_key,
    parquet_keys,
)

NC, SIZE = 10, 64
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _fixed() -> v2.Compose:
    """Deterministic crops that move the box: centre crop, resize, mirror."""
    return v2.Compose([v2.CenterCrop(240), v2.Resize(48), RandomHorizontalFlipWithBox(p=1.0), v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_sources")
    files = sp.photos()
    keys = list(files)
    folder = sp.write_folder(root / "folder", files)
    shards = [sp.write_tar(root / "shards" / f"train-{i:04d}.tar",
                           sp.good_members({k: files[k] for k in keys[i::2]}, label=i)) for i in range(2)]
    parquet = [sp.write_parquet(root / "parquet" / f"train-{i:05d}-of-00002.parquet",
                                sp.image_rows({k: files[k] for k in keys[i::2]}), row_group_size=2,
                                label=[i] * len(keys[i::2])) for i in range(2)]
    teacher = load_teacher("resnet18", pretrained=False, num_classes=NC, input_size=SIZE)
    tar_maps = annotate(root / "shards", root / "tar.rlm", teacher, k=4, batch_size=4).outputs[0]
    pq_maps = annotate(root / "parquet", root / "pq.rlm", teacher, k=4, batch_size=4).outputs[0]
    return {"root": root, "files": files, "folder": folder, "shards": shards, "parquet": parquet,
            "tar_maps": tar_maps, "pq_maps": pq_maps}


def _folder_labels(data, maps, key_fn, transform) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The reference: LabelMapDataset over an ImageFolder of the same files."""
    ds = LabelMapDataset(ImageFolder(data["folder"]), maps, key_fn=key_fn, transform=transform)
    return {key_fn(ds.dataset, i): ds[i] for i in range(len(ds))}


def _assert_same(got: dict, ref: dict) -> None:
    assert sorted(got) == sorted(ref)
    for key, (image, label) in got.items():
        assert torch.equal(image, ref[key][0]), key
        assert torch.equal(label, ref[key][1]), key


def test_webdataset_stage_gives_the_folders_labels(data):
    ref = _folder_labels(data, data["tar_maps"], folder_key_without_extension, _fixed())
    urls = [str(p) for p in data["shards"]]
    stage = LabelMapStage(data["tar_maps"], transform=_fixed())
    pipeline = wds.WebDataset(urls, shardshuffle=False).decode("pil").map(stage).to_tuple("__key__", "image", "label")
    got = {key: (image, label) for key, image, label in pipeline}
    _assert_same(got, ref)
    shuffled = (wds.WebDataset(urls, shardshuffle=False).shuffle(16, rng=random.Random(0))
                .decode("pil").map(stage).to_tuple("__key__", "image", "label"))
    _assert_same({key: (image, label) for key, image, label in shuffled}, ref)  # keyed: shuffling changes nothing
    raw = wds.WebDataset(urls, shardshuffle=False).map(stage).to_tuple("__key__", "image", "label")
    _assert_same({key: (image, label) for key, image, label in raw}, ref)  # undecoded bytes are decoded alike


def test_webdataset_stage_with_random_crops_in_map_mode(data):
    """Random box-returning crops in the workers, sparse maps collated and pooled per batch: each
    sample's soft label is its map pooled over the box its crop recorded."""
    transform = v2.Compose([RandomResizedCropWithBox(32), RandomHorizontalFlipWithBox(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True)])
    stage = LabelMapStage(data["tar_maps"], transform=transform, mode="map")
    pipeline = (wds.WebDataset([str(p) for p in data["shards"]], shardshuffle=False).decode("pil").map(stage)
                .to_tuple("image", "label", "cls").batched(3, collation_fn=collate_label_maps, partial=True))
    torch.manual_seed(0)
    seen = 0
    with relabel_maps.open(data["tar_maps"]) as maps:
        for images, batch, targets in pipeline:
            assert images.shape[1:] == (3, 32, 32) and len(targets) == len(images)
            soft = batch.pool()
            for row, (key, box, flip) in enumerate(zip(batch.keys, batch.boxes.tolist(), batch.flips.tolist(),
                                                       strict=True)):
                expected = maps[key].pool(tuple(box), flip=bool(flip))
                np.testing.assert_allclose(soft[row].numpy(), expected, atol=2e-6)
                seen += 1
    assert seen == len(data["files"])
    missing = LabelMapStage(data["tar_maps"], transform=None)
    sample = {"__key__": "nope", "jpg": sp.random_jpeg(0)}
    assert not missing.has_label(sample)
    with pytest.raises(MissingKeyError):
        missing(sample)
    with pytest.raises(InvalidArgumentError, match="no image field"):
        stage({"__key__": "x", "cls": b"1"})


def test_wids_dataset_gives_the_folders_labels(data, tmp_path):
    wids = pytest.importorskip("wids")
    ref = _folder_labels(data, data["tar_maps"], folder_key_without_extension, _fixed())
    shards = [{"url": str(p), "nsamples": len(list(data["files"])[i::2])} for i, p in enumerate(data["shards"])]
    indexed = wids.ShardListDataset(shards, cache_dir=str(tmp_path / "wids"), transformations=[])  # raw members
    view = ShardImages(indexed)
    assert [view.key(i) for i in range(len(view))] == [k.rsplit(".", 1)[0] for k in list(data["files"])[0::2]] + [
        k.rsplit(".", 1)[0] for k in list(data["files"])[1::2]]  # from the index, nothing decoded
    ds = LabelMapDataset(view, data["tar_maps"], key_fn=dataset_key, transform=_fixed(), return_target=True)
    got = {}
    first = shards[0]["nsamples"]
    for i in range(len(ds)):
        image, label, target = ds[i]
        got[view.key(i)] = (image, label)
        assert target == (0 if i < first else 1)  # the .cls member, decoded by wids
    _assert_same(got, ref)


@pytest.mark.slow
def test_hf_dataset_gives_the_folders_labels(data, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [str(p) for p in data["parquet"]]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    ref_default = _folder_labels(data, data["pq_maps"], _parquet_key_of(data), _fixed())
    view = HFImages(ds, keys=parquet_keys(files), target_column="label")
    labelled = LabelMapDataset(view, data["pq_maps"], key_fn=dataset_key, transform=_fixed())
    _assert_same({view.key(i): labelled[i] for i in range(len(labelled))}, ref_default)
    # keyed by the image's path: maps annotated with --key-column image.path serve the ImageFolder as is
    teacher = load_teacher("resnet18", pretrained=False, num_classes=NC, input_size=SIZE)
    by_path = annotate(data["root"] / "parquet", tmp_path / "path.rlm", teacher, k=4, batch_size=4,
                       key_column="image.path").outputs[0]
    ref_path = _folder_labels(data, by_path, image_folder_key, _fixed())
    view = HFImages(ds, key_column="image.path")
    labelled = LabelMapDataset(view, by_path, key_fn=dataset_key, transform=_fixed())
    _assert_same({view.key(i): labelled[i] for i in range(len(labelled))}, ref_path)
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        HFImages(ds)


def _parquet_key_of(data):
    """ImageFolder index -> the Parquet default key of the same image (file stem / row)."""
    keys = list(data["files"])
    where = {}
    for f, part in enumerate(data["parquet"]):
        for row, key in enumerate(keys[f::2]):
            where[key] = f"{part.stem}/{row}"
    return lambda ds, i: where[image_folder_key(ds, i)]


@pytest.mark.slow
def test_train_wds_example_trains_two_steps_on_cpu(data, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(EXAMPLES.parent))
    pattern = str(data["root"] / "shards" / "train-{0000..0001}.tar")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_wds.py"), "--shards", pattern, "--maps", str(data["tar_maps"]),
         "--model", "resnet10t", "--img-size", "32", "--batch-size", "3", "--steps", "2", "--workers", "2",
         "--shuffle", "8", "--device", "cpu", "--log-every", "1", "--output", str(tmp_path / "model.pt")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all(np.isfinite(float(line.split()[3])) for line in lines)
    assert (tmp_path / "model.pt").stat().st_size > 0
