"""``audit``: find the images whose labels are wrong or incomplete, and write a report to look at."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from relabel_maps.audit import DEFAULT_TOP, Thresholds, load_labels
from relabel_maps.audit import audit as run_audit
from relabel_maps.pooling import FILL_MODES

from .common import console, echo_json, open_maps, progress_bar

__all__ = ["audit"]

_UNIT = click.FloatRange(0.0, 1.0)
_DEFAULTS = Thresholds()


@click.command(
    epilog="""\b
Examples:
  relabel-maps audit maps/ --labels imagenet/train --out audit/          # ImageFolder (WordNet ids or names)
  relabel-maps audit maps/ --labels labels.csv --images photos/ --out audit/
  relabel-maps audit maps/ --labels train.parquet --label-column label --out audit/ --cleanlab
  relabel-maps audit maps/ --labels shards/ --out audit/ --table audit.csv --gallery 500
\b
Writes OUT/audit.parquet (one row per image), OUT/summary.json, OUT/real_labels.json (a ReaL-style
label set per image) and OUT/report.html (self-contained: open it in any browser, offline).
Thresholds left out are chosen from the data (see the summary and the report)."""
)
@click.argument("maps")
@click.option("--labels", "labels", required=True, help="ImageFolder tree, CSV, Parquet, or tar shards (.cls).")
@click.option(
    "--label-format", type=click.Choice(("auto", "folder", "csv", "parquet", "tar")), default="auto",
    show_default=True, help="How to read --labels.",
)  # fmt: skip
@click.option("--key-column", default=None, help="Key column of a CSV/Parquet label table.")
@click.option("--label-column", default=None, help="Label column of a CSV/Parquet label table.")
@click.option("--images", default=None, type=click.Path(file_okay=False), help="Images by key, for thumbnails.")
@click.option("--out", default="audit", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--table", default="audit.parquet", show_default=True, help="Table file name (.parquet or .csv).")
@click.option("--gallery", default=200, show_default=True, type=click.IntRange(0), help="Flagged images in the report.")
@click.option("--no-report", is_flag=True, help="Write the table and summary only.")
@click.option("--top", default=DEFAULT_TOP, show_default=True, type=click.IntRange(1, 50), help="Teacher classes kept.")
@click.option("--fill", type=click.Choice(FILL_MODES), default=None, help="Pooled label's fill (default: exact).")
@click.option("--weak", type=_UNIT, default=None, help="Label weak below this probability everywhere (default: data).")
@click.option("--confident", type=_UNIT, default=None, help="Teacher confident from this pooled probability.")
@click.option("--region", type=_UNIT, default=_DEFAULTS.region, show_default=True, help="Locations an object wins.")
@click.option(
    "--same-object", type=_UNIT, default=_DEFAULTS.same_object, show_default=True,
    help="Overlap of two classes' locations from which they are one object.",
)
@click.option("--cleanlab", "with_cleanlab", is_flag=True, help="Compare with cleanlab's find_label_issues.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes reading the maps (default: CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def audit(
    maps: str, labels: str, label_format: str, key_column: str | None, label_column: str | None, images: str | None,
    out: str, table: str, gallery: int, no_report: bool, top: int, fill: str | None, weak: float | None,
    confident: float | None, region: float, same_object: float, with_cleanlab: bool, workers: int | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Find likely mislabelled, multi-object and not-visible images from the label maps."""
    source = load_labels(
        labels, format=label_format, key_column=key_column, label_column=label_column, images=images
    )
    thresholds = Thresholds(confident=confident, weak=weak, region=region, same_object=same_object)
    with open_maps(maps) as dataset:
        with progress_bar(len(dataset), "auditing") as advance:
            result = run_audit(
                dataset, source, out, table=table, report=not no_report, gallery=gallery, thresholds=thresholds,
                fill=fill, top=top, workers=workers, cleanlab=with_cleanlab, progress=advance, name=maps,
            )  # fmt: skip
    if as_json:
        echo_json(result.summary)
        return
    _print_summary(result.summary, result.gallery)


def _print_summary(summary: dict[str, Any], gallery: list[Any]) -> None:
    con = console()
    c = summary["counts"]
    agreement = summary["classes"]["agreement"]
    t = Table(title="label audit", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    rows = [
        ("images", f"{c['images']:,}"),
        ("labelled with a teacher class", f"{c['labelled']:,}"),
        ("teacher agrees (top-1)", "-" if agreement is None else f"{100 * agreement:.1f}%"),
        ("likely mislabelled", f"{c['mislabelled']:,}"),
        ("multi-object", f"{c['multi_object']:,}"),
        ("label not visible / OOD", f"{c['not_visible']:,}"),
        ("label not a teacher class", f"{c['unknown_label']:,}"),
        ("no label", f"{c['unlabelled']:,}"),
    ]
    for name, value in rows:
        t.add_row(name, value)
    th = summary["thresholds"]
    t.add_row("thresholds", f"weak {th['weak']:.4f}, confident ~{th['confident']['median']:.3f} (per class)")
    con.print(t)

    confusions = summary["classes"]["confusions"][:10]
    if confusions:
        ct = Table(title="most frequent confusions (label -> teacher)", title_justify="left")
        for col, justify in (("label", "left"), ("teacher's top-1", "left"), ("images", "right"), ("reverse", "right")):
            ct.add_column(col, justify=justify)  # type: ignore[arg-type]
        for row in confusions:
            ct.add_row(row["label_name"], row["teacher_name"], str(row["count"]), str(row["reverse"]))
        con.print(ct)

    if gallery:
        gt = Table(title="most suspicious", title_justify="left")
        gt.add_column("key", overflow="fold")
        for col in ("label", "teacher", "flags"):
            gt.add_column(col)
        gt.add_column("suspicion", justify="right")
        for item in gallery[:10]:
            teacher = item.teacher[0]["name"] if item.teacher else ""
            label = item.label_name or (item.label_given or "")
            gt.add_row(item.key, label, teacher, ", ".join(item.flags), f"{item.suspicion:.2f}")
        con.print(gt)

    for row in summary["unknown_labels"][:5]:
        con.print(f"label {row['label']!r} ({row['images']:,} images): {row['reason']}")
    comp = summary.get("cleanlab")
    if comp:
        con.print(
            f"cleanlab: both {comp['both']}, audit only {comp['audit_only']}, cleanlab only {comp['cleanlab_only']}, "
            f"agreement {100 * comp['agreement']:.1f}% of {comp['images']:,} labelled images"
        )
    for name, path in summary["outputs"].items():
        con.print(f"{name}: {path}")
