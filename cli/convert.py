"""``convert``: the official ReLabel release or TokenLabeling maps → a relabel-maps dataset."""

from __future__ import annotations

import os

import click

from relabel_maps.convert.relabel import convert_relabel
from relabel_maps.convert.tokenlabeling import convert_tokenlabeling

from .common import console, progress_bar

__all__ = ["convert"]


@click.command(
    epilog="""\b
Examples:
  relabel-maps convert imagenet_efficientnet_l2_sz475_top5/ relabel/ --max-records 50000
  relabel-maps convert relabel_top5.tar relabel.rlm
  relabel-maps convert --from tokenlabeling label_top5_train_nfnet/ tokenlabel/ --resume
\b
Keys: the last --key-depth components of each .pt path (what the released loaders
look up), with ".pt" replaced by --image-suffix: .../n01440764/n01440764_10026.pt
becomes n01440764/n01440764_10026.JPEG."""
)
@click.argument("source", type=click.Path(exists=True))
@click.argument("output", type=click.Path())
@click.option("--from", "kind", type=click.Choice(["relabel", "tokenlabeling"]), default="relabel",
              show_default=True, help="Which release SOURCE holds.")
@click.option("--encoding", default=None,
              help="Score encoding (default: f32 for relabel (lossless), f16 for tokenlabeling (lossless for its "
                   "float16 maps)).")
@click.option("--image-suffix", default=".JPEG", show_default=True,
              help="Suffix replacing '.pt' in keys ('' keeps the stem).")
@click.option("--key-depth", default=2, show_default=True, type=click.IntRange(0),
              help="Path components kept in keys (0: the whole path relative to SOURCE).")
@click.option("--score-kind", type=click.Choice(["logits", "probabilities", "auto"]), default=None,
              help="Override the score kind (default: logits for relabel, auto for tokenlabeling).")
@click.option("--max-records", type=click.IntRange(1), default=None, help="Records per shard.")
@click.option("--max-bytes", type=click.IntRange(1), default=None, help="Approximate bytes per shard.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Convert only the first N files.")
@click.option("--skip-invalid", is_flag=True,
              help="Skip unreadable or malformed tensors (listed at the end) instead of stopping.")
@click.option("--any-shape", is_flag=True, help="relabel: accept tensors other than [2, 5, 15, 15].")
@click.option("--resume", is_flag=True, help="Continue an interrupted conversion.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def convert(source, output, kind, encoding, image_suffix, key_depth, score_kind, max_records, max_bytes,
            limit, skip_invalid, any_shape, resume, overwrite) -> None:
    """Convert per-image .pt label maps (folder tree or tar) into a dataset.

    Tensors are read with torch.load(weights_only=True): files that need arbitrary
    unpickling are rejected. The source's origin and settings are recorded in the
    metadata under "relabel_maps.convert".
    """
    options = dict(
        image_suffix=image_suffix,
        key_depth=key_depth,
        max_records=max_records,
        max_bytes=max_bytes,
        limit=limit,
        skip_invalid=skip_invalid,
        resume=resume,
        overwrite=overwrite,
    )
    if encoding:
        options["encoding"] = encoding
    if score_kind:
        options["score_kind"] = score_kind

    def total() -> int | None:  # walks the whole tree: only when a progress bar is shown
        if not os.path.isdir(source):
            return None
        n = sum(sum(1 for f in files if f.endswith(".pt")) for _, _, files in os.walk(source))
        return min(n, limit) if limit else n

    with progress_bar(total, "converting") as advance:
        if kind == "relabel":
            result = convert_relabel(source, output, strict_shape=not any_shape, progress=advance, **options)
        else:
            result = convert_tokenlabeling(source, output, progress=advance, **options)
    out = console()
    out.print(
        f"converted {result.records:,} maps -> {output} ({len(result.paths)} file(s), "
        f"{result.output_bytes / max(result.records, 1):,.0f} bytes/image; "
        f"source {result.source_bytes / max(result.records, 1):,.0f} bytes/image, ratio {result.ratio:.2f}x)"
    )
    err = console(stderr=True)
    for rel, why in result.skipped:
        err.print(f"skipped {rel}: {why}")
