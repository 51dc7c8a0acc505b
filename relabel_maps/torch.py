"""PyTorch training integration: crop boxes from transforms, a dataset wrapper, batched pooling,
CutMix/Mixup with label maps and a soft-target loss.

This is the only module of the package that imports torch (and torchvision). A training loop::

    maps = relabel_maps.open("maps/")
    transform = v2.Compose([RandomResizedCropWithBox(224), RandomHorizontalFlipWithBox(),
                            v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    data = LabelMapDataset(ImageFolder(root), "maps/", transform=transform, mode="map")
    loader = DataLoader(data, batch_size=256, num_workers=8, collate_fn=collate_label_maps)
    for images, labels in loader:                       # labels: LabelMapBatch (sparse top-k maps)
        soft = labels.to(device).pool()                 # (B, C) soft targets, pooled on the device
        loss = soft_target_cross_entropy(model(images.to(device)), soft)

Every geometric v2 transform (crop, resized crop, resize, centre crop, pad, horizontal flip) updates a
:class:`CropBox` that travels next to the image, so the pooled region always matches the pixels the
network sees; geometric transforms a box cannot follow (rotation, affine, vertical flip, ...) raise.
:class:`LabelMapDataset` (and :func:`transform_with_box`) run the common pipeline without that
dispatch: the box-returning transforms update a plain list and pixel-value steps get the image
alone, so tracking the box costs about nothing over the stock transforms.
:class:`TeacherFrame` turns the box into the normalised frame the annotating teacher saw (read from
the file's ``teacher.resize`` / ``teacher.input_size`` metadata).

Pooling choices:

* ``mode="pool"``: each DataLoader worker pools its sample with the numpy pooler
  (:meth:`relabel_maps.LabelMap.pool`); simplest, no change to the training step.
* ``mode="map"`` + :func:`collate_label_maps`: workers ship the sparse top-k arrays; the step pools
  the whole batch on the GPU with :func:`pool_batch` (needed for CutMix, cheapest per sample).
* ``mode="box"``: workers ship only boxes and indices; :meth:`LabelMapDataset.gather` reads the maps.

Conventions (spec/POOLING.md): boxes are ``(x0, y0, x1, y1)`` normalised to the teacher frame and
never mirrored; ``flip`` mirrors the ``S x S`` output bins (a ``size == 1`` label is unchanged).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import InvalidArgumentError, InvalidBoxError, InvalidLabelMapError, require

torch = require("torch", "torch")
_tv = require("torchvision", "torch")

import numpy as np  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from .labelmap import LabelMap  # noqa: E402
from .pooling import FILL_MODES, default_fill  # noqa: E402

try:  # PIL comes with torchvision
    from PIL.Image import Image as _PIL_IMAGE
except ImportError:  # pragma: no cover
    _PIL_IMAGE = ()  # type: ignore[assignment,misc]

Tensor = torch.Tensor

__all__ = [
    "TeacherFrame",
    "CropBox",
    "RandomResizedCropWithBox",
    "RandomHorizontalFlipWithBox",
    "transform_with_box",
    "pool_batch",
    "LabelMapBatch",
    "stack_label_maps",
    "LabelMapDataset",
    "SparseLabel",
    "collate_label_maps",
    "image_folder_key",
    "cut_boxes",
    "mix_soft_targets",
    "LabelMapMixup",
    "soft_target_cross_entropy",
    "SoftTargetCrossEntropy",
]

# ============================================================================ frames and boxes

_SQUASH = ("squash", "stretch", "resize")
_CENTER_CROP = ("center_crop", "centre_crop", "shorter_center_crop", "shorter_side_center_crop", "shorter", "crop")


@dataclass(frozen=True)
class TeacherFrame:
    """How the annotating teacher turned an original image into its input.

    * ``"squash"``: the whole image resized to the input size, aspect ratio ignored. The teacher's
      normalised frame is the original image's normalised frame.
    * ``"center_crop"`` (the annotator's ``"center-crop"``): resized with its aspect ratio kept so
      that it covers ``input_size / crop_pct``, then centre-cropped to ``input_size`` (shorter-side
      resize + centre crop for square inputs). The teacher saw a centred window of the original
      image, rounded to whole pixels as the annotator crops it; boxes are re-expressed in that
      window and clipped to it (the map knows nothing outside it).

    Metadata spellings accepted: ``squash``/``stretch``/``resize`` and ``center-crop``/
    ``center_crop``/``centre_crop``/``shorter``/``crop``.
    """

    resize: str = "squash"
    input_size: tuple[int, int] | None = None  # (height, width) of the teacher input
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if self.resize not in ("squash", "center_crop"):
            raise InvalidArgumentError(f"resize must be 'squash' or 'center_crop', got {self.resize!r}")
        if self.resize == "center_crop" and self.input_size is None:
            raise InvalidArgumentError("a 'center_crop' teacher frame needs input_size")
        if not 0.0 < self.crop_pct <= 1.0:
            raise InvalidArgumentError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> "TeacherFrame":
        """Read the frame from a label-map file's metadata (``teacher.resize``, ``teacher.input_size``,
        ``teacher.crop_pct``, also accepted at the top level). Missing resize mode means ``"squash"``."""
        meta = dict(metadata or {})
        teacher = meta.get("teacher") if isinstance(meta.get("teacher"), Mapping) else {}

        def get(name: str, default: Any = None) -> Any:
            return teacher.get(name, meta.get(name, default))

        mode = str(get("resize", "squash") or "squash").lower().replace("-", "_")
        if mode in _SQUASH:
            mode = "squash"
        elif mode in _CENTER_CROP:
            mode = "center_crop"
        else:
            raise InvalidArgumentError(f"unknown teacher resize mode {mode!r} in the label-map metadata")
        size = get("input_size")
        if isinstance(size, (int, float)):
            size = (int(size), int(size))
        elif isinstance(size, Sequence) and len(size) in (2, 3):
            size = (int(size[-2]), int(size[-1]))  # (H, W) or timm's (C, H, W)
        else:
            size = None
        return cls(mode, size, float(get("crop_pct", 1.0) or 1.0))

    def window(self, image_size: tuple[float, float]) -> tuple[float, float, float, float]:
        """The part of an original ``(width, height)`` image the teacher saw: ``(x0, y0, x1, y1)``
        pixels. For ``"center_crop"`` it is rounded to whole pixels as the annotator crops it."""
        from .annotate.decode import source_window

        top, left, ch, cw = source_window(
            int(image_size[1]), int(image_size[0]), self.input_size or (0, 0), self.resize, self.crop_pct
        )
        return float(left), float(top), float(left + cw), float(top + ch)

    def normalize(
        self, box: Sequence[float], image_size: tuple[float, float], min_size: float = 1e-3
    ) -> tuple[float, float, float, float]:
        """Map a box in original-image pixels to the teacher's normalised frame, clipped to ``[0, 1]``.

        A box that falls outside the teacher's window keeps a sliver of ``min_size`` at the nearest
        edge, so that it pools the closest locations the teacher saw."""
        fx0, fy0, fx1, fy1 = self.window(image_size)
        out = []
        for lo, hi, a, b in ((box[0], box[2], fx0, fx1), (box[1], box[3], fy0, fy1)):
            u0 = min(max((lo - a) / (b - a), 0.0), 1.0)
            u1 = min(max((hi - a) / (b - a), 0.0), 1.0)
            if u1 - u0 < min_size:
                u0 = min(u0, 1.0 - min_size)
                u1 = u0 + min_size
            out.append((u0, u1))
        return out[0][0], out[1][0], out[0][1], out[1][1]


class CropBox(tv_tensors.TVTensor):
    """Which part of the original image a transformed image shows, as a torchvision v2 "tv_tensor".

    Pass it next to the image through any ``torchvision.transforms.v2`` pipeline and the geometric
    transforms update it. Stored as a float64 vector ``[x0, y0, x1, y1, canvas_w, canvas_h, flip,
    image_w, image_h]``: the region in original pixels (un-mirrored), the current image size, whether
    the current image is mirrored, and the original image size.
    """

    @classmethod
    def from_size(cls, width: int, height: int) -> "CropBox":
        """The identity box of a ``width x height`` image."""
        data = torch.tensor([0, 0, width, height, width, height, 0, width, height], dtype=torch.float64)
        return data.as_subclass(cls)

    @classmethod
    def like(cls, image: Any) -> "CropBox":
        """The identity box of an image (PIL image, or tensor ``(..., H, W)``)."""
        return cls._make(_identity_state(image))

    @staticmethod
    def _make(values: Sequence[float]) -> "CropBox":
        return torch.tensor(values, dtype=torch.float64).as_subclass(CropBox)

    def state(self) -> list[float]:
        """The nine stored values as floats (one read, no tensor dispatch per field)."""
        return self.as_subclass(torch.Tensor).tolist()

    @property
    def flip(self) -> bool:
        return self.state()[6] > 0.5

    @property
    def image_size(self) -> tuple[int, int]:
        """Original image ``(width, height)``."""
        v = self.state()
        return int(v[7]), int(v[8])

    def pixels(self) -> tuple[float, float, float, float]:
        """The region ``(x0, y0, x1, y1)`` in original-image pixels."""
        v = self.state()
        return v[0], v[1], v[2], v[3]

    def to_frame(self, frame: TeacherFrame | None = None) -> tuple[tuple[float, float, float, float], bool]:
        """``(box, flip)``: the normalised box in the teacher's frame and the mirror flag."""
        v = self.state()
        return (frame or _SQUASH_FRAME).normalize(v[:4], (v[7], v[8])), v[6] > 0.5

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        x0, y0, x1, y1 = self.pixels()
        return f"CropBox(({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}), flip={self.flip}, image={self.image_size})"


_SQUASH_FRAME = TeacherFrame()

# A box "state" is the plain list of the nine CropBox values; the fast lane (``_track``) carries it
# through a pipeline without building tensors, the v2 kernels below wrap it in a CropBox.
BoxState = list  # [x0, y0, x1, y1, canvas_w, canvas_h, flip, image_w, image_h]


def _identity_state(image: Any) -> BoxState:
    """The identity box state of an image (PIL image, or tensor ``(..., H, W)``)."""
    if isinstance(image, _PIL_IMAGE):
        w, h = image.size
    elif isinstance(image, torch.Tensor):
        h, w = image.shape[-2], image.shape[-1]
    else:
        h, w = TF.get_size(image)
    w, h = float(w), float(h)
    return [0.0, 0.0, w, h, w, h, 0.0, w, h]


def _crop_state(v: list[float], top: float, left: float, height: float, width: float) -> list[float]:
    """State after cropping ``(top, left, height, width)`` (current-canvas pixels) from state ``v``."""
    x0, y0, x1, y1, cw, ch, flip, w0, h0 = v
    sx, sy = (x1 - x0) / cw, (y1 - y0) / ch
    if flip > 0.5:  # canvas column c shows original column x1 - c * sx
        nx0, nx1 = x1 - (left + width) * sx, x1 - left * sx
    else:
        nx0, nx1 = x0 + left * sx, x0 + (left + width) * sx
    return [nx0, y0 + top * sy, nx1, y0 + (top + height) * sy, float(width), float(height), flip, w0, h0]


def _resized_size(cw: float, ch: float, size: Any, max_size: int | None) -> tuple[int, int]:
    """Canvas ``(width, height)`` after ``v2.Resize(size, max_size=max_size)``."""
    if isinstance(size, int):
        size = [size]
    if size is not None and len(size) == 2:
        return int(size[1]), int(size[0])
    short, long = (cw, ch) if cw <= ch else (ch, cw)
    if size is None:
        new_long = int(max_size)  # type: ignore[arg-type]
        new_short = int(new_long * short / long)
    else:
        new_short, new_long = int(size[0]), int(size[0] * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), int(max_size)
    return (new_short, new_long) if cw <= ch else (new_long, new_short)


@TF.register_kernel(TF.crop, CropBox)
def _crop_box(box: CropBox, top: int, left: int, height: int, width: int, **_: Any) -> CropBox:
    return CropBox._make(_crop_state(box.state(), top, left, height, width))


@TF.register_kernel(TF.resize, CropBox)
def _resize_box(box: CropBox, size: Any, interpolation: Any = None, max_size: int | None = None, **_: Any) -> CropBox:
    v = box.state()
    v[4], v[5] = _resized_size(v[4], v[5], size, max_size)
    return CropBox._make(v)


def _resized_crop_state(v: BoxState, top: int, left: int, height: int, width: int, size: Any) -> BoxState:
    """State after ``resized_crop`` (a crop, then a resize to ``size``)."""
    v = _crop_state(v, top, left, height, width)
    v[4], v[5] = _resized_size(v[4], v[5], size, None)
    return v


@TF.register_kernel(TF.resized_crop, CropBox)
def _resized_crop_box(box: CropBox, top: int, left: int, height: int, width: int, size: Any, **_: Any) -> CropBox:
    return CropBox._make(_resized_crop_state(box.state(), top, left, height, width, size))


@TF.register_kernel(TF.center_crop, CropBox)
def _center_crop_box(box: CropBox, output_size: Any, **_: Any) -> CropBox:
    if isinstance(output_size, int):
        output_size = [output_size]
    oh, ow = (output_size[0], output_size[0]) if len(output_size) == 1 else output_size
    v = box.state()
    return CropBox._make(_crop_state(v, int(round((v[5] - oh) / 2.0)), int(round((v[4] - ow) / 2.0)), oh, ow))


@TF.register_kernel(TF.pad, CropBox)
def _pad_box(box: CropBox, padding: Any, **_: Any) -> CropBox:
    pad = [padding] if isinstance(padding, int) else list(padding)
    left, top, right, bottom = {1: pad * 4, 2: pad * 2, 4: pad}[len(pad)]
    v = box.state()
    return CropBox._make(_crop_state(v, -top, -left, v[5] + top + bottom, v[4] + left + right))


@TF.register_kernel(TF.horizontal_flip, CropBox)
def _hflip_box(box: CropBox, **_: Any) -> CropBox:
    v = box.state()
    v[6] = 1.0 - v[6]
    return CropBox._make(v)


def _unsupported(name: str) -> Callable[..., Any]:
    def kernel(box: CropBox, *args: Any, **kwargs: Any) -> CropBox:
        raise InvalidArgumentError(
            f"{name} cannot be expressed as a crop box; "
            "label maps follow crops, resizes, pads and horizontal flips only"
        )

    return kernel


for _fn in (TF.vertical_flip, TF.rotate, TF.affine, TF.perspective, TF.elastic):
    TF.register_kernel(_fn, CropBox)(_unsupported(_fn.__name__))


def _with_box(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Attach an identity :class:`CropBox` to a bare image input."""
    from torch.utils._pytree import tree_flatten

    if len(inputs) == 2 and isinstance(inputs[1], CropBox):
        return inputs
    flat, _ = tree_flatten(inputs)
    if any(isinstance(x, CropBox) for x in flat):
        return inputs
    if len(inputs) != 1:
        raise InvalidArgumentError("pass (image, CropBox) or a single image")
    return (inputs[0], CropBox.like(inputs[0]))


def _image_and_state(inputs: tuple[Any, ...]) -> tuple[Any, BoxState] | None:
    """``(image, state)`` when the inputs are one image, or one image and its box (bare or as one
    tuple); ``None`` for anything else (left to the generic v2 dispatch)."""
    if len(inputs) == 1 and isinstance(inputs[0], tuple):
        inputs = inputs[0]
    if len(inputs) == 1 and isinstance(inputs[0], (torch.Tensor, _PIL_IMAGE)) and not isinstance(inputs[0], CropBox):
        return inputs[0], _identity_state(inputs[0])
    if len(inputs) == 2 and isinstance(inputs[1], CropBox) and isinstance(inputs[0], (torch.Tensor, _PIL_IMAGE)):
        return inputs[0], inputs[1].state()
    return None


class _TracksBox:
    """Mixin of the box-returning transforms: ``track(image, state)`` applies the transform to the
    image and returns the updated box state, with the same random draws as the v2 transform and no
    CropBox dispatch; ``forward`` uses it whenever the inputs are one image (and its box)."""

    def track(self, image: Any, state: BoxState) -> tuple[Any, BoxState]:
        raise NotImplementedError

    def forward(self, *inputs: Any) -> Any:
        pair = _image_and_state(inputs)
        if pair is None:
            return super().forward(*_with_box(inputs))  # type: ignore[misc]
        image, state = self.track(*pair)
        return image, CropBox._make(state)


class RandomResizedCropWithBox(_TracksBox, v2.RandomResizedCrop):
    """``v2.RandomResizedCrop`` that also returns the crop: ``image -> (image, CropBox)``.

    Accepts PIL images and tensors; given ``(image, CropBox)`` it updates the box like any v2
    transform. Same arguments as :class:`torchvision.transforms.v2.RandomResizedCrop`."""

    def track(self, image: Any, state: BoxState) -> tuple[Any, BoxState]:
        params = self.make_params([image])
        return self.transform(image, params), _resized_crop_state(state, **params, size=self.size)


class RandomHorizontalFlipWithBox(_TracksBox, v2.RandomHorizontalFlip):
    """``v2.RandomHorizontalFlip`` that records the flip: ``image | (image, CropBox) -> (image, CropBox)``."""

    def track(self, image: Any, state: BoxState) -> tuple[Any, BoxState]:
        if torch.rand(1) >= self.p:  # the same random draw as the v2 transform
            return image, state
        state = list(state)
        state[6] = 1.0 - state[6]
        return self.transform(image, {}), state


# v2 transforms that never move pixels: the fast lane gives them the image alone (a CropBox would
# pass through them unchanged; their random draws do not depend on it).
_IMAGE_ONLY = tuple(
    getattr(v2, name) for name in (
        "ToImage", "PILToTensor", "ToPureTensor", "ToDtype", "ConvertImageDtype", "Normalize", "RGB", "Grayscale",
        "RandomGrayscale", "ColorJitter", "RandomPhotometricDistort", "RandomChannelPermutation", "GaussianBlur",
        "GaussianNoise", "RandomInvert", "RandomPosterize", "RandomSolarize", "RandomAdjustSharpness",
        "RandomAutocontrast", "RandomEqualize",
    ) if hasattr(v2, name)
)


def _track(transform: Callable[..., Any], image: Any, state: BoxState) -> tuple[Any, BoxState]:
    """Run ``transform`` on ``image`` and follow the box. Box-returning transforms, ``v2.Compose``
    and pixel-value transforms take the fast lane; anything else is called as
    ``transform(image, CropBox)`` through the v2 dispatch and must return ``(image, CropBox)``."""
    if isinstance(transform, _TracksBox):
        return transform.track(image, state)
    kind = type(transform)
    if kind is v2.Compose:
        for t in transform.transforms:  # type: ignore[attr-defined]
            image, state = _track(t, image, state)
        return image, state
    if kind in _IMAGE_ONLY:
        return transform(image), state
    out = transform(image, CropBox._make(state))
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], CropBox)):
        raise InvalidArgumentError(
            f"{kind.__name__} must be a torchvision.transforms.v2 transform returning (image, CropBox) "
            "when called as transform(image, CropBox)"
        )
    return out[0], out[1].state()


def transform_with_box(transform: Callable[..., Any], image: Any, box: CropBox | None = None) -> tuple[Any, CropBox]:
    """``(image, CropBox)`` after ``transform``, as ``transform(image, box)`` would give with a v2
    pipeline (same pixels, same box, same random draws), but cheaper: the box-returning transforms,
    ``v2.Compose`` and pixel-value transforms (ToImage, ToDtype, Normalize, ColorJitter, ...) are
    run without passing a CropBox through the v2 dispatch. ``box`` defaults to the whole image."""
    image, state = _track(transform, image, _identity_state(image) if box is None else box.state())
    return image, CropBox._make(state)


# ============================================================================ batched pooling


def _axis_weights(lo: Tensor, hi: Tensor, n: int, size: int, sampling_ratio: int, dtype: torch.dtype) -> Tensor:
    """RoIAlign (aligned) bilinear weights along one axis, averaged over each bin's samples.

    ``lo``/``hi`` are ``(B,)`` normalised box edges; returns ``(B, size, n)``. The 2-D RoIAlign
    weight of grid cell ``(h, w)`` for bin ``(i, j)`` is ``Wy[i, h] * Wx[j, w]`` because the
    bilinear kernel, the in-range test and the sample grid are all separable. The arithmetic
    follows torchvision's kernel (and :mod:`relabel_maps.pooling`) in float32, so sample counts and
    positions round alike; the weights are then averaged in ``dtype``."""
    start = (lo.double() * n).float() - 0.5
    roi = ((hi.double() * n).float() - 0.5) - start
    step = roi / size
    if sampling_ratio > 0:
        grid = torch.full_like(roi, float(sampling_ratio))
    else:
        grid = torch.ceil(roi / size).clamp(min=1.0)
    g_max = int(grid.max().item()) if grid.numel() else 1
    half = torch.arange(g_max, device=lo.device, dtype=torch.float32) + 0.5
    bins = torch.arange(size, device=lo.device, dtype=torch.float32)
    step_, grid_ = step[:, None, None], grid[:, None, None]
    pos = (start[:, None, None] + bins[None, :, None] * step_) + (half[None, None, :] * step_) / grid_  # (B, S, G)
    use = (half[None, None, :] < grid_) & (pos >= -1.0) & (pos <= n)
    cells = torch.arange(n, device=lo.device, dtype=torch.float32)
    hat = (1.0 - (pos.clamp(0.0, n - 1.0)[..., None] - cells).abs()).clamp(min=0.0)  # (B, S, G, n)
    return (hat.to(dtype) * use[..., None]).sum(2) / grid_.to(dtype)


def _check_boxes(boxes: Tensor) -> Tensor:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidBoxError(f"boxes must have shape (B, 4), got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise InvalidBoxError("boxes contain NaN or inf")
    if bool(((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any()):
        raise InvalidBoxError("boxes must satisfy x0 < x1 and y0 < y1")
    return boxes


def _entry_values(
    scores: Tensor,
    valid: Tensor | None,
    lse: Tensor | None,
    fill: str,
    temperature: float,
    score_kind: str,
    num_classes: int,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """Per-entry values ``v`` (B, k, H, W) and, for ``"uniform"``, the per-location value ``u``
    (B, H, W) of every class that is not stored (spec/POOLING.md, "Fill modes")."""
    s = scores.to(dtype)
    logits = score_kind == "logits"
    if fill == "zero":
        v = s / temperature if temperature != 1.0 else s
        return (v if valid is None else v * valid), None
    if fill == "topk":
        if logits:
            z = s / temperature if temperature != 1.0 else s
            if valid is not None:
                z = z.masked_fill(~valid, float("-inf"))
            return torch.softmax(z, dim=1), None
        e = s.clamp(min=0.0)
        if temperature != 1.0:
            e = e.pow(1.0 / temperature)
        if valid is not None:
            e = e * valid
        tot = e.sum(1, keepdim=True)
        n = valid.sum(1, keepdim=True) if valid is not None else torch.full_like(tot, s.shape[1])
        even = (1.0 / n).expand_as(e) if valid is None else valid / n
        return torch.where(tot > 0, e / tot.clamp(min=1e-30), even), None
    if logits and lse is None:
        raise InvalidArgumentError(
            "fill='uniform' needs probabilities: these logit maps have no log-sum-exp (lse); use fill='zero' or 'topk'"
        )
    p = torch.exp(s - lse.to(dtype)[:, None]) if logits else s.clamp(min=0.0)  # type: ignore[union-attr]
    if valid is not None:
        p = p * valid
    n = valid.sum(1) if valid is not None else torch.full_like(p[:, 0], s.shape[1])
    rest = num_classes - n
    left = (1.0 - p.sum(1)).clamp(min=0.0)
    u = torch.where(rest > 0, left / rest.clamp(min=1), torch.zeros_like(left))
    return p, u


def _finish(pooled: Tensor, fill: str, dim: int = 1) -> Tensor:
    """Pooled values (classes along ``dim``) -> probabilities: softmax for ``"zero"``, normalisation
    otherwise. Classes should be the contiguous last dimension: torch's CPU float32 softmax over a
    strided dimension is ~10x less accurate."""
    if fill == "zero":
        return torch.softmax(pooled, dim=dim)
    tot = pooled.sum(dim, keepdim=True)
    return torch.where(tot > 0, pooled / tot.clamp(min=1e-30), torch.full_like(pooled, 1.0 / pooled.shape[dim]))


def pool_batch(
    indices: Tensor,
    scores: Tensor,
    boxes: Tensor,
    flips: Tensor | None,
    num_classes: int,
    size: int = 1,
    fill: str | None = None,
    temperature: float = 1.0,
    lse: Tensor | None = None,
    counts: Tensor | None = None,
    score_kind: str = "logits",
    sampling_ratio: int = -1,
    activate: bool = True,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Soft labels of a batch of crops, pooled from sparse top-k maps on any device.

    Args:
        indices: ``(B, k, H, W)`` integer class indices.
        scores: ``(B, k, H, W)`` scores (``score_kind``: logits or probabilities).
        boxes: ``(B, 4)`` normalised ``(x0, y0, x1, y1)`` in each teacher frame.
        flips: ``(B,)`` bool, True where the crop was mirrored (``None``: no flips).
        num_classes: ``C``.
        size: output bins per side ``S``.
        fill, temperature, sampling_ratio: as :func:`relabel_maps.pooling.pool`.
        lse: ``(B, H, W)`` log-sum-exp over all classes (needed by ``fill="uniform"`` on logits).
        counts: ``(B, H, W)`` valid entries per location (variable k).
        activate: False returns the linearly pooled quantity (logits for ``fill="zero"`` on logits,
            probabilities otherwise) before the final softmax, for region arithmetic.
        dtype: accumulation precision; ``None`` (default) picks, per fill mode, the cheapest one
            that keeps ``<= 1e-5`` agreement with the numpy reference: float32 for ``"topk"`` and
            ``"uniform"`` (values are probabilities in [0, 1]; errors ~1e-7) and float64 for
            ``"zero"`` (pooled logits of ~25 in float32 are off by a few ulps, ~1e-5, which the
            softmax passes on as probability errors of a few 1e-6, more for larger logits).
            float32 for ``"zero"`` is ~1.5x faster on a CPU (more on GPUs with slow float64).

    Returns float32 ``(B, C)`` for ``size == 1`` else ``(B, C, S, S)``. The RoIAlign weights of every box are
    computed on the device and the ``B * S * S * k * H * W`` weighted entries are accumulated with one
    ``index_add_``; no dense ``(B, C, H, W)`` tensor is formed.
    """
    if indices.ndim != 4 or scores.shape != indices.shape:
        raise InvalidLabelMapError(
            f"indices and scores must be (B, k, H, W), got {tuple(indices.shape)} and {tuple(scores.shape)}"
        )
    fill = _fill_mode(fill, score_kind)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InvalidArgumentError(f"temperature must be a positive finite number, got {temperature}")
    if fill == "uniform" and temperature != 1.0:
        raise InvalidArgumentError("fill='uniform' uses the stored probabilities as they are; temperature must be 1.0")
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise InvalidArgumentError(f"size must be a positive int, got {size!r}")
    if dtype is None:
        dtype = torch.float64 if fill == "zero" else torch.float32
    b, k, h, w = indices.shape
    s, c = int(size), int(num_classes)
    device = scores.device
    boxes = _check_boxes(torch.as_tensor(boxes, device=device).reshape(-1, 4).double())
    if boxes.shape[0] != b:
        raise InvalidBoxError(f"{boxes.shape[0]} boxes for {b} label maps")
    wy = _axis_weights(boxes[:, 1], boxes[:, 3], h, s, sampling_ratio, dtype)  # (B, S, H)
    wx = _axis_weights(boxes[:, 0], boxes[:, 2], w, s, sampling_ratio, dtype)  # (B, S, W)
    if flips is not None and s > 1:  # a mirrored crop's bins are mirrored; its box is not
        flip = torch.as_tensor(flips, device=device).reshape(b).bool()
        wx = torch.where(flip[:, None, None], wx.flip(1), wx)
    valid = None
    if counts is not None:
        valid = torch.arange(k, device=device)[None, :, None, None] < counts.to(device)[:, None].long()
    vals, base = _entry_values(scores, valid, lse, fill, temperature, score_kind, c, dtype)
    if base is not None:  # stored classes get v - u on top of the u every class gets; padding gets nothing
        vals = vals - base[:, None]
        vals = vals if valid is None else vals * valid
    cls = indices.to(device=device, dtype=torch.long)
    if s == 1:
        weight = (wy[:, 0, :, None] * wx[:, 0, None, :])[:, None]  # (B, 1, H, W)
        slot = torch.arange(b, device=device).view(b, 1, 1, 1) * c + cls
        contrib = weight * vals
    else:
        weight = wy[:, :, None, :, None] * wx[:, None, :, None, :]  # (B, S, S, H, W)
        slot = torch.arange(b * s * s, device=device).view(b, s, s, 1, 1, 1) * c + cls[:, None, None]
        contrib = weight[:, :, :, None] * vals[:, None, None]
    out = torch.zeros(b * s * s * c, device=device, dtype=dtype)
    out.index_add_(0, slot.reshape(-1), contrib.reshape(-1))
    out = out.view(b, s * s, c)
    if base is not None:  # every class gets the unstored value u, stored ones were given v - u
        out = out + (weight.reshape(b, -1, h * w) @ base.reshape(b, h * w, 1))
    if activate:
        out = _finish(out, fill, dim=2)
    out = out.float().transpose(1, 2)  # (B, C, S*S)
    return out[:, :, 0] if s == 1 else out.reshape(b, c, s, s)


def _fill_mode(fill: str | None, score_kind: str) -> str:
    mode = default_fill(score_kind) if fill is None else fill
    if mode not in FILL_MODES:
        raise InvalidArgumentError(f"fill must be one of {FILL_MODES} or None, got {fill!r}")
    return mode


# ============================================================================ batches of label maps


@dataclass
class LabelMapBatch:
    """A batch of sparse label maps with their crop boxes, ready for :func:`pool_batch`.

    Works as a DataLoader batch (``pin_memory`` and ``to`` are supported)."""

    indices: Tensor  # (B, k, H, W) int32 / int64
    scores: Tensor  # (B, k, H, W) float32
    boxes: Tensor  # (B, 4) float64, normalised teacher frame
    flips: Tensor  # (B,) bool
    num_classes: int
    score_kind: str = "logits"
    lse: Tensor | None = None  # (B, H, W)
    counts: Tensor | None = None  # (B, H, W) uint8
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "LabelMapBatch":
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        return LabelMapBatch(fn(self.indices), fn(self.scores), fn(self.boxes), fn(self.flips), self.num_classes,
                             self.score_kind, opt(self.lse), opt(self.counts), list(self.keys))

    def to(self, device: Any, non_blocking: bool = False) -> "LabelMapBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "LabelMapBatch":
        return self._map(lambda t: t.pin_memory())

    def pool(
        self,
        size: int = 1,
        fill: str | None = None,
        temperature: float = 1.0,
        boxes: Tensor | None = None,
        activate: bool = True,
        sampling_ratio: int = -1,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Soft labels ``(B, C)`` (or ``(B, C, S, S)``) over the batch's boxes (or ``boxes``); see
        :func:`pool_batch`."""
        return pool_batch(
            self.indices, self.scores, self.boxes if boxes is None else boxes, self.flips, self.num_classes,
            size=size, fill=fill, temperature=temperature, lse=self.lse, counts=self.counts,
            score_kind=self.score_kind, sampling_ratio=sampling_ratio, activate=activate, dtype=dtype,
        )


def stack_label_maps(
    maps: Sequence[LabelMap],
    boxes: Any = None,
    flips: Any = None,
    device: Any = None,
) -> LabelMapBatch:
    """Gather :class:`~relabel_maps.LabelMap` objects into a padded :class:`LabelMapBatch`.

    Maps must share the grid and class set; a smaller ``k`` is padded (recorded in ``counts``).
    ``boxes`` default to the whole frame, ``flips`` to False."""
    if not maps:
        raise InvalidArgumentError("stack_label_maps needs at least one map")
    first = maps[0]
    k = max(m.k for m in maps)
    grid = (first.height, first.width)
    for m in maps:
        if (m.height, m.width) != grid or m.num_classes != first.num_classes or m.score_kind != first.score_kind:
            raise InvalidArgumentError("label maps in a batch must share the grid size, class count and score kind")
    n = len(maps)
    idx = np.zeros((n, k) + grid, dtype=np.int32)
    sc = np.zeros((n, k) + grid, dtype=np.float32)
    ragged = any(m.k != k or m.counts is not None for m in maps)
    cnt = np.zeros((n,) + grid, dtype=np.uint8) if ragged else None
    with_lse = all(m.lse is not None for m in maps)
    lse = np.zeros((n,) + grid, dtype=np.float32) if with_lse else None
    for i, m in enumerate(maps):
        idx[i, : m.k] = m.indices
        sc[i, : m.k] = m.scores
        if cnt is not None:
            cnt[i] = m.counts if m.counts is not None else m.k
        if lse is not None:
            lse[i] = m.lse
    whole = [(0.0, 0.0, 1.0, 1.0)] * n
    box_t = torch.as_tensor(whole if boxes is None else boxes, dtype=torch.float64).reshape(n, 4)
    flip_t = torch.zeros(n, dtype=torch.bool) if flips is None else torch.as_tensor(flips).reshape(n).bool()
    batch = LabelMapBatch(
        torch.from_numpy(idx), torch.from_numpy(sc), box_t, flip_t, first.num_classes, first.score_kind,
        None if lse is None else torch.from_numpy(lse), None if cnt is None else torch.from_numpy(cnt),
        [str(m.key) for m in maps],
    )
    return batch if device is None else batch.to(device)


# ============================================================================ dataset wrapper


def image_folder_key(dataset: Any, index: int) -> str:
    """Key of a torchvision ``ImageFolder``/``DatasetFolder`` sample: its path relative to the root,
    with ``/`` separators (``"n01440764/n01440764_10026.JPEG"``)."""
    path = dataset.samples[index][0]
    root = os.path.join(dataset.root, "")  # ImageFolder joins its root and the relative path
    rel = path[len(root):] if path.startswith(root) else os.path.relpath(path, dataset.root)
    return rel if os.sep == "/" else rel.replace(os.sep, "/")


@dataclass
class SparseLabel:
    """One sample's label map and crop, as yielded by ``LabelMapDataset(mode="map")``."""

    indices: np.ndarray
    scores: np.ndarray
    box: tuple[float, float, float, float]
    flip: bool
    num_classes: int
    score_kind: str
    lse: np.ndarray | None
    counts: np.ndarray | None
    key: str


class LabelMapDataset(torch.utils.data.Dataset):
    """Wrap a keyed image dataset so that every sample comes with its crop's label.

    Args:
        dataset: yields ``(image, target)``; ``torchvision.datasets.ImageFolder`` works as is.
        maps: path of a label-map file/folder (opened lazily in each worker; picklable for spawn), or
            an opened mapping of key -> :class:`~relabel_maps.LabelMap`.
        key_fn: ``key_fn(dataset, index) -> key``; defaults to :func:`image_folder_key`.
        transform: a ``torchvision.transforms.v2`` transform whose geometric steps update the crop
            box, applied as :func:`transform_with_box` does (the box-returning transforms, ``v2.Compose``
            and pixel-value steps skip the CropBox dispatch; other steps are called as
            ``step(image, CropBox)``). ``None``: the whole image.
        mode: ``"pool"`` yields ``(image, soft_label)`` pooled on the CPU in the worker; ``"box"``
            yields ``(image, box, flip, index)`` (pool later, e.g. with :meth:`gather`);
            ``"map"`` yields ``(image, SparseLabel)`` for :func:`collate_label_maps` and pooling on the
            device in the training step.
        size, fill, temperature: pooling options of ``mode="pool"``.
        frame: the teacher frame; default read from the maps' metadata.
        return_target: also yield the dataset's own target last.
    """

    def __init__(
        self,
        dataset: Any,
        maps: Any,
        *,
        key_fn: Callable[[Any, int], str] | None = None,
        transform: Callable[..., Any] | None = None,
        mode: str = "pool",
        size: int = 1,
        fill: str | None = None,
        temperature: float = 1.0,
        frame: TeacherFrame | None = None,
        return_target: bool = False,
    ) -> None:
        if mode not in ("pool", "box", "map"):
            raise InvalidArgumentError(f"mode must be 'pool', 'box' or 'map', got {mode!r}")
        if key_fn is None and not (hasattr(dataset, "samples") and hasattr(dataset, "root")):
            raise InvalidArgumentError(
                f"{type(dataset).__name__} is not an ImageFolder-like dataset (samples + root); "
                "pass key_fn(dataset, index) -> key"
            )
        self.dataset = dataset
        self.key_fn = key_fn or image_folder_key
        self.transform = transform
        self.mode = mode
        self.size, self.fill, self.temperature = size, fill, temperature
        self.return_target = return_target
        self._path = None if isinstance(maps, Mapping) else maps
        self._maps = maps if isinstance(maps, Mapping) else None
        self._frame = frame

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._path is not None:
            state["_maps"] = None  # reopened in the worker
        return state

    @property
    def maps(self) -> Mapping[str, LabelMap]:
        if self._maps is None:
            from . import open as open_maps

            self._maps = open_maps(self._path)
        return self._maps

    @property
    def frame(self) -> TeacherFrame:
        if self._frame is None:
            self._frame = TeacherFrame.from_metadata(getattr(self.maps, "metadata", None))
        return self._frame

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, index: int) -> str:
        return self.key_fn(self.dataset, index)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return self._with_label(index, *self._image_and_box(index))

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, ...]]:
        """A batch of samples, as the DataLoader fetches them: every image and box first, then the
        batch's label maps in one tight loop (reading and pooling with warm caches costs several
        times less than between image decodes). Same samples and random draws as ``__getitem__``."""
        staged = [self._image_and_box(i) for i in indices]
        return [self._with_label(i, *st) for i, st in zip(indices, staged)]

    def _image_and_box(self, index: int) -> tuple[Any, Any, tuple[float, float, float, float], bool]:
        """``(image, target, box, flip)``: the transformed image and its box in the teacher frame."""
        image, target = self.dataset[index]
        if isinstance(image, tuple) and len(image) == 2 and isinstance(image[1], CropBox):
            image, state = image[0], image[1].state()  # the base dataset's transform already tracks the box
        else:
            state = _identity_state(image)
        if self.transform is not None:
            image, state = _track(self.transform, image, state)
        frame = self._frame if self._frame is not None else self.frame
        return image, target, frame.normalize(state[:4], (state[7], state[8])), state[6] > 0.5

    def _with_label(
        self, index: int, image: Any, target: Any, box: tuple[float, float, float, float], flip: bool
    ) -> tuple[Any, ...]:
        tail = (target,) if self.return_target else ()
        if self.mode == "box":
            return (image, torch.tensor(box, dtype=torch.float64), torch.tensor(flip), index) + tail
        key = self.key_fn(self.dataset, index)
        lm = (self._maps if self._maps is not None else self.maps)[key]
        if self.mode == "pool":
            soft = lm.pool(box, flip=flip, size=self.size, fill=self.fill, temperature=self.temperature)
            return (image, torch.from_numpy(np.ascontiguousarray(soft, dtype=np.float32))) + tail
        label = SparseLabel(lm.indices, lm.scores, box, flip, lm.num_classes, lm.score_kind, lm.lse, lm.counts, key)
        return (image, label) + tail

    def gather(self, indices: Iterable[int], boxes: Any = None, flips: Any = None, device: Any = None) -> LabelMapBatch:
        """The label maps of dataset ``indices`` as a :class:`LabelMapBatch` (for ``mode="box"``)."""
        idx = [int(i) for i in indices]
        return stack_label_maps([self.maps[self.key(i)] for i in idx], boxes, flips, device)


def collate_label_maps(samples: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """DataLoader ``collate_fn`` for ``LabelMapDataset(mode="map")``: ``(images, LabelMapBatch[, targets])``."""
    from torch.utils.data import default_collate

    labels: list[SparseLabel] = [s[1] for s in samples]
    maps = [
        LabelMap(l.indices, l.scores, num_classes=l.num_classes, score_kind=l.score_kind, lse=l.lse, counts=l.counts,
                 key=l.key, validate=False)
        for l in labels
    ]
    batch = stack_label_maps(maps, [l.box for l in labels], [l.flip for l in labels])
    images = default_collate([s[0] for s in samples])
    rest = tuple(default_collate([s[i] for s in samples]) for i in range(2, len(samples[0])))
    return (images, batch) + rest


# ============================================================================ CutMix / Mixup


def cut_boxes(boxes: Tensor, flips: Tensor, cut: Tensor) -> Tensor:
    """Boxes of a region of each crop, in each crop's teacher frame.

    ``boxes`` ``(B, 4)`` are the crops in their teacher frames, ``flips`` ``(B,)`` their mirror flags
    and ``cut`` ``(4,)`` or ``(B, 4)`` the region ``(x0, y0, x1, y1)`` normalised to the network's
    input image (as displayed, i.e. after any mirroring)."""
    cut = torch.as_tensor(cut, dtype=boxes.dtype, device=boxes.device).expand(boxes.shape[0], 4)
    flips = flips.to(boxes.device).bool()
    u0 = torch.where(flips, 1.0 - cut[:, 2], cut[:, 0])  # the mirrored crop shows column 1-u at u
    u1 = torch.where(flips, 1.0 - cut[:, 0], cut[:, 2])
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.stack(
        [boxes[:, 0] + u0 * bw, boxes[:, 1] + cut[:, 1] * bh, boxes[:, 0] + u1 * bw, boxes[:, 1] + cut[:, 3] * bh], 1
    )


def mix_soft_targets(
    batch: LabelMapBatch,
    perm: Tensor,
    lam: float,
    cut: Sequence[float] | Tensor | None = None,
    *,
    fill: str | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Soft targets ``(B, C)`` (size-1 labels) of a mixed batch.

    * Mixup (``cut is None``): ``lam * soft_i + (1 - lam) * soft_perm[i]``.
    * CutMix: image ``i`` shows crop ``perm[i]`` inside ``cut`` (normalised ``(x0, y0, x1, y1)`` in the
      input image) and its own crop elsewhere. The pasted region is pooled over its own box in
      ``perm[i]``'s teacher frame; the base region (crop minus cut, not a box) is pooled as
      ``(whole - a * cut) / (1 - a)`` of the linear pooled quantity, ``a`` the cut's area fraction.
      The two soft labels are mixed by area; ``lam`` is ignored (pass the area-corrected one to mix
      images consistently).
    """
    perm = torch.as_tensor(perm, device=batch.boxes.device, dtype=torch.long)
    mode = _fill_mode(fill, batch.score_kind)
    kw = dict(fill=mode, temperature=temperature)
    if cut is None:
        soft = batch.pool(**kw)
        return lam * soft + (1.0 - lam) * soft[perm]
    cut_t = torch.as_tensor(cut, dtype=torch.float32, device=batch.boxes.device).reshape(4)
    area = float((cut_t[2] - cut_t[0]).clamp(0, 1) * (cut_t[3] - cut_t[1]).clamp(0, 1))
    whole = batch.pool(activate=False, **kw)
    if area <= 0.0:
        return _finish(whole, mode)
    inner = batch.pool(boxes=cut_boxes(batch.boxes, batch.flips, cut_t), activate=False, **kw)
    pasted = _finish(inner, mode)[perm]
    if area >= 1.0 - 1e-6:
        return pasted
    base_lin = (whole - area * inner) / (1.0 - area)
    if mode != "zero":  # pooled probability mass of the remainder: non-negative up to rounding
        base_lin = base_lin.clamp(min=0.0)
    base = _finish(base_lin, mode)
    return (1.0 - area) * base + area * pasted


class LabelMapMixup:
    """timm-style batch Mixup / CutMix whose targets come from the label maps.

    ``images, soft = mixer(images, batch)`` mixes ``images`` (B, C, H, W) in place with the reversed
    batch (timm's ``flip(0)`` pairing) and returns the matching soft targets. CutMix boxes are drawn as
    in timm (side ``sqrt(1 - lam)``, clipped) and the mixing weight is the actual pasted area.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        fill: str | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.fill, self.temperature = fill, temperature
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _beta(self, alpha: float) -> float:
        # Beta(a, a) from two Gamma draws with the module's generator (reproducible with a seed)
        a = torch.full((2,), alpha, dtype=torch.float64)
        g = torch._standard_gamma(a, generator=self.generator)  # type: ignore[attr-defined]
        return float(g[0] / g.sum())

    def sample(self, height: int, width: int) -> tuple[float, tuple[int, int, int, int] | None]:
        """``(lam, cut)``: the mixing weight and, for CutMix, the pasted rectangle ``(x0, y0, x1, y1)``
        in pixels (``lam`` then is the area-corrected weight of the base image)."""
        if self._rand() >= self.prob or (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0):
            return 1.0, None
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self._rand() < self.switch_prob)
        if not use_cutmix:
            return self._beta(self.mixup_alpha), None
        lam = self._beta(self.cutmix_alpha)
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(height * ratio), int(width * ratio)
        cy = int(torch.randint(0, height, (), generator=self.generator))
        cx = int(torch.randint(0, width, (), generator=self.generator))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
        return 1.0 - (y1 - y0) * (x1 - x0) / float(height * width), (x0, y0, x1, y1)

    def __call__(self, images: Tensor, batch: LabelMapBatch, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """Mix ``images`` in place; return ``(images, soft_targets)``, plus the equally mixed one-hot
        ``target`` as ``(B, C)`` when ``target`` (class indices) is given."""
        height, width = images.shape[-2:]
        lam, cut = self.sample(height, width)
        perm = torch.arange(images.shape[0] - 1, -1, -1, device=images.device)
        norm = None
        if cut is None:
            if lam < 1.0:
                other = images.flip(0).mul_(1.0 - lam)  # a copy, taken before mixing in place
                images.mul_(lam).add_(other)
        else:
            x0, y0, x1, y1 = cut
            images[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
            norm = (x0 / width, y0 / height, x1 / width, y1 / height)
        soft = mix_soft_targets(batch, perm, lam, norm, fill=self.fill, temperature=self.temperature)
        if target is None:
            return images, soft
        one_hot = torch.nn.functional.one_hot(target.long().to(soft.device), batch.num_classes).to(soft.dtype)
        return images, soft, lam * one_hot + (1.0 - lam) * one_hot[perm.to(soft.device)]


# ============================================================================ loss


def soft_target_cross_entropy(
    logits: Tensor,
    soft_targets: Tensor,
    target: Tensor | None = None,
    alpha: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy against soft targets (class dimension 1), optionally mixed with the hard label:
    ``t = (1 - alpha) * soft_targets + alpha * one_hot(target)``. ``target`` holds class indices, or
    already (mixed) one-hot rows ``(B, C)`` as returned by :class:`LabelMapMixup`."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha must lie in [0, 1], got {alpha}")
    t = soft_targets.to(logits.dtype)
    if alpha > 0.0:
        if target is None:
            raise InvalidArgumentError("alpha > 0 needs the hard target")
        if target.is_floating_point():
            one_hot = target.to(t.dtype)
        else:
            one_hot = torch.nn.functional.one_hot(target.long(), logits.shape[1]).to(t.dtype)
        if t.ndim > 2:
            one_hot = one_hot.reshape(one_hot.shape + (1,) * (t.ndim - 2))
        t = (1.0 - alpha) * t + alpha * one_hot
    loss = -(t * torch.log_softmax(logits, dim=1)).sum(1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise InvalidArgumentError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class SoftTargetCrossEntropy(torch.nn.Module):
    """Module form of :func:`soft_target_cross_entropy`."""

    def __init__(self, alpha: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.alpha, self.reduction = alpha, reduction

    def forward(self, logits: Tensor, soft_targets: Tensor, target: Tensor | None = None) -> Tensor:
        return soft_target_cross_entropy(logits, soft_targets, target, self.alpha, self.reduction)
