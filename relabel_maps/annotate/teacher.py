"""The :class:`Teacher`: a timm classifier run fully-convolutionally, and :func:`load_teacher` to build one.

:func:`load_teacher` assembles a preset (:mod:`.presets`), its weights (:mod:`.weights`) and the
dense head (:mod:`.head`) into one object that turns a normalised batch into per-location logits.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
import torch

from ..classmap import IMAGENET_1K, class_names_for
from ..errors import InvalidArgumentError
from ..frame import normalize_crop_mode
from .head import dense_head
from .presets import PACKAGED, PRESETS, TeacherPreset, resolve_preset
from .weights import (
    TeacherWeightsError,
    check_hub_weights,
    checkpoint_class_names,
    checkpoint_id,
    checkpoint_num_classes,
    load_checkpoint_state,
    load_state_strict,
    missing_weights_message,
    packaged_state,
    read_class_names,
)

__all__ = ["Teacher", "load_teacher"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Teacher:
    """A classifier that produces a logit map per image.

    ``forward_maps(x)`` takes a normalised ``(B, 3, H, W)`` batch (``H, W = input_size``, framed
    with ``crop_mode``/``crop_pct`` as :func:`relabel_maps.frame.source_window` says and normalised
    with ``mean``/``std``) and returns ``(B, C, h, w)`` logits.
    """

    model: Any  # a timm classifier (torch.nn.Module)
    name: str
    weights_id: str
    input_size: tuple[int, int]
    crop_mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    crop_pct: float = 1.0
    class_names: list[str] | None = None
    class_set: str | None = None
    interpolation: str = "bicubic"
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    steps: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)  # annotate's steps
    grids: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location logits ``(B, C, h, w)`` of a normalised batch ``x`` (``(B, 3, H, W)``).

        Under autocast the backbone runs in reduced precision while the dense head runs in float32,
        so the stored logits are not rounded to bfloat16 (8 significant bits).
        """
        with torch.inference_mode():
            return self.logits(x, amp=torch.is_autocast_enabled(x.device.type))

    def logits(self, x: torch.Tensor, *, amp: bool = False) -> torch.Tensor:
        """:meth:`forward_maps` without its inference-mode context (for ``torch.compile``d callers).

        ``amp``: the caller runs under autocast; the head then runs in float32 on float32 features.
        """
        feats = self.model.forward_features(x)
        if amp:
            with torch.autocast(feats.device.type, enabled=False):
                return dense_head(self.model, feats.float(), x.shape[-2:])
        return dense_head(self.model, feats, x.shape[-2:])

    def grid_size(self) -> tuple[int, int]:
        """The ``(h, w)`` of the maps this teacher produces at ``input_size`` (one probe, cached)."""
        key = (int(self.input_size[0]), int(self.input_size[1]))
        if key not in self.grids:
            param = next(self.model.parameters())
            x = torch.zeros(1, 3, *key, device=param.device, dtype=param.dtype)
            h, w = self.forward_maps(x).shape[-2:]
            self.grids[key] = (int(h), int(w))
        return self.grids[key]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def metadata(self, grid: Sequence[int] | None = None) -> dict[str, Any]:
        """Everything needed to interpret a map, for the label-map file's ``teacher`` metadata."""
        meta: dict[str, Any] = {
            "name": self.preset or self.name,
            "model": self.name,
            "weights": self.weights_id,
            "input_size": [int(self.input_size[0]), int(self.input_size[1])],
            "crop_mode": self.crop_mode,
            "crop_pct": float(self.crop_pct),
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


def load_teacher(
    name_or_preset: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    input_size: int | Sequence[int] | None = None,
    crop_mode: str | None = None,
    crop_pct: float | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
    resize: str | None = None,
    class_names: Sequence[str] | str | os.PathLike[str] | None = None,
) -> Teacher:
    """Build a :class:`Teacher` from a preset name (``PRESETS``) or any timm model name.

    Weights, in order of precedence: ``checkpoint`` (``.safetensors`` or a torch state dict, loaded
    with ``weights_only=True``; lukemelas EfficientNet names are converted), the preset's packaged
    weights, timm pretrained weights (HF cache or Hub) when ``pretrained``, else a random init
    seeded with ``seed`` (for tests and throughput runs).

    The classifier's size is read from a ``checkpoint``'s weights unless ``num_classes`` is given.
    ``class_names`` (a list, or a file: a JSON list or one name per line) default to the
    ``label_names`` of a timm ``config.json`` next to the checkpoint, else ImageNet-1k's names for a
    1000-class classifier with ImageNet weights; they are stored with the maps.

    ``crop_mode`` (``"squash"`` or ``"center"``, see :mod:`relabel_maps.frame`) and ``crop_pct``
    default to the preset's (``"squash"``, 1.0). ``resize`` is the former name of ``crop_mode``.

    Raises:
        TeacherWeightsError: weights missing (offline and not cached), unreadable or mismatched.
        InvalidArgumentError: unknown model name or bad option.
    """
    if resize is not None:
        warnings.warn("load_teacher(resize=...) is deprecated: use crop_mode", DeprecationWarning, stacklevel=2)
        crop_mode = crop_mode or resize
    preset = resolve_preset(name_or_preset)
    arch = preset.model if preset else name_or_preset
    if not timm.is_model(arch.split(".")[0]):
        names = ", ".join(PRESETS)
        raise InvalidArgumentError(f"unknown teacher {name_or_preset!r}: use a preset ({names}) or a timm model name")
    cfg = timm.models.get_pretrained_cfg(arch)
    size = _input_size(input_size, preset, cfg)
    mode = normalize_crop_mode(crop_mode or (preset.crop_mode if preset else "squash"))
    pct = float(crop_pct if crop_pct is not None else (preset.crop_pct if preset else 1.0))
    if not 0.0 < pct <= 1.0:
        raise InvalidArgumentError(f"crop_pct must lie in (0, 1], got {pct}")
    kwargs = dict(model_kwargs or {})

    state: dict[str, Any] | None = None
    use_hub = False
    if isinstance(class_names, (str, os.PathLike)):
        class_names = read_class_names(class_names)
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint)
        weights_id = checkpoint_id(checkpoint)
        source = f"checkpoint {checkpoint}"
        if num_classes is None:
            num_classes = checkpoint_num_classes(state, getattr(cfg, "classifier", None) if cfg else None)
        if class_names is None:
            class_names = checkpoint_class_names(checkpoint)
    elif preset is not None and preset.packaged:
        state, weights_id = packaged_state(PACKAGED[preset.packaged])
        source = weights_id
    elif pretrained:
        weights_id = source = f"timm:{arch}"
        use_hub = True
    else:
        weights_id = source = f"random-init:seed={seed}"
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)

    if use_hub:
        check_hub_weights(arch)
        try:
            model = _create(arch, size, kwargs, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - network/cache failures of many kinds
            raise TeacherWeightsError(missing_weights_message(arch, exc)) from exc
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create(arch, size, kwargs, pretrained=False)
        if state is not None:
            load_state_strict(model, state, source)
    model.eval().to(device)

    n_classes = int(model.num_classes)
    imagenet = class_names_for(IMAGENET_1K, n_classes)
    if class_names is not None and len(class_names) != n_classes:
        raise InvalidArgumentError(f"{len(class_names)} class names for a classifier of {n_classes} classes")
    label_names = list(class_names) if class_names is not None else None
    trained = state is not None or use_hub
    class_set = IMAGENET_1K if trained and imagenet is not None and label_names in (None, imagenet) else None
    if mean is None:
        mean = preset.mean if preset and preset.mean else (cfg.mean if cfg else _IMAGENET_MEAN)
    if std is None:
        std = preset.std if preset and preset.std else (cfg.std if cfg else _IMAGENET_STD)
    return Teacher(
        model=model,
        name=arch,
        weights_id=weights_id,
        input_size=size,
        crop_mode=mode,
        crop_pct=pct,
        mean=_triple(mean),
        std=_triple(std),
        num_classes=n_classes,
        class_names=label_names if label_names is not None else (imagenet if class_set else None),
        class_set=class_set,
        interpolation="bicubic",
        preset=preset.name if preset else None,
    )


def _input_size(input_size: int | Sequence[int] | None, preset: TeacherPreset | None, cfg: Any) -> tuple[int, int]:
    """``(H, W)``: the given size, else the preset's, else timm's pretrained config's (224 when unknown)."""
    if input_size is None:
        if preset is not None:
            return preset.input_size
        h, w = (cfg.input_size if cfg else (3, 224, 224))[-2:]
        return int(h), int(w)
    if isinstance(input_size, int):
        return int(input_size), int(input_size)
    return int(input_size[0]), int(input_size[1])


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def _create(arch: str, input_size: tuple[int, int], kwargs: dict[str, Any], pretrained: bool) -> Any:
    """``timm.create_model``; passes ``img_size`` to models that have a fixed input size (ViT, Swin, ...)."""
    try:
        return timm.create_model(arch, pretrained=pretrained, img_size=tuple(input_size), **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(arch, pretrained=pretrained, **kwargs)
