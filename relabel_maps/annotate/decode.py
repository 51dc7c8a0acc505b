"""Image decoding and resizing for the annotator.

One preprocessing, whichever decoder ran and wherever: :func:`resize_image` (torch's antialiased
bicubic in float32, rounded once to 8-bit values) makes every teacher input.

* Workers: PIL decodes any format (JPEG incl. CMYK, PNG incl. 16-bit/alpha/palette, grayscale, ...)
  to 8-bit RGB and :func:`resize_image` resizes it on the CPU; the frame travels as uint8.
* Device decoding (default on CUDA): RGB/grayscale JPEGs are sent as bytes, decoded in batches by
  :func:`decode_jpegs` (nvJPEG on CUDA) and resized by the same :func:`resize_image` on the device.

PIL's own 8-bit resize is not used: its intermediate rounding moves the Lite0 teacher's per-location
top-1 on 6.4 % of locations against the float resize (``benchmarks/bench_precision.py``).

Draft decode (``draft=True``, the annotator's default for the worker path): a JPEG much larger than
the teacher input is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (PIL ``draft``),
never below :data:`DRAFT_MARGIN` decoded pixels per teacher-input pixel along each side of the
window the teacher sees, and then resized by the same :func:`resize_image`. It only applies where
that leaves a factor of two or more (photos at least ``2 x DRAFT_MARGIN`` times the input side);
``benchmarks/bench_annotate.py`` measures its speed-up, pixel difference and teacher top-1
agreement on real photos. The device decoder has no reduced decode, so a run that decodes JPEGs
on the device does not draft at all (one preprocessing per run).

EXIF orientation is not applied (as in torchvision's and PIL's default loaders used for
training), so the map's grid matches the pixels a training pipeline sees.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from ..frame import source_window

__all__ = [
    "DecodedItem",
    "DEFAULT_MAX_PIXELS",
    "DRAFT_MARGIN",
    "decode_item",
    "draft_request",
    "ImageDecodeError",
    "load_rgb",
    "load_item",
    "resize_image",
    "resize_array",
    "decode_jpegs",
    "wait_for_device",
]

DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS)
#: a drafted JPEG keeps at least this many decoded pixels per teacher-input pixel along each side
DRAFT_MARGIN = 2.0
_PLANE_BY_PLANE = 1 << 22  # pixels above which a CPU resize converts one colour plane at a time
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_IMAGE_MAGICS = (_JPEG_SOI, _PNG_SIG, b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _looks_truncated(data: bytes) -> bool:
    """A JPEG without its end-of-image marker or a PNG without its IEND chunk."""
    if data.startswith(_JPEG_SOI):
        return not data.rstrip(b"\x00").endswith(_JPEG_EOI)
    if data.startswith(_PNG_SIG):
        return b"IEND" not in data[-16:]
    return False


class ImageDecodeError(Exception):
    """An image cannot be decoded; ``reason`` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedItem:
    """A worker's result for one image.

    ``kind`` is ``"tensor"`` (``data``: resized ``(3, H, W)`` uint8 tensor), ``"jpeg"`` (``data``:
    the file's bytes as a uint8 tensor, decoded on the GPU), ``"error"`` (``reason``/``detail``) or
    ``"skip"`` (stored by an earlier run; counted, not decoded).
    """

    index: int
    key: str
    path: str
    kind: str
    data: Any = None
    reason: str = ""
    detail: str = ""


def _to_rgb_array(img: Any) -> np.ndarray:
    """8-bit RGB ``(H, W, 3)`` array of a PIL image of any mode."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img)
        a = a.astype(np.int64)
        peak = 65535 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        a = np.clip(a, 0, peak) * 255 // peak
        a = a.astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float32))
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)
        a = np.round(a * 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():  # the size limit below replaces PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if not data:
            raise ImageDecodeError("not-an-image", "empty file") from None
        if data.startswith(_IMAGE_MAGICS):
            raise ImageDecodeError("corrupt", "the header of a known image format does not parse") from None
        raise ImageDecodeError("not-an-image", f"unrecognised file type (starts with {data[:8]!r})") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression-bomb", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on corrupt headers
        raise ImageDecodeError("corrupt", f"{type(exc).__name__}: {exc}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError("empty", f"image size {w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError("decompression-bomb", f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
    return img


def draft_request(width: int, height: int, size: Sequence[int], crop_mode: str = "squash", crop_pct: float = 1.0,
                  margin: float = DRAFT_MARGIN) -> tuple[int, int] | None:
    """The size to pass to PIL's ``draft`` for a ``width x height`` JPEG framed into ``size`` (the
    smallest decoded size that keeps ``margin`` pixels per input pixel across the teacher's window),
    or ``None`` when that allows no reduction by two or more."""
    _, _, ch, cw = source_window(height, width, size, crop_mode, crop_pct)
    need_w = max(1, math.ceil(margin * int(size[1]) * width / max(cw, 1)))
    need_h = max(1, math.ceil(margin * int(size[0]) * height / max(ch, 1)))
    if min(width // need_w, height // need_h) < 2:
        return None
    return need_w, need_h


def load_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
             draft: tuple[Sequence[int], str, float] | None = None, draft_margin: float = DRAFT_MARGIN) -> np.ndarray:
    """Decode encoded image bytes with PIL to an 8-bit RGB ``(H, W, 3)`` array.

    ``draft``: ``(size, crop_mode, crop_pct)`` of the teacher input; a JPEG that is much larger is
    decoded at a reduced scale (:func:`draft_request` with ``draft_margin``).

    Raises:
        ImageDecodeError: not an image, truncated/corrupt, or more than ``max_pixels`` pixels
            (checked from the header, before any pixel is decoded).
    """
    img = _open_checked(data, max_pixels)
    if draft is not None and img.format == "JPEG":
        request = draft_request(img.size[0], img.size[1], *draft, margin=draft_margin)
        if request is not None:
            img.draft(None, request)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, ... from PIL plugins
        reason = "truncated" if "truncated" in str(exc).lower() or _looks_truncated(data) else "corrupt"
        raise ImageDecodeError(reason, f"{type(exc).__name__}: {exc}") from None
    try:
        return np.ascontiguousarray(_to_rgb_array(img))
    except Exception as exc:  # noqa: BLE001 - e.g. a colour mode PIL cannot convert to RGB
        raise ImageDecodeError("unsupported-mode", f"mode {img.mode}: {type(exc).__name__}: {exc}") from None


def resize_image(
    img: torch.Tensor, size: Sequence[int], crop_mode: str = "squash", crop_pct: float = 1.0
) -> torch.Tensor:
    """Resize a ``(3, h, w)`` uint8 tensor (any device) to ``size`` with antialiased bicubic in float32.

    ``crop_mode="squash"`` maps the whole image onto ``size`` (ReLabel); ``"center"`` keeps the
    window :func:`relabel_maps.frame.source_window` selects. Returns integer-valued float32
    ``(3, H, W)`` in [0, 255]. Large images on the CPU are converted one colour plane at a time (the
    same result, a third of the float memory).
    """
    top, left, ch, cw = source_window(int(img.shape[-2]), int(img.shape[-1]), size, crop_mode, crop_pct)
    window = img[:, top : top + ch, left : left + cw]
    th, tw = int(size[0]), int(size[1])
    if (ch, cw) == (th, tw):
        x = window.float()
    elif img.device.type == "cpu" and ch * cw > _PLANE_BY_PLANE:
        x = torch.cat([_bicubic(window[c : c + 1].float(), th, tw) for c in range(window.shape[0])])
    else:
        x = _bicubic(window.float(), th, tw)
    return x.round_().clamp_(0, 255)


def _bicubic(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    return F.interpolate(x[None], size=(th, tw), mode="bicubic", antialias=True, align_corners=False)[0]


def resize_array(arr: np.ndarray, size: Sequence[int], crop_mode: str = "squash", crop_pct: float = 1.0) -> np.ndarray:
    """:func:`resize_image` for an ``(h, w, 3)`` uint8 array: the ``(H, W, 3)`` uint8 teacher frame."""
    arr = np.require(arr, np.uint8, ("C_CONTIGUOUS", "WRITEABLE"))  # torch wants a writable array
    frame = resize_image(torch.from_numpy(arr).permute(2, 0, 1), size, crop_mode, crop_pct)
    return frame.to(torch.uint8).permute(1, 2, 0).numpy()


def load_item(
    index: int,
    key: str,
    path: str,
    *,
    size: Sequence[int],
    crop_mode: str,
    crop_pct: float = 1.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_passthrough: bool = False,
    draft: bool = False,
) -> DecodedItem:
    """Read one image file for the teacher (runs in DataLoader workers; never raises for bad images):
    a ``"tensor"`` item holds the ``(3, H, W)`` uint8 frame, a ``"jpeg"`` item the file's bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return DecodedItem(index, key, path, "error", reason="unreadable", detail=str(exc))
    return decode_item(index, key, path, data, size=size, crop_mode=crop_mode, crop_pct=crop_pct,
                       max_pixels=max_pixels, jpeg_passthrough=jpeg_passthrough, draft=draft)


def decode_item(
    index: int,
    key: str,
    path: str,
    data: bytes,
    *,
    size: Sequence[int],
    crop_mode: str,
    crop_pct: float = 1.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_passthrough: bool = False,
    draft: bool = False,
) -> DecodedItem:
    """:func:`load_item` for bytes already read (a tar member, a Parquet cell): the teacher frame
    (``draft``: JPEGs much larger than ``size`` decoded at a reduced scale), or the bytes of an
    RGB/grayscale JPEG for the device decoder (``jpeg_passthrough``), or the reason it fails."""
    try:
        if jpeg_passthrough and data.startswith(_JPEG_SOI) and not _looks_truncated(data):
            img = _open_checked(data, max_pixels)
            if img.format == "JPEG" and img.mode in ("RGB", "L"):
                return DecodedItem(index, key, path, "jpeg", data=torch.frombuffer(bytearray(data), dtype=torch.uint8))
        arr = load_rgb(data, max_pixels=max_pixels, draft=(size, crop_mode, crop_pct) if draft else None)
        out = resize_image(torch.from_numpy(arr).permute(2, 0, 1), size, crop_mode, crop_pct).to(torch.uint8)
    except ImageDecodeError as exc:
        return DecodedItem(index, key, path, "error", reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # noqa: BLE001 - a bad image must never stop the run
        return DecodedItem(index, key, path, "error", reason="error", detail=f"{type(exc).__name__}: {exc}")
    return DecodedItem(index, key, path, "tensor", data=out)


def wait_for_device(device: torch.device) -> None:
    """On CUDA, block until the work queued on ``device``'s current stream has finished."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def decode_jpegs(datas: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors on ``device`` (nvJPEG on CUDA); ``None`` where an image fails.

    Tries one batched call first and falls back to one call per image, so a single odd file does
    not cost the batch. On CUDA it first waits for the current stream: torchvision's decoder takes
    its output buffers from the caching allocator on the current stream but decodes on a private
    stream that does not wait for it, so without the wait it could overwrite memory that queued
    kernels (the previous batch's forward) have not read yet.
    """
    wait_for_device(device)
    with warnings.catch_warnings():  # torchvision >= 0.29 flags its decoders as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 - nvJPEG rejects some files; retry them one by one
            pass
        out: list[torch.Tensor | None] = []
        for d in datas:
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except Exception:  # noqa: BLE001
                out.append(None)
        return out
