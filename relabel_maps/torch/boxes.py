"""Crop boxes that follow torchvision v2 transforms.

A :class:`CropBox` travels next to the image through any ``torchvision.transforms.v2`` pipeline; the
kernels registered here update it for every geometric transform that keeps a box a box (crop,
resized crop, resize, centre crop, pad, horizontal flip) and refuse the others (rotation, affine,
vertical flip, ...). The fast lane (:func:`transform_with_box`, used by the dataset) carries a plain
:class:`BoxState` instead and skips the v2 dispatch for the box-returning and pixel-value steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from PIL.Image import Image as PILImage
from torch.utils._pytree import tree_flatten
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import InvalidArgumentError
from ..frame import TeacherFrame

__all__ = [
    "BoxState",
    "CropBox",
    "RandomResizedCropWithBox",
    "RandomHorizontalFlipWithBox",
    "transform_with_box",
    "identity_state",
    "track",
]

_SQUASH_FRAME = TeacherFrame()


class BoxState(NamedTuple):
    """Where a transformed image comes from, as plain floats (no tensor dispatch per field)."""

    x0: float  # the region shown, in original-image pixels (never mirrored)
    y0: float
    x1: float
    y1: float
    canvas_w: float  # the current image size
    canvas_h: float
    flip: bool  # whether the current image is mirrored
    image_w: float  # the original image size
    image_h: float

    @classmethod
    def identity(cls, width: float, height: float) -> BoxState:
        """The whole, unmirrored ``width x height`` image."""
        w, h = float(width), float(height)
        return cls(0.0, 0.0, w, h, w, h, False, w, h)

    @classmethod
    def from_values(cls, values: Sequence[float]) -> BoxState:
        """From the nine stored values ``[x0, y0, x1, y1, canvas_w, canvas_h, flip, image_w, image_h]``."""
        x0, y0, x1, y1, cw, ch, flip, w0, h0 = values
        return cls(x0, y0, x1, y1, cw, ch, flip > 0.5, w0, h0)

    def to_values(self) -> list[float]:
        """The nine values as a :class:`CropBox` stores them (``flip`` as 0.0 / 1.0)."""
        return [self.x0, self.y0, self.x1, self.y1, self.canvas_w, self.canvas_h, float(self.flip),
                self.image_w, self.image_h]

    @property
    def region(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in original-image pixels."""
        return self.x0, self.y0, self.x1, self.y1

    @property
    def image_size(self) -> tuple[float, float]:
        """Original image ``(width, height)``."""
        return self.image_w, self.image_h

    def crop(self, top: float, left: float, height: float, width: float) -> BoxState:
        """After cropping ``(top, left, height, width)`` (current-canvas pixels)."""
        sx, sy = (self.x1 - self.x0) / self.canvas_w, (self.y1 - self.y0) / self.canvas_h
        if self.flip:  # canvas column c shows original column x1 - c * sx
            nx0, nx1 = self.x1 - (left + width) * sx, self.x1 - left * sx
        else:
            nx0, nx1 = self.x0 + left * sx, self.x0 + (left + width) * sx
        return BoxState(nx0, self.y0 + top * sy, nx1, self.y0 + (top + height) * sy, float(width), float(height),
                        self.flip, self.image_w, self.image_h)

    def resize(self, size: Any, max_size: int | None = None) -> BoxState:
        """After ``v2.Resize(size, max_size=max_size)``."""
        w, h = _resized_size(self.canvas_w, self.canvas_h, size, max_size)
        return self._replace(canvas_w=float(w), canvas_h=float(h))

    def resized_crop(self, top: float, left: float, height: float, width: float, size: Any) -> BoxState:
        """After ``resized_crop`` (a crop, then a resize to ``size``)."""
        return self.crop(top, left, height, width).resize(size)

    def mirror(self) -> BoxState:
        """After a horizontal flip."""
        return self._replace(flip=not self.flip)


def _resized_size(cw: float, ch: float, size: Any, max_size: int | None) -> tuple[int, int]:
    """Canvas ``(width, height)`` after ``v2.Resize(size, max_size=max_size)``."""
    if isinstance(size, int):
        size = [size]
    if size is not None and len(size) == 2:
        return int(size[1]), int(size[0])
    short, long = (cw, ch) if cw <= ch else (ch, cw)
    if size is None:
        if max_size is None:
            raise InvalidArgumentError("Resize needs size or max_size")
        new_long = int(max_size)
        new_short = int(new_long * short / long)
    else:
        new_short, new_long = int(size[0]), int(size[0] * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), int(max_size)
    return (new_short, new_long) if cw <= ch else (new_long, new_short)


def identity_state(image: Any) -> BoxState:
    """The identity box state of an image (PIL image, or tensor ``(..., H, W)``)."""
    if isinstance(image, PILImage):
        w, h = image.size
    elif isinstance(image, torch.Tensor):
        h, w = image.shape[-2], image.shape[-1]
    else:
        h, w = TF.get_size(image)
    return BoxState.identity(w, h)


class CropBox(tv_tensors.TVTensor):
    """Which part of the original image a transformed image shows, as a torchvision v2 "tv_tensor".

    Pass it next to the image through any ``torchvision.transforms.v2`` pipeline and the geometric
    transforms update it. Stored as the float64 vector of a :class:`BoxState`: ``[x0, y0, x1, y1,
    canvas_w, canvas_h, flip, image_w, image_h]``; read it by name with :meth:`state`.
    """

    @classmethod
    def from_state(cls, state: BoxState) -> CropBox:
        """The box of a :class:`BoxState`."""
        box: CropBox = torch.tensor(state.to_values(), dtype=torch.float64).as_subclass(cls)
        return box

    @classmethod
    def from_size(cls, width: int, height: int) -> CropBox:
        """The identity box of a ``width x height`` image."""
        return cls.from_state(BoxState.identity(width, height))

    @classmethod
    def like(cls, image: Any) -> CropBox:
        """The identity box of an image (PIL image, or tensor ``(..., H, W)``)."""
        return cls.from_state(identity_state(image))

    def state(self) -> BoxState:
        """The stored values by name (one read, no tensor dispatch per field)."""
        return BoxState.from_values(self.as_subclass(torch.Tensor).tolist())

    @property
    def flip(self) -> bool:
        return self.state().flip

    @property
    def image_size(self) -> tuple[int, int]:
        """Original image ``(width, height)``."""
        s = self.state()
        return int(s.image_w), int(s.image_h)

    def pixels(self) -> tuple[float, float, float, float]:
        """The region ``(x0, y0, x1, y1)`` in original-image pixels."""
        return self.state().region

    def to_frame(self, frame: TeacherFrame | None = None) -> tuple[tuple[float, float, float, float], bool]:
        """``(box, flip)``: the normalised box in the teacher's frame and the mirror flag."""
        s = self.state()
        return (frame or _SQUASH_FRAME).normalize(s.region, s.image_size), s.flip

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        x0, y0, x1, y1 = self.pixels()
        return f"CropBox(({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}), flip={self.flip}, image={self.image_size})"


# ------------------------------------------------------------------------------ v2 kernels of CropBox


@TF.register_kernel(TF.crop, CropBox)
def _crop_box(box: CropBox, top: int, left: int, height: int, width: int, **_: Any) -> CropBox:
    return CropBox.from_state(box.state().crop(top, left, height, width))


@TF.register_kernel(TF.resize, CropBox)
def _resize_box(box: CropBox, size: Any, interpolation: Any = None, max_size: int | None = None, **_: Any) -> CropBox:
    return CropBox.from_state(box.state().resize(size, max_size))


@TF.register_kernel(TF.resized_crop, CropBox)
def _resized_crop_box(box: CropBox, top: int, left: int, height: int, width: int, size: Any, **_: Any) -> CropBox:
    return CropBox.from_state(box.state().resized_crop(top, left, height, width, size))


@TF.register_kernel(TF.center_crop, CropBox)
def _center_crop_box(box: CropBox, output_size: Any, **_: Any) -> CropBox:
    if isinstance(output_size, int):
        output_size = [output_size]
    oh, ow = (output_size[0], output_size[0]) if len(output_size) == 1 else output_size
    s = box.state()
    top, left = int(round((s.canvas_h - oh) / 2.0)), int(round((s.canvas_w - ow) / 2.0))
    return CropBox.from_state(s.crop(top, left, oh, ow))


@TF.register_kernel(TF.pad, CropBox)
def _pad_box(box: CropBox, padding: Any, **_: Any) -> CropBox:
    pad = [padding] if isinstance(padding, int) else list(padding)
    left, top, right, bottom = {1: pad * 4, 2: pad * 2, 4: pad}[len(pad)]
    s = box.state()
    return CropBox.from_state(s.crop(-top, -left, s.canvas_h + top + bottom, s.canvas_w + left + right))


@TF.register_kernel(TF.horizontal_flip, CropBox)
def _hflip_box(box: CropBox, **_: Any) -> CropBox:
    return CropBox.from_state(box.state().mirror())


def _unsupported(name: str) -> Callable[..., CropBox]:
    def kernel(box: CropBox, *args: Any, **kwargs: Any) -> CropBox:
        raise InvalidArgumentError(
            f"{name} cannot be expressed as a crop box; "
            "label maps follow crops, resizes, pads and horizontal flips only"
        )

    return kernel


for _fn in (TF.vertical_flip, TF.rotate, TF.affine, TF.perspective, TF.elastic):
    TF.register_kernel(_fn, CropBox)(_unsupported(_fn.__name__))


# ------------------------------------------------------------------------------ box-returning transforms


def _with_box(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Attach an identity :class:`CropBox` to a bare image input."""
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
    if len(inputs) == 1 and isinstance(inputs[0], (torch.Tensor, PILImage)) and not isinstance(inputs[0], CropBox):
        return inputs[0], identity_state(inputs[0])
    if len(inputs) == 2 and isinstance(inputs[1], CropBox) and isinstance(inputs[0], (torch.Tensor, PILImage)):
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
        return image, CropBox.from_state(state)


class RandomResizedCropWithBox(_TracksBox, v2.RandomResizedCrop):
    """``v2.RandomResizedCrop`` that also returns the crop: ``image -> (image, CropBox)``.

    Accepts PIL images and tensors; given ``(image, CropBox)`` it updates the box like any v2
    transform. Same arguments as :class:`torchvision.transforms.v2.RandomResizedCrop`."""

    def track(self, image: Any, state: BoxState) -> tuple[Any, BoxState]:
        params = self.make_params([image])
        return self.transform(image, params), state.resized_crop(**params, size=self.size)


class RandomHorizontalFlipWithBox(_TracksBox, v2.RandomHorizontalFlip):
    """``v2.RandomHorizontalFlip`` that records the flip: ``image | (image, CropBox) -> (image, CropBox)``."""

    def track(self, image: Any, state: BoxState) -> tuple[Any, BoxState]:
        if torch.rand(1) >= self.p:  # the same random draw as the v2 transform
            return image, state
        return self.transform(image, {}), state.mirror()


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


def track(transform: Callable[..., Any], image: Any, state: BoxState) -> tuple[Any, BoxState]:
    """Run ``transform`` on ``image`` and follow the box. Box-returning transforms, ``v2.Compose``
    and pixel-value transforms take the fast lane; anything else is called as
    ``transform(image, CropBox)`` through the v2 dispatch and must return ``(image, CropBox)``."""
    if isinstance(transform, _TracksBox):
        return transform.track(image, state)
    kind = type(transform)
    if kind is v2.Compose:
        for step in transform.transforms:  # type: ignore[attr-defined]
            image, state = track(step, image, state)
        return image, state
    if kind in _IMAGE_ONLY:
        return transform(image), state
    out = transform(image, CropBox.from_state(state))
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
    image, state = track(transform, image, identity_state(image) if box is None else box.state())
    return image, CropBox.from_state(state)
