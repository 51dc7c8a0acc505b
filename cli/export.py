"""``export``: a per-image summary table (Parquet) for the Hub's dataset viewer or analysis."""

from __future__ import annotations

import click

import relabel_maps.export as summary_table
from relabel_maps.pooling import FILL_MODES

from .common import console, open_maps, progress_bar

__all__ = ["export"]


@click.command(
    epilog="""\b
Examples:
  relabel-maps export maps/ --parquet summary.parquet
  relabel-maps export maps.rlm --parquet top10.parquet --top 10
\b
Columns: key, height, width, top_classes, top_scores, [top_names], top1_share
(the share of grid locations whose top-1 class is the pooled top-1 class)."""
)
@click.argument("path")
@click.option("--parquet", "parquet", required=True, type=click.Path(dir_okay=False), help="Parquet file to write.")
@click.option("--top", "top_n", default=5, show_default=True, type=click.IntRange(1), help="Classes per row.")
@click.option(
    "--fill", type=click.Choice(FILL_MODES), default=None,
    help="Fill mode of the pooled label (default: the map's).",
)
def export(path: str, parquet: str, top_n: int, fill: str | None) -> None:
    """Write one row per image: whole-image pooled top classes and scores."""
    with open_maps(path) as maps:
        with progress_bar(len(maps), "exporting") as advance:
            rows = summary_table.export_parquet(maps, parquet, top=top_n, fill=fill, progress=advance)
    console().print(f"wrote {rows:,} rows to {parquet}")
