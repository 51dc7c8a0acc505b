"""``info`` and ``verify``: look inside a dataset and check it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click
import numpy as np
from rich.markup import escape
from rich.table import Table

from relabel_maps.errors import RelabelMapsError
from relabel_maps.layout import is_hub_url, local_dataset_files
from relabel_maps.reader import LabelMaps, open_file
from relabel_maps.shards import ShardedReader
from relabel_maps.sharpness import label_sharpness

from .common import class_name, console, echo_json, open_maps, progress_bar

__all__ = ["info", "verify", "dataset_stats"]


def _local_files(path: str) -> list[tuple[str, str]]:
    return [] if is_hub_url(path) else local_dataset_files(path)


def dataset_stats(
    maps: LabelMaps, *, sample: int | None = None, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Record count, stored bytes, raw float32 size and the top-1 class histogram of ``maps``."""
    n = len(maps)
    positions = range(n) if not sample or sample >= n else np.unique(np.linspace(0, n - 1, sample).astype(int))
    num_classes = int(maps.metadata["num_classes"])
    hist = np.zeros(num_classes, dtype=np.int64)
    record_bytes = raw_bytes = locations = scanned = 0
    grids: dict[tuple[int, int], int] = {}
    for i in positions:
        key, lm = maps.at(int(i))
        record_bytes += maps.record_nbytes(key)
        k, h, w = lm.shape
        raw_bytes += 2 * k * h * w * 4  # the official layout: [2, k, H, W] float32
        locations += h * w
        grids[(h, w)] = grids.get((h, w), 0) + 1
        hist += np.bincount(lm.indices[0].reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
        scanned += 1
        if progress is not None:
            progress(1)
    return {
        "records": n,
        "scanned": scanned,
        "record_bytes": record_bytes,
        "raw_f32_bytes": raw_bytes,
        "locations": locations,
        "grids": grids,
        "histogram": hist,
    }


@click.command(
    epilog="""\b
Examples:
  relabel-maps info maps/
  relabel-maps info maps.rlm --top 20
  relabel-maps info maps/ --sample 1000 --json > info.json
  relabel-maps info maps/ --temperature 0.5          # label sharpness at T = 0.5
  relabel-maps info hf://my-name/imagenet-relabel"""
)
@click.argument("path")
@click.option(
    "--top", "top_n", default=10, show_default=True, type=click.IntRange(0),
    help="Classes shown in the top-1 histogram.",
)
@click.option(
    "--sample", type=click.IntRange(1), default=None, help="Scan only N evenly spaced records (default: all)."
)
@click.option(
    "--sharpness-sample", type=click.IntRange(0), default=32, show_default=True,
    help="Records (evenly spaced) whose labels are pooled for the label sharpness; 0 skips it.",
)
@click.option(
    "--temperature", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
    help="Temperature of the pooled labels in the label sharpness.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def info(path: str, top_n: int, sample: int | None, sharpness_sample: int, temperature: float, as_json: bool) -> None:
    """Show a dataset's metadata, size, compression, top-1 class histogram and
    label sharpness.

    PATH is a .rlm file, a folder of shards, an index JSON or hf://owner/repo.
    The compression ratio compares with the raw float32 layout of the official
    ReLabel release ([2, k, H, W] float32 per image).

    Label sharpness: the mean top-1 probability and entropy (nats; ln C is a
    uniform label) of whole-image labels and of 8 random crops (RandomResizedCrop)
    per sampled record, in each fill mode. Flat labels (top-1 near 1/C) come from
    a teacher with small logits under fill "zero": try fill "uniform" (exact
    probabilities, needs the stored log-sum-exp) or a temperature below 1.
    """
    files = _local_files(path)
    with open_maps(path) as maps:
        meta = dict(maps.metadata)
        with progress_bar(min(sample or len(maps), len(maps)), "scanning records") as advance:
            stats = dataset_stats(maps, sample=sample, progress=advance)
        records = _records_per_file(maps, files) if files else {}
        sharpness = label_sharpness(maps, sample=sharpness_sample, temperature=temperature) if sharpness_sample else []
        shards: list[dict[str, Any]] = []
        for name, local in files:
            entry: dict[str, Any] = {"file": name, "bytes": os.path.getsize(local)}
            if name.endswith(".rlm"):
                entry["records"] = records[name]
            shards.append(entry)
    n, scanned = stats["records"], stats["scanned"]
    total_bytes = sum(s["bytes"] for s in shards) if shards else None
    est_record_bytes = stats["record_bytes"] * n / scanned if scanned else 0
    raw = stats["raw_f32_bytes"] * n / scanned if scanned else 0
    stored = total_bytes if total_bytes is not None else est_record_bytes
    names = meta.get("class_names")
    hist = stats["histogram"]
    order = [int(c) for c in np.argsort(-hist, kind="stable")[:top_n] if hist[c] > 0]
    total_loc = max(int(hist.sum()), 1)
    summary = {
        "path": path,
        "records": n,
        "scanned_records": scanned,
        "files": shards,
        "total_bytes": total_bytes,
        "bytes_per_image": stored / n if n else None,
        "record_bytes_per_image": est_record_bytes / n if n else None,
        "raw_f32_bytes_per_image": raw / n if n else None,
        "compression_ratio": raw / stored if stored else None,
        "grids": {f"{h}x{w}": c for (h, w), c in sorted(stats["grids"].items())},
        "distinct_top1_classes": int((hist > 0).sum()),
        "top1_histogram": [
            {"class": c, "name": class_name(names, c), "locations": int(hist[c]), "share": float(hist[c]) / total_loc}
            for c in order
        ],
        "label_sharpness": sharpness,
    }
    if as_json:
        printable = {k: v for k, v in meta.items() if k != "class_names"}
        printable["class_names"] = f"{len(names)} names" if names else None
        echo_json({"metadata": printable, **summary})
        return
    _print_info(meta, summary)


def _records_per_file(maps: LabelMaps, files: list[tuple[str, str]]) -> dict[str, int]:
    """Records per ``.rlm`` file of the open local dataset ``maps`` (``files``: its
    :func:`_local_files`), from its shard readers: the ones the scan opened are not opened again."""
    if not isinstance(maps, ShardedReader):  # a single .rlm file
        return {name: len(maps) for name, _ in files if name.endswith(".rlm")}
    return {name: len(maps.shard(s)) for s, name in enumerate(maps.shard_names)}


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _print_info(meta: dict[str, Any], s: dict[str, Any]) -> None:
    out = console()
    t = Table(title="metadata", show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    for key, value in meta.items():
        if key == "class_names":
            value = f"{len(value)} names ({', '.join(map(str, value[:3]))}, ...)" if value else None
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(", ", ": "), default=str)
        t.add_row(key, "-" if value is None else str(value))
    out.print(t)

    t = Table(title="size", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    t.add_row("records", f"{s['records']:,}")
    if s["scanned_records"] != s["records"]:
        t.add_row("records scanned", f"{s['scanned_records']:,} (sizes below are estimates)")
    t.add_row("files", str(len(s["files"])) if s["files"] else "-")
    t.add_row("total size", _fmt_bytes(s["total_bytes"]))
    t.add_row("bytes / image", _fmt_bytes(s["bytes_per_image"]))
    t.add_row("record bytes / image", _fmt_bytes(s["record_bytes_per_image"]) + " (without metadata and index)")
    t.add_row("raw float32 / image", _fmt_bytes(s["raw_f32_bytes_per_image"]))
    ratio = s["compression_ratio"]
    t.add_row("compression ratio", f"{ratio:.2f}x" if ratio else "-")
    t.add_row("grids", ", ".join(f"{g} ({c:,})" for g, c in s["grids"].items()) or "-")
    out.print(t)

    if len(s["files"]) > 1:
        t = Table(title="files", title_justify="left")
        t.add_column("file")
        t.add_column("records", justify="right")
        t.add_column("bytes", justify="right")
        for f in s["files"]:
            t.add_row(f["file"], f"{f['records']:,}" if "records" in f else "-", _fmt_bytes(f["bytes"]))
        out.print(t)

    t = Table(title=f"top-1 classes ({s['distinct_top1_classes']} distinct)", title_justify="left")
    t.add_column("class", justify="right")
    t.add_column("name")
    t.add_column("locations", justify="right")
    t.add_column("share", justify="right")
    for row in s["top1_histogram"]:
        t.add_row(str(row["class"]), row["name"] or "-", f"{row['locations']:,}", f"{100 * row['share']:.1f}%")
    out.print(t)
    _print_sharpness(s["label_sharpness"])


def _print_sharpness(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    first = rows[0]
    title = (f"label sharpness ({first['records']} records, {first['crops']} random crops, "
             f"temperature {first['temperature']:g}; uniform label: entropy {first['max_entropy']:.2f})")
    t = Table(title=title, title_justify="left")
    for name in ("fill", "whole image: top-1", "entropy", "random crop: top-1", "median top-1", "entropy"):
        t.add_column(name, justify="left" if name == "fill" else "right")
    for r in rows:
        t.add_row(r["fill"], *(f"{r[k]:.3f}" if r[k] is not None else "-" for k in (
            "whole_top1", "whole_entropy", "crop_top1", "crop_top1_median", "crop_entropy")))
    console().print(t)


def _verify(path: str, advance: Callable[..., None]) -> tuple[int, int, list[dict[str, str]]]:
    """Check a dataset with the library's :meth:`~relabel_maps.reader.LabelMaps.check`; returns
    ``(records, files, problems)``, each problem with the file it concerns."""
    label = path if is_hub_url(path) else os.path.basename(os.path.normpath(path))
    try:
        maps = open_maps(path)
    except (RelabelMapsError, OSError) as exc:  # e.g. an unreadable index: check each file on its own
        return _verify_files(path, label, exc, advance)
    with maps:
        if not isinstance(maps, ShardedReader):
            advance(0, total=1)
            return len(maps), 1, [_row(label, p.message) for p in maps.check(progress=advance)]
        advance(0, total=len(maps.shard_names))
        problems = [_row(p.where or label, p.message) for p in maps.check(progress=advance)]
        return _records_found(maps), len(maps.shard_names), problems


def _records_found(maps: ShardedReader) -> int:
    """Records in the shard files that open (the index's count may differ)."""
    found = 0
    for s in range(len(maps.shard_names)):
        try:
            found += len(maps.shard(s))
        except (RelabelMapsError, OSError):
            pass
    return found


def _verify_files(
    path: str, label: str, error: Exception, advance: Callable[..., None]
) -> tuple[int, int, list[dict[str, str]]]:
    """When ``path`` does not open as a dataset: its error (unless a file repeats it), then every
    visible ``.rlm`` file of the folder checked as a file of its own."""
    if is_hub_url(path) or not (os.path.isdir(path) or path.endswith(".json")):
        return 0, 1, [_row(label, str(error))]
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    names = sorted(f for f in os.listdir(folder) if f.endswith(".rlm") and not f.startswith("."))
    advance(0, total=len(names))
    records = 0
    problems: list[dict[str, str]] = []
    for name in names:
        try:
            with open_file(os.path.join(folder, name)) as reader:
                records += len(reader)
                problems += [_row(name, p.message) for p in reader.check(progress=advance)]
        except RelabelMapsError as exc:
            problems.append(_row(name, str(exc)))
    if all(p["problem"] != str(error) for p in problems):
        problems.insert(0, _row(label, str(error)))
    return records, len(names), problems


def _row(where: str, problem: str) -> dict[str, str]:
    return {"where": where, "problem": problem}


@click.command(
    epilog="""\b
Examples:
  relabel-maps verify maps/
  relabel-maps verify maps-00003-of-00012.rlm
  relabel-maps verify maps/ --json"""
)
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def verify(path: str, as_json: bool) -> None:
    """Check every checksum and structural rule of a dataset.

    Each shard is checked on its own (header, trailer, metadata/index CRCs, SHA-256
    listed in the index, every record's CRC32 and decoding), then the dataset as a
    whole (record counts, shared settings, keys unique across shards).
    Exits with status 1 and lists the bad shards and keys when anything is wrong.
    """
    if not is_hub_url(path) and not os.path.exists(path):
        raise click.ClickException(f"no such file or folder: {path}")
    with progress_bar(None, "verifying shards") as advance:
        records, nfiles, problems = _verify(path, advance)
    ok = not problems
    if as_json:
        echo_json({"path": path, "ok": ok, "records": records, "files": nfiles, "problems": problems})
    else:
        if ok:
            console(markup=True).print(f"[green]OK[/green]: {records:,} records in {nfiles} file(s), all checks passed")
        else:
            err = console(stderr=True, markup=True)
            for p in problems:
                err.print(f"[red]BAD[/red] {escape(p['where'])}: {escape(p['problem'])}")
            err.print(f"{len(problems)} problem(s) found in {escape(path)}")
    if not ok:
        click.get_current_context().exit(1)
