"""``show``: draw one label map as a PNG (Pillow + numpy only).

Layout (left to right): the image (when given), the image overlaid with the class map, the top-1
class map, the top-1 confidence map, then a legend of the most frequent classes. Every panel is a
``panel`` x ``panel`` square (content fitted inside, aspect kept), so the canvas size depends only on
``panel`` and on whether an image is shown.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Iterable, Sequence
from typing import Any

import click
import numpy as np

from relabel_maps.errors import require
from relabel_maps.labelmap import LabelMap

from .common import class_name, open_maps

__all__ = ["show", "render", "canvas_size", "class_colours", "top1_confidence"]

MARGIN = 12
TITLE_H = 18
LEGEND_W = 260
ROW_H = 18


def canvas_size(panel: int, with_image: bool) -> tuple[int, int]:
    """``(width, height)`` of the picture :func:`render` draws."""
    n = 4 if with_image else 2
    return MARGIN + n * (panel + MARGIN) + LEGEND_W + MARGIN, MARGIN + TITLE_H + panel + MARGIN


def class_colours(classes: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """Distinct colours for ``classes`` (in the given order: golden-ratio hue steps, alternating
    saturation/value so neighbours in the list differ strongly)."""
    out = {}
    for i, c in enumerate(classes):
        hue = (i * 0.6180339887498949) % 1.0
        sat = (0.85, 0.55)[i % 2]
        val = (0.95, 0.75)[(i // 2) % 2]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        out[int(c)] = (int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5))
    return out


def top1_confidence(labelmap: LabelMap) -> np.ndarray:
    """``(H, W)`` probability of the top-1 class at every location, under the map's default fill
    mode: stored probabilities; ``exp(s - lse)`` with a log-sum-exp; else a softmax over all ``C``
    classes with the non-stored logits at 0 (ReLabel)."""
    s = labelmap.scores.astype(np.float64)
    if labelmap.score_kind == "probabilities":
        return s[0]
    if labelmap.lse is not None:
        return np.exp(s[0] - labelmap.lse.astype(np.float64))
    valid = labelmap.valid()
    m = np.maximum(s.max(axis=0), 0.0)
    e = np.where(valid, np.exp(s - m), 0.0)
    n_other = labelmap.num_classes - valid.sum(axis=0)
    return e[0] / (e.sum(axis=0) + n_other * np.exp(-m))


def _viridis(x: np.ndarray) -> np.ndarray:
    """A small viridis-like colour ramp for values in [0, 1] → uint8 RGB."""
    stops = np.array(
        [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
    )
    t = np.clip(x, 0.0, 1.0) * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f + 0.5).astype(np.uint8)


def _fit(w: int, h: int, panel: int) -> tuple[int, int]:
    scale = panel / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def render(
    labelmap: LabelMap,
    *,
    image: Any = None,
    class_names: Sequence[str] | None = None,
    panel: int = 256,
    max_legend: int | None = None,
    title: str | None = None,
) -> Any:
    """Draw ``labelmap`` (and ``image``, a PIL image, when given) into a new RGB PIL image."""
    require("PIL.Image", "cli")  # a clear message when Pillow is missing
    from PIL import Image, ImageDraw, ImageFont

    h, w = labelmap.height, labelmap.width
    top1 = labelmap.top1()
    classes, inverse, counts = np.unique(top1, return_inverse=True, return_counts=True)
    order = classes[np.argsort(-counts, kind="stable")]
    share = {int(c): int(n) / top1.size for c, n in zip(classes, counts, strict=True)}
    colours = class_colours(order)
    palette = np.array([colours[int(c)] for c in classes], dtype=np.uint8)
    class_rgb = palette[inverse.reshape(top1.shape)]
    conf_rgb = _viridis(top1_confidence(labelmap))

    W, H = canvas_size(panel, image is not None)
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    fw, fh = _fit(w, h, panel)
    map_img = Image.fromarray(class_rgb, "RGB").resize((fw, fh), Image.Resampling.NEAREST)
    conf_img = Image.fromarray(conf_rgb, "RGB").resize((fw, fh), Image.Resampling.NEAREST)

    panels: list[tuple[str, Any]] = []
    if image is not None:
        img = image.convert("RGB")
        iw, ih = _fit(img.width, img.height, panel)
        img = img.resize((iw, ih), Image.Resampling.BILINEAR)
        over = Image.blend(img, map_img.resize((iw, ih), Image.Resampling.NEAREST), 0.5)
        panels += [("image", img), ("overlay", over)]
    panels += [(f"top-1 class ({h}x{w})", map_img), ("top-1 confidence", conf_img)]
    y0 = MARGIN + TITLE_H
    for i, (name, pic) in enumerate(panels):
        x0 = MARGIN + i * (panel + MARGIN)
        draw.text((x0, MARGIN), name, fill=(0, 0, 0), font=font)
        canvas.paste(pic, (x0 + (panel - pic.width) // 2, y0 + (panel - pic.height) // 2))

    # legend: colour swatch, class index, name, share of locations
    lx = MARGIN + len(panels) * (panel + MARGIN)
    draw.text((lx, MARGIN), title or (labelmap.key or "legend"), fill=(0, 0, 0), font=font)
    rows = max(1, panel // ROW_H - 1)
    if max_legend is not None:
        rows = min(rows, max_legend)
    shown = list(order[:rows]) if len(order) <= rows else list(order[: rows - 1])
    for r, c in enumerate(shown):
        y = y0 + r * ROW_H
        draw.rectangle([lx, y + 2, lx + 12, y + 14], fill=colours[int(c)], outline=(0, 0, 0))
        label = f"{int(c)} {class_name(class_names, int(c))}"[:30] + f"  {100 * share[int(c)]:.0f}%"
        draw.text((lx + 18, y + 2), label, fill=(0, 0, 0), font=font)
    if len(shown) < len(order):
        rest = sum(share[int(c)] for c in order[len(shown) :])
        more = f"+{len(order) - len(shown)} more  {100 * rest:.0f}%"
        draw.text((lx + 18, y0 + len(shown) * ROW_H + 2), more, fill=(0, 0, 0), font=font)
    # confidence scale under the legend
    bar_y = y0 + panel - 14
    bar = _viridis(np.linspace(0, 1, LEGEND_W - 60)[None, :].repeat(8, axis=0))
    canvas.paste(Image.fromarray(bar, "RGB"), (lx + 20, bar_y))
    draw.text((lx, bar_y - 2), "0", fill=(0, 0, 0), font=font)
    draw.text((lx + LEGEND_W - 36, bar_y - 2), "1", fill=(0, 0, 0), font=font)
    return canvas


@click.command(
    epilog="""\b
Examples:
  relabel-maps show maps/ n01440764/n01440764_10026.JPEG --out fish.png
  relabel-maps show maps/ cat.jpg --image photos/cat.jpg --out cat.png --panel 384"""
)
@click.argument("path")
@click.argument("key")
@click.option("--image", "image_path", type=click.Path(dir_okay=False), help="The image, drawn beside the maps.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True), help="PNG file to write.")
@click.option("--panel", default=256, show_default=True, type=click.IntRange(32, 4096), help="Panel size in pixels.")
def show(path: str, key: str, image_path: str | None, out: str, panel: int) -> None:
    """Draw the record KEY: image, top-1 class map with a legend, confidence map.

    The class map is upsampled with nearest neighbours, one colour per class; the
    legend lists the most frequent top-1 classes (names when the dataset has them)
    with their share of the grid.
    """
    require("PIL.Image", "cli")
    image = None
    if image_path is not None:
        from PIL import Image, UnidentifiedImageError

        if not os.path.isfile(image_path):
            raise click.ClickException(f"no such image: {image_path}")
        try:
            image = Image.open(image_path)
            image.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise click.ClickException(f"cannot read image {image_path}: {exc}") from None
    with open_maps(path) as maps:
        lm = maps[key]
        names = maps.metadata.get("class_names")
    pic = render(lm, image=image, class_names=names, panel=panel, title=key)
    pic.save(out, format="PNG")
    click.echo(f"wrote {out} ({pic.width}x{pic.height})")
