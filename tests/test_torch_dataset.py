"""LabelMapDataset around torchvision ImageFolder, collate_label_maps, and DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from torch.utils.data import DataLoader  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

import relabel_maps  # noqa: E402
from relabel_maps.errors import InvalidArgumentError, MissingKeyError  # noqa: E402
from relabel_maps.pooling import pool_dense  # noqa: E402
from relabel_maps.torch import (  # noqa: E402
    LabelMapBatch,
    LabelMapDataset,
    RandomHorizontalFlipWithBox,
    RandomResizedCropWithBox,
    collate_label_maps,
    image_folder_key,
)

C, K, GRID = 10, 3, 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory, image_folder_with_maps):
    """Six 40x30 images in two class folders and a label-map file keyed by relative path."""
    return image_folder_with_maps(
        tmp_path_factory.mktemp("data"), ("cat", "dog"), 3, (30, 40), "png", num_classes=C, k=K, grid=GRID,
        with_lse=True, teacher={"crop_mode": "squash", "input_size": [40, 40]}, encoding="f32",
    )


DETERMINISTIC = v2.Compose([v2.Resize((24, 32)), v2.CenterCrop((24, 16)), RandomHorizontalFlipWithBox(p=1.0),
                            v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
RANDOM_CROP = [RandomResizedCropWithBox(16), RandomHorizontalFlipWithBox(), v2.ToImage(),
               v2.ToDtype(torch.float32, scale=True)]
BOX = (0.25, 0.0, 0.75, 1.0)  # the centre half of the width, mirrored


def test_keys_of_image_folder(folder):
    images, _ = folder
    base = ImageFolder(images)
    keys = [image_folder_key(base, i) for i in range(len(base))]
    assert keys == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]


def test_three_modes_agree_with_the_reference(folder):
    images, path = folder
    maps = relabel_maps.open(path)
    base = ImageFolder(images)
    pooled = LabelMapDataset(base, path, transform=DETERMINISTIC, mode="pool", return_target=True)
    boxed = LabelMapDataset(base, path, transform=DETERMINISTIC, mode="box")
    mapped = LabelMapDataset(base, maps, transform=DETERMINISTIC, mode="map", return_target=True)
    assert len(pooled) == 6
    img, soft, target = pooled[4]
    assert img.shape == (3, 24, 16) and soft.shape == (C,) and target == 1
    ref = pool_dense(maps["dog/1.png"], BOX, flip=True)
    np.testing.assert_allclose(soft.numpy(), ref, atol=1e-6)
    _, box, flip, index = boxed[4]
    np.testing.assert_allclose(box.numpy(), BOX)
    assert bool(flip) and index == 4
    batch = boxed.gather([index], box[None], flip[None])
    np.testing.assert_allclose(batch.pool()[0].numpy(), ref, atol=1e-5)
    images_, labels, targets = collate_label_maps([mapped[i] for i in range(6)])
    assert isinstance(labels, LabelMapBatch) and images_.shape == (6, 3, 24, 16)
    assert targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert labels.keys[4] == "dog/1.png" and bool(labels.flips.all())
    np.testing.assert_allclose(labels.pool()[4].numpy(), ref, atol=1e-5)
    ref2 = pool_dense(maps["dog/1.png"], BOX, flip=True, size=2)
    np.testing.assert_allclose(labels.pool(size=2)[4].numpy(), ref2, atol=1e-5)


def test_whole_image_without_transform_and_errors(folder):
    images, path = folder
    ds = LabelMapDataset(ImageFolder(images), path)
    img, soft = ds[0]
    assert img.size == (40, 30)
    np.testing.assert_allclose(soft.numpy(), relabel_maps.open(path)["cat/0.png"].pool(), atol=1e-6)
    with pytest.raises(InvalidArgumentError):
        LabelMapDataset(ImageFolder(images), path, mode="dense")
    with pytest.raises(InvalidArgumentError):  # a v1-style transform that drops the box
        LabelMapDataset(ImageFolder(images), path, transform=lambda img, box: img)[0]
    with pytest.raises(InvalidArgumentError, match="key_fn"):
        LabelMapDataset([(img, 0)], path)
    listed = LabelMapDataset([(img, 0)], path, key_fn=lambda d, i: "dog/2.png")
    np.testing.assert_allclose(listed[0][1].numpy(), relabel_maps.open(path)["dog/2.png"].pool(), atol=1e-6)
    missing = LabelMapDataset(ImageFolder(images), path, key_fn=lambda d, i: f"nope/{i}.png")
    with pytest.raises(MissingKeyError):
        missing[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("mode", ["pool", "map"])
def test_dataloader_workers(folder, method, mode):
    """Two workers under fork and spawn yield what the main process computes; "map" passes a mapping
    already opened and read in the parent (the reader reopens after fork; pickles by path for spawn)."""
    images, path = folder
    source = path if mode == "pool" else relabel_maps.open(path)
    ds = LabelMapDataset(ImageFolder(images), source, transform=DETERMINISTIC, mode=mode)
    ds[0]
    kw = dict(collate_fn=collate_label_maps) if mode == "map" else {}
    loader = DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context=method, **kw)
    got = [(imgs, (labels.pool() if mode == "map" else labels)) for imgs, labels in loader]
    maps = relabel_maps.open(path)
    ref = np.stack([pool_dense(maps[k], BOX, flip=True) for k in maps])  # keys sort like ImageFolder here
    soft = torch.cat([s for _, s in got]).numpy()
    np.testing.assert_allclose(soft, ref, atol=1e-5)
    assert torch.cat([i for i, _ in got]).shape == (6, 3, 24, 16)


def test_random_crops_pool_over_their_own_boxes(folder):
    images, path = folder
    torch.manual_seed(0)
    ds = LabelMapDataset(ImageFolder(images), path, transform=v2.Compose(RANDOM_CROP), mode="map")
    _, labels = collate_label_maps([ds[i % 6] for i in range(12)])
    assert len({tuple(b) for b in labels.boxes.tolist()}) > 1
    maps = relabel_maps.open(path)
    crops = zip(labels.keys, labels.boxes.tolist(), labels.flips, strict=True)
    ref = np.stack([pool_dense(maps[k], tuple(b), flip=bool(f)) for k, b, f in crops])
    np.testing.assert_allclose(labels.pool().numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["pool", "box", "map"])
def test_batched_fetch_matches_single_samples(folder, mode):
    """DataLoader's batched fetch (__getitems__: images first, then the labels) yields exactly the
    samples, crops and random draws of __getitem__."""
    images, path = folder
    ds = LabelMapDataset(ImageFolder(images), path, transform=v2.Compose(RANDOM_CROP), mode=mode, return_target=True)
    order = [4, 0, 5, 2]
    torch.manual_seed(3)
    one = [ds[i] for i in order]
    torch.manual_seed(3)
    many = ds.__getitems__(order)
    assert len(many) == len(order)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a[0], b[0]) and a[-1] == b[-1]
        if mode == "pool":
            assert torch.equal(a[1], b[1])
        elif mode == "box":
            assert torch.equal(a[1], b[1]) and bool(a[2]) == bool(b[2]) and a[3] == b[3]
        else:
            assert a[1].key == b[1].key and a[1].box == b[1].box and a[1].flip == b[1].flip
            assert np.array_equal(a[1].scores, b[1].scores)
