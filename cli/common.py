"""Pieces shared by the commands: option parsing, output, progress bars."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

import relabel_maps
from relabel_maps.errors import InvalidBoxError
from relabel_maps.layout import is_hub_url
from relabel_maps.pooling import check_box

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

__all__ = [
    "BOX",
    "BoxType",
    "console",
    "echo_json",
    "open_maps",
    "progress_bar",
    "class_name",
]


class BoxType(click.ParamType):
    """A crop box ``x0,y0,x1,y1`` in normalised coordinates (checked by :func:`relabel_maps.pooling.check_box`)."""

    name = "x0,y0,x1,y1"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[float, float, float, float]:
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace(" ", ",").split(",") if p.strip()]
            try:
                value = tuple(float(p) for p in parts)
            except ValueError:
                self.fail(f"{value!r} is not four comma-separated numbers x0,y0,x1,y1", param, ctx)
        try:
            return check_box(value)
        except InvalidBoxError as exc:
            self.fail(str(exc), param, ctx)


BOX = BoxType()


def console(stderr: bool = False, markup: bool = False) -> Console:
    """A rich console writing to click's current stdout/stderr (so CliRunner captures it).

    Markup is off by default: keys and class names may contain ``[brackets]``."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, soft_wrap=True, highlight=False, markup=markup)


def echo_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout."""
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False))


def open_maps(path: str, **kwargs: Any) -> relabel_maps.LabelMaps:
    """``relabel_maps.open(path)`` with a friendly message for a missing local path."""
    if not is_hub_url(path) and not os.path.exists(path):
        raise click.ClickException(f"no such file or folder: {path}")
    return relabel_maps.open(path, **kwargs)


@contextlib.contextmanager
def progress_bar(total: int | None | Callable[[], int | None], description: str) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr (only when stderr is a terminal).

    ``total`` may be a callable, called only when the bar is shown (for a costly count).
    Yields ``advance(n=1, total=None)``; ``total`` sets the bar's length once it is known."""
    stream = sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield lambda n=1, total=None: None
        return
    if callable(total):
        total = total()

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(file=stream), transient=True) as progress:
        bar_id = progress.add_task(description, total=total)

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                progress.update(bar_id, total=total)
            progress.advance(bar_id, n)

        yield advance


def class_name(names: Sequence[str] | None, index: int) -> str:
    """Human name of class ``index`` (empty when the dataset carries no class names)."""
    if names and 0 <= index < len(names):
        return str(names[index])
    return ""

