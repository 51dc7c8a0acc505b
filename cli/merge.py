"""``merge``: shards of several ranks/runs → one dataset."""

from __future__ import annotations

import os

import click

from relabel_maps.merge import ON_DUPLICATE
from relabel_maps.merge import merge as merge_datasets

from .common import console, progress_bar

__all__ = ["merge"]


@click.command(
    epilog="""\b
Examples:
  relabel-maps merge rank0/ rank1/ rank2/ rank3/ --out maps/
  relabel-maps merge run1/ run2/ --out maps/ --on-duplicate last --link
  relabel-maps merge part-a.rlm part-b.rlm --out all.rlm"""
)
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out", "output", required=True, type=click.Path(), help="Output folder (shards + index) or a .rlm file."
)
@click.option(
    "--on-duplicate", type=click.Choice(ON_DUPLICATE), default="error", show_default=True,
    help="A key present in several inputs: fail, or keep the first/last copy (inputs in the order given).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--link", is_flag=True, help="Hard-link unchanged shards instead of copying them (same file system).")
def merge(inputs: tuple[str, ...], output: str, on_duplicate: str, overwrite: bool, link: bool) -> None:
    """Merge INPUTS (files, shard folders or index JSONs) into one dataset.

    Shards are copied byte for byte and renumbered; only shards that lose
    duplicate records are rewritten.
    """
    for p in inputs:
        if not os.path.exists(p):
            raise click.ClickException(f"no such file or folder: {p}")
    with progress_bar(None, "merging") as advance:
        result = merge_datasets(
            list(inputs), output, on_duplicate=on_duplicate, overwrite=overwrite, link=link, progress=advance
        )
    msg = f"merged {result.records:,} records into {output} ({result.shards} shard(s)"
    if result.duplicates:
        msg += f"; {result.duplicates} duplicate(s) resolved ({on_duplicate}), {result.rewritten} shard(s) rewritten"
    console().print(msg + ")")
