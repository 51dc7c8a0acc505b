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
  relabel-maps merge part-a.rlm part-b.rlm --out all.rlm
  relabel-maps merge maps.part00000of00002.rlm maps.part00001of00002.rlm --out maps/
  relabel-maps merge f16-maps/ compact-maps/ --out all/ --encoding compact"""
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
@click.option(
    "--encoding", metavar="NAME",
    help="The output's encoding (compact, f16, f32) [default: the first input's]; inputs stored otherwise are "
    "re-encoded.",
)
def merge(
    inputs: tuple[str, ...], output: str, on_duplicate: str, overwrite: bool, link: bool, encoding: str | None
) -> None:
    """Merge INPUTS (files, shard folders or index JSONs) into one dataset.

    Shards are copied byte for byte and renumbered. A shard is rewritten (its
    records still copied as stored) when it loses duplicate records or its
    metadata changes: the parts of a --shard or multi-rank run become one whole
    (annotate.part [0, 1]). Inputs in another encoding or k are re-encoded.
    Maps of different teachers or class sets are refused, naming the difference.
    """
    for p in inputs:
        if not os.path.exists(p):
            raise click.ClickException(f"no such file or folder: {p}")
    with progress_bar(None, "merging") as advance:
        result = merge_datasets(
            list(inputs), output, on_duplicate=on_duplicate, overwrite=overwrite, link=link, encoding=encoding,
            progress=advance,
        )
    msg = f"merged {result.records:,} records into {output} ({result.shards} shard(s)"
    if result.duplicates:
        msg += f"; {result.duplicates} duplicate(s) resolved ({on_duplicate})"
    if result.rewritten and not output.endswith(".rlm"):
        msg += f"; {result.rewritten} shard(s) rewritten"
    if result.reencoded:
        msg += f"; {result.reencoded} input shard(s) re-encoded"
    console().print(msg + ")")
