"""Converters of the official ReLabel release and TokenLabeling maps.

A small dataset in the official layout (``<class>/<image>.pt`` holding torch.save'd ``[2, 5, 15, 15]``
float32 tensors: scores, class indices as floats) is converted; compat-mode pooling of the converted
maps must equal the released training code's path (scatter into zeros(1000, 15, 15), torchvision
roi_align with aligned=False on ``coords * 15 - 0.5`` in the code's (y, x) order, softmax) on the
original tensors to 1e-5.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision_ops = pytest.importorskip("torchvision.ops")

import relabel_maps  # noqa: E402
from relabel_maps.convert import PROVENANCE_KEY, iter_pt_files, key_for, load_tensor  # noqa: E402
from relabel_maps.convert.relabel import convert_relabel  # noqa: E402
from relabel_maps.convert.tokenlabeling import convert_tokenlabeling  # noqa: E402
from relabel_maps.errors import FormatError  # noqa: E402
from relabel_maps.frame import TeacherFrame  # noqa: E402
from relabel_maps.pooling import relabel_compat  # noqa: E402

CLASSES = ["n01440764", "n01443537", "n02085620"]


def _size_change(ratio: float) -> str:
    """``source / output`` bytes in words: "2.62x smaller" or "1.56x larger"."""
    return f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"


def official_tensor(rng: np.random.Generator, h: int = 15, w: int = 15, dtype=torch.float32) -> torch.Tensor:
    """A map like the release's: smooth logits from a few dominant classes, top-5 per location."""
    centres = rng.choice(1000, size=8, replace=False)
    yy, xx = np.mgrid[0:h, 0:w]
    logits = rng.normal(0.0, 1.0, size=(1000, h, w))
    for c in centres:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        logits[c] += 12.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(4, 40))
    t = torch.from_numpy(logits.astype(np.float32))
    vals, idx = torch.topk(t, 5, dim=0)
    return torch.stack([vals, idx.float()]).to(dtype)


def write_official_tree(root, n_per_class: int = 3, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for cls in CLASSES:
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n_per_class):
            t = official_tensor(rng, dtype=dtype)
            rel = f"{cls}/{cls}_{1000 + i}.pt"
            torch.save(t, os.path.join(root, rel))
            tensors[rel] = t
    return tensors


def write_tar(src, tar_path, arcname: str, mode: str = "w"):
    """``src`` packed into ``tar_path`` as the folder ``arcname``."""
    with tarfile.open(tar_path, mode) as tar:
        tar.add(src, arcname=arcname)
    return tar_path


def released_get_relabel(t: torch.Tensor, coords) -> torch.Tensor:
    """The released code's get_labelmaps + get_relabel for one sample (batch of 1, CPU)."""
    label_maps = torch.zeros([1, 1000, t.shape[2], t.shape[3]])
    label_maps[0] = label_maps[0].scatter_(0, t[1].long(), t[0].float())
    batch_coords = torch.tensor([coords], dtype=torch.float32)
    boxes = torch.cat([torch.arange(1).view(1, 1).float(), batch_coords.float() * label_maps.size(3) - 0.5], 1)
    out = torchvision_ops.roi_align(input=label_maps, boxes=boxes, output_size=(1, 1))
    return torch.nn.functional.softmax(out.squeeze(-1).squeeze(-1), 1)[0]


def random_official_coords(rng):
    """RandomResizedCropWithCoords' (i/H, j/W, h/H, w/W) turned into corners, as the training loop does."""
    i, j = rng.uniform(0, 0.6, size=2)
    h, w = rng.uniform(0.08, 1 - max(i, j), size=2)
    return [float(i), float(j), float(i + h), float(j + w)]


def test_convert_official_folder_compat_pooling_matches_released_code(tmp_path, capsys):
    src = tmp_path / "imagenet_efficientnet_l2_sz475_top5"
    tensors = write_official_tree(src)
    out = tmp_path / "relabel"
    result = convert_relabel(src, out, max_records=4)
    assert result.records == 9 and result.skipped == []
    assert [os.path.basename(p) for p in result.paths] == [
        "relabel-00001-of-00003.rlm", "relabel-00002-of-00003.rlm", "relabel-00003-of-00003.rlm", "relabel.index.json",
    ]
    official = sum(os.path.getsize(src / rel) for rel in tensors)
    assert result.source_bytes == official
    with capsys.disabled():
        print(
            f"\n[convert] official {official / 9:.0f} B/image; converted f32 (lossless) "
            f"{result.output_bytes / 9:.0f} B/image ({_size_change(result.ratio)}; 9 maps in 3 shards: each shard's "
            "metadata dominates)"
        )
    rng = np.random.default_rng(1)
    with relabel_maps.open(out) as maps:
        assert len(maps) == 9
        meta = maps.metadata
        assert meta["encoding"] == {"name": "f32"} and meta["score_kind"] == "logits"
        assert meta["num_classes"] == 1000 and meta["k"] == 5 and meta["class_set"] == "imagenet-1k"
        assert meta[PROVENANCE_KEY]["source"] == "relabel_imagenet"
        assert meta[PROVENANCE_KEY]["source_path"] == "imagenet_efficientnet_l2_sz475_top5"
        assert meta["teacher"]["input_size"] == [475, 475]
        assert meta["teacher"]["crop_mode"] == "squash" and meta["teacher"]["crop_pct"] == 1.0
        assert "resize" not in meta["teacher"]
        assert TeacherFrame.from_metadata(meta) == TeacherFrame("squash", (475, 475))
        for rel, t in tensors.items():
            key = rel[:-3] + ".JPEG"
            lm = maps[key]
            # lossless: the stored arrays are the tensor's values (per location, as a set)
            dense = lm.dense()
            ref = torch.zeros(1000, 15, 15).scatter_(0, t[1].long(), t[0]).numpy()
            np.testing.assert_array_equal(dense, ref)
            for _ in range(6):
                coords = random_official_coords(rng)
                expected = released_get_relabel(t, coords).numpy()
                got = relabel_compat(lm, coords)
                assert np.abs(got - expected).max() <= 1e-5


def test_convert_size_with_default_encoding(tmp_path, capsys):
    src = tmp_path / "release"
    tensors = write_official_tree(src, n_per_class=8)  # enough maps that the 1000 class names (~30 KB) weigh little
    n = len(tensors)
    result = convert_relabel(src, tmp_path / "default.rlm", encoding=None)  # the library's default encoding
    with relabel_maps.open(tmp_path / "default.rlm") as maps:
        name = maps.metadata["encoding"]["name"]
        assert sorted(maps) == sorted(rel[:-3] + ".JPEG" for rel in tensors)
    assert result.ratio > 1.8  # zstd level 3, the writers' default (> 2.0 at level 19; spec/ENCODINGS.md 4.1)
    with capsys.disabled():
        print(
            f"\n[convert] default encoding {name}: {result.output_bytes / n:.0f} B/image ({_size_change(result.ratio)})"
        )


def test_convert_official_tar_equals_folder(tmp_path):
    src = tmp_path / "release"
    write_official_tree(src, n_per_class=2)
    tar_path = write_tar(src, tmp_path / "release.tar", "imagenet_efficientnet_l2_sz475_top5")
    convert_relabel(src, tmp_path / "a.rlm")
    result = convert_relabel(tar_path, tmp_path / "b.rlm")
    assert result.records == 6
    with relabel_maps.open(tmp_path / "a.rlm") as a, relabel_maps.open(tmp_path / "b.rlm") as b:
        assert list(a) == list(b) == sorted(f"{c}/{c}_{1000 + i}.JPEG" for c in CLASSES for i in range(2))
        for key in a:
            assert a[key] == b[key]
        assert b.metadata[PROVENANCE_KEY]["source_path"] == "release.tar"


def test_key_mapping():
    assert key_for("n01/n01_1.pt") == "n01/n01_1.JPEG"
    assert key_for("./top/n01/n01_1.pt", "") == "n01/n01_1"
    assert key_for("x.pt", ".png") == "x.png"
    assert key_for("a/b/c/x.pt", key_depth=0) == "a/b/c/x.JPEG"
    assert key_for("a/b/c/x.pt", key_depth=3) == "b/c/x.JPEG"


def test_iter_pt_files_ignores_other_files(tmp_path):
    write_official_tree(tmp_path, n_per_class=1)
    (tmp_path / "README.txt").write_text("hi")
    assert [rel for rel, _, _ in iter_pt_files(tmp_path)] == [f"{c}/{c}_1000.pt" for c in CLASSES]


class Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unsafe_pickle_is_rejected_not_executed(tmp_path):
    Evil.marker = str(tmp_path / "pwned")
    for blob in (pickle.dumps(Evil()), _torch_save_bytes({"x": Evil()})):
        with pytest.raises(FormatError, match="not a loadable tensor"):
            load_tensor(blob, "evil.pt")
    assert not os.path.exists(Evil.marker)
    with pytest.raises(FormatError, match="expected a tensor"):
        load_tensor(_torch_save_bytes({"weights": torch.zeros(2)}), "dict.pt")


def _torch_save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_bad_files_fail_or_are_skipped(tmp_path):
    src = tmp_path / "src"
    write_official_tree(src, n_per_class=1)
    torch.save(torch.zeros(2, 5, 14, 14), src / CLASSES[0] / "wrong_shape.pt")
    (src / CLASSES[1] / "garbage.pt").write_bytes(b"garbage")
    bad_idx = official_tensor(np.random.default_rng(3))
    bad_idx[1, 0, 0, 0] = 1000.5
    torch.save(bad_idx, src / CLASSES[2] / "bad_index.pt")
    with pytest.raises(FormatError, match="grid 14x14"):
        convert_relabel(src, tmp_path / "out.rlm")
    assert not (tmp_path / "out.rlm").exists()
    result = convert_relabel(src, tmp_path / "out.rlm", skip_invalid=True)
    assert result.records == 3
    assert sorted(os.path.basename(r) for r, _ in result.skipped) == ["bad_index.pt", "garbage.pt", "wrong_shape.pt"]
    result = convert_relabel(src, tmp_path / "any.rlm", skip_invalid=True, strict_shape=False)
    assert result.records == 4


def test_convert_tokenlabeling_float16_is_lossless(tmp_path):
    src = tmp_path / "label_top5_train_nfnet"
    rng = np.random.default_rng(7)
    tensors = {}
    for i in range(4):
        t = official_tensor(rng, h=14, w=14, dtype=torch.float16)
        os.makedirs(src / "n0", exist_ok=True)
        torch.save(t, src / "n0" / f"img{i}.pt")
        tensors[f"n0/img{i}.JPEG"] = t
    result = convert_tokenlabeling(src, tmp_path / "tl.rlm")
    assert result.records == 4
    with relabel_maps.open(tmp_path / "tl.rlm") as maps:
        assert maps.metadata["encoding"] == {"name": "f16"} and maps.metadata["score_kind"] == "logits"
        assert maps.metadata[PROVENANCE_KEY]["source"] == "TokenLabeling"
        for key, t in tensors.items():
            ref = torch.zeros(1000, 14, 14).scatter_(0, t[1].long(), t[0].float()).numpy()
            np.testing.assert_array_equal(maps[key].dense(), ref)


def test_convert_probabilities_detected(tmp_path):
    src = tmp_path / "p"
    os.makedirs(src / "a")
    probs = torch.softmax(torch.randn(1000, 4, 4), 0)
    vals, idx = torch.topk(probs, 5, 0)
    torch.save(torch.stack([vals, idx.float()]).half(), src / "a" / "x.pt")
    convert_tokenlabeling(src, tmp_path / "p.rlm", image_suffix=".jpg")
    with relabel_maps.open(tmp_path / "p.rlm") as maps:
        assert maps.metadata["score_kind"] == "probabilities" and list(maps) == ["a/x.jpg"]


def test_convert_cli(tmp_path):
    from click.testing import CliRunner

    from relabel_maps_cli.main import main

    src = tmp_path / "src"
    write_official_tree(src, n_per_class=1)
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(src), str(tmp_path / "out"), "--max-records", "2"])
    assert result.exit_code == 0, result.output
    assert "converted 3 maps" in result.output and "ratio" in result.output
    result = runner.invoke(main, ["convert", str(src), str(tmp_path / "out"), "--max-records", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output  # exists, no --overwrite
    result = runner.invoke(
        main, ["convert", "--from", "tokenlabeling", str(src), str(tmp_path / "tl.rlm"), "--encoding", "f32"]
    )
    assert result.exit_code == 0, result.output
    (src / CLASSES[0] / "broken.pt").write_bytes(b"\x00" * 10)
    result = runner.invoke(main, ["convert", str(src), str(tmp_path / "x.rlm")])
    assert result.exit_code == 1 and "broken.pt" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, ["convert", str(src), str(tmp_path / "y.rlm"), "--skip-invalid"])
    assert result.exit_code == 0 and "skipped" in result.output


def test_resume_after_failure(tmp_path, monkeypatch):
    import relabel_maps.convert as conv

    src = tmp_path / "src"
    tensors = write_official_tree(src, n_per_class=2)
    bad = src / CLASSES[1] / "zz_broken.pt"  # sorted after n01443537_1000/1001: fails half-way
    bad.write_bytes(b"broken")
    with pytest.raises(FormatError, match="zz_broken"):
        convert_relabel(src, tmp_path / "out", max_records=2, resume=True)
    assert not (tmp_path / "out" / "out.index.json").exists()
    bad.unlink()
    loaded = []
    real_load = conv.load_tensor
    monkeypatch.setattr(conv, "load_tensor", lambda data, name="<tensor>": loaded.append(name) or real_load(data, name))
    result = convert_relabel(src, tmp_path / "out", max_records=2, resume=True)
    assert result.records == 6
    # the 4 tensors written before the failure are not read again, except the first (it opens the writer)
    assert sorted(loaded) == sorted([sorted(tensors)[0], *sorted(tensors)[4:]])
    with relabel_maps.open(tmp_path / "out") as maps:
        assert sorted(maps) == sorted(rel[:-3] + ".JPEG" for rel in tensors)


def test_damaged_tar_is_format_error(tmp_path):
    src = tmp_path / "src"
    write_official_tree(src, n_per_class=2)
    tar_path = write_tar(src, tmp_path / "r.tar.gz", "top", mode="w:gz")
    data = tar_path.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="damaged tar"):
        convert_relabel(cut, tmp_path / "out.rlm")
    assert convert_relabel(tar_path, tmp_path / "ok.rlm").records == 6


def test_oversized_tensor_file_is_refused(tmp_path, monkeypatch):
    import relabel_maps.convert as conv

    src = tmp_path / "src"
    write_official_tree(src, n_per_class=1)
    monkeypatch.setattr(conv, "MAX_PT_BYTES", 1000)
    with pytest.raises(FormatError, match="larger than any label-map tensor"):
        convert_relabel(src, tmp_path / "out.rlm")


def test_item1_converted_release_trains_through_label_map_dataset(tmp_path):
    """0.1.0 stored the crop mode as free text ("full image resized to 475x475"), so LabelMapDataset
    failed on the first sample, and no class names, though the class set is ImageNet-1k."""
    pytest.importorskip("PIL")
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from relabel_maps.classmap import imagenet_classes
    from relabel_maps.torch import LabelMapDataset, RandomResizedCropWithBox, collate_label_maps

    tensors = write_official_tree(tmp_path / "release", n_per_class=2)
    for rel in tensors:  # the training images the release's maps belong to
        (tmp_path / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), (30, 120, 200)).save(tmp_path / "train" / (rel[:-3] + ".JPEG"), format="JPEG")
    convert_relabel(tmp_path / "release", tmp_path / "maps", max_records=4)
    with relabel_maps.open(tmp_path / "maps") as maps:
        assert maps.metadata["class_names"] == list(imagenet_classes()[1])
        assert maps.metadata["class_names"][285] == "Egyptian cat"
        whole = {key: maps[key].pool() for key in maps}
    transform = v2.Compose([RandomResizedCropWithBox(32), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    data = LabelMapDataset(ImageFolder(tmp_path / "train"), tmp_path / "maps", transform=transform)
    images, soft = next(iter(DataLoader(data, batch_size=6, num_workers=1)))
    assert images.shape == (6, 3, 32, 32) and soft.shape == (6, 1000)
    np.testing.assert_allclose(soft.sum(1).numpy(), 1.0, rtol=1e-5)
    plain = LabelMapDataset(ImageFolder(tmp_path / "train"), tmp_path / "maps", transform=v2.ToImage())
    np.testing.assert_allclose(plain[0][1].numpy(), whole[plain.key(0)], atol=1e-6)  # no crop: the whole image
    sparse = LabelMapDataset(ImageFolder(tmp_path / "train"), tmp_path / "maps", transform=transform, mode="map")
    _, batch = next(iter(DataLoader(sparse, batch_size=6, collate_fn=collate_label_maps)))
    assert batch.pool().shape == (6, 1000)

    from click.testing import CliRunner

    from relabel_maps_cli.main import main

    key = plain.key(0)
    r = CliRunner().invoke(main, ["pool", str(tmp_path / "maps"), key, "--box", "0,0,1,1", "--json"])
    assert r.exit_code == 0, r.output
    top = json.loads(r.output)
    assert top["top"][0]["name"] == imagenet_classes()[1][top["top"][0]["class"]]
