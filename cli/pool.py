"""``pool``: the soft label of a crop box of one record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
import numpy as np
from rich.table import Table

from relabel_maps.classmap import LEFTOVER_MODES, ClassMapError, load_class_map
from relabel_maps.pooling import FILL_MODES, relabel_compat, resolve_fill, to_official_coords

from .common import BOX, class_name, console, echo_json, open_maps

__all__ = ["pool"]


def _top(probs: np.ndarray, n: int, names: Sequence[str] | None) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:n]
    return [{"class": int(c), "name": class_name(names, int(c)), "prob": float(probs[c])} for c in order]


@click.command(
    epilog="""\b
Examples:
  relabel-maps pool maps/ cat.jpg --box 0,0,1,1
  relabel-maps pool maps/ cat.jpg --box 0.1,0.2,0.7,0.9 --flip --top 10
  relabel-maps pool maps/ cat.jpg --box 0,0,1,1 --size 2 --json
  relabel-maps pool maps/ cat.jpg --box 0.1,0.2,0.7,0.9 --compat   # released ReLabel code's numbers
  relabel-maps pool maps/ cat.jpg --class-map pets.csv --leftover other  # over your own classes"""
)
@click.argument("path")
@click.argument("key")
@click.option(
    "--box", type=BOX, default="0,0,1,1", show_default=True,
    help="Crop box x0,y0,x1,y1, normalised to the frame the teacher saw (0,0,1,1 is the whole frame; "
    "parts outside it are allowed and pool to the uniform 1/C).",
)
@click.option("--flip", is_flag=True, help="The crop was mirrored horizontally.")
@click.option(
    "--size", default=1, show_default=True, type=click.IntRange(1, 64), help="Output grid S (S x S soft labels)."
)
@click.option(
    "--fill", type=click.Choice(FILL_MODES), default=None,
    help="Scores of non-stored classes (default: zero for logits, uniform for probabilities).",
)
@click.option(
    "--temperature", default=1.0, show_default=True, type=float, help="Divide logits by T before the softmax."
)
@click.option(
    "--compat", is_flag=True, help="Reproduce the released ReLabel code's get_relabel (quirks included; size 1)."
)
@click.option(
    "--class-map", "class_map_path", type=click.Path(exists=True, dir_okay=False),
    help="CSV or JSON mapping the teacher's classes onto your own (relabel_maps.classmap): the label is "
    "over those classes.",
)
@click.option(
    "--leftover", type=click.Choice(LEFTOVER_MODES), default=None,
    help="With --class-map: what becomes of the probability of unmapped teacher classes (default: the "
    "file's, else renormalize).",
)
@click.option("--top", "top_n", default=5, show_default=True, type=click.IntRange(1), help="Classes to print.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pool(
    path: str,
    key: str,
    box: tuple[float, float, float, float],
    flip: bool,
    size: int,
    fill: str | None,
    temperature: float,
    compat: bool,
    class_map_path: str | None,
    leftover: str | None,
    top_n: int,
    as_json: bool,
) -> None:
    """Print the top classes of the soft label of a crop BOX of record KEY.

    See spec/POOLING.md for the box convention, fill modes and the compatibility mode.
    """
    if compat and (size != 1 or fill is not None or temperature != 1.0 or class_map_path):
        raise click.UsageError(
            "--compat has fixed semantics: it takes no --size, --fill, --temperature or --class-map")
    if leftover is not None and not class_map_path:
        raise click.UsageError("--leftover applies to a --class-map")
    if min(box) < 0.0 or max(box) > 1.0:
        click.echo(f"note: the box {','.join(f'{v:g}' for v in box)} extends outside the teacher's frame "
                   "(0..1); the part outside pools to the uniform 1/C", err=True)
    with open_maps(path) as maps:
        lm = maps[key]
        names = maps.metadata.get("class_names")
        class_map = None
        if class_map_path:
            try:
                class_map = load_class_map(class_map_path, metadata=maps.metadata, leftover=leftover)
            except ClassMapError as exc:
                raise click.ClickException(str(exc)) from None
            names = class_map.names
    if compat:
        probs = relabel_compat(lm, to_official_coords(box, flip), flip=flip)
        mode = "compat"
    else:
        probs = lm.pool(box, flip=flip, size=size, fill=fill, temperature=temperature, class_map=class_map)
        mode = resolve_fill(fill, lm.score_kind)
    result: dict[str, Any] = {
        "key": key, "box": list(box), "flip": flip, "size": size, "fill": mode, "temperature": temperature
    }
    if class_map is not None:
        result["class_map"] = {"path": class_map_path, "leftover": class_map.leftover}
    cells: list[tuple[tuple[int, int] | None, list[dict[str, Any]]]]
    if size == 1:
        result["top"] = _top(probs, top_n, names)
        cells = [(None, result["top"])]
    else:
        cells = [((r, c), _top(probs[:, r, c], top_n, names)) for r in range(size) for c in range(size)]
        result["cells"] = [{"row": rc[0], "col": rc[1], "top": top} for rc, top in cells if rc is not None]
    if as_json:
        echo_json(result)
        return
    out = console()
    title = f"{key}  box={','.join(f'{v:g}' for v in box)}{'  flipped' if flip else ''}  fill={mode}"
    if size == 1:
        t = Table(title=title, title_justify="left")
        t.add_column("rank", justify="right")
        t.add_column("class", justify="right")
        t.add_column("name")
        t.add_column("prob", justify="right")
        for rank, row in enumerate(result["top"], 1):
            t.add_row(str(rank), str(row["class"]), row["name"] or "-", f"{row['prob']:.4f}")
        out.print(t)
        return
    # an S x S grid: one table, one row per cell, its top classes side by side
    t = Table(title=f"{title}  {size}x{size} cells", title_justify="left")
    t.add_column("cell")
    for rank in range(1, top_n + 1):
        t.add_column(f"#{rank}")
    for rc, top in cells:
        labels = (f"{row['name'] or row['class']} {row['prob']:.3f}" for row in top)
        t.add_row(f"{rc[0]},{rc[1]}" if rc else "", *labels)
    out.print(t)
