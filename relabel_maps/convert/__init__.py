"""Converters from released per-image label-map tensors to the relabel-maps format.

Both the official ReLabel release and TokenLabeling store one ``torch.save``'d tensor per image,
``[2, k, H, W]``: index 0 holds the top-k scores, index 1 the class indices (as floats), in a tree
``<class folder>/<image stem>.pt`` mirroring ImageNet's ``train/`` folder (their loaders look a map
up as ``'/'.join(path.split('/')[-2:]).split('.')[0] + '.pt'``). A source is that folder tree (or
any folder above it) or a tar of it.

Tensors are read with ``torch.load(weights_only=True)`` only: a file that needs arbitrary
unpickling is rejected, never executed. A key is what those loaders look up, read backwards: the
last ``key_depth`` (default 2) components of the file's path, with ``.pt`` replaced by
``image_suffix`` (``".JPEG"`` by default). So ``.../n01440764/n01440764_10026.pt`` becomes the key
``n01440764/n01440764_10026.JPEG``, the image's path relative to ImageNet's ``train/`` folder,
however deep the tree or tar nests it. ``key_depth=0`` keeps the whole path relative to the source;
``image_suffix=""`` keeps the stem alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..classmap import class_names_for
from ..errors import FormatError, InvalidArgumentError, require
from ..writer import Writer

__all__ = ["ConvertResult", "iter_pt_files", "key_for", "load_tensor", "split_tensor", "convert_release"]

PROVENANCE_KEY = "relabel_maps.convert"
#: a per-image tensor file larger than this is refused before it is read (the release's are ~10 KB)
MAX_PT_BYTES = 64 << 20


@dataclasses.dataclass
class ConvertResult:
    """Outcome of a conversion."""

    records: int
    skipped: list[tuple[str, str]]
    source_bytes: int
    output_bytes: int
    paths: list[str]

    @property
    def ratio(self) -> float:
        """Source bytes / converted bytes."""
        return self.source_bytes / self.output_bytes if self.output_bytes else float("nan")


def key_for(relpath: str, image_suffix: str = ".JPEG", key_depth: int = 2) -> str:
    """Key of the tensor file at ``relpath``: its last ``key_depth`` path components (all for 0),
    ``.pt`` replaced by ``image_suffix``."""
    parts = [p for p in relpath.replace(os.sep, "/").split("/") if p not in ("", ".")]
    if not parts or not parts[-1].endswith(".pt"):
        raise InvalidArgumentError(f"not a .pt file: {relpath}")
    if key_depth < 0:
        raise InvalidArgumentError(f"key_depth must be >= 0, got {key_depth}")
    if key_depth:
        parts = parts[-key_depth:]
    return "/".join(parts)[: -len(".pt")] + image_suffix


def iter_pt_files(source: str | os.PathLike) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    """Yield ``(relative path, size, read())`` for every ``.pt`` file under a folder or in a tar.

    Folders are walked in sorted order; a tar is streamed once, in member order (no random access).
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".pt"):
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, source).replace(os.sep, "/")
                    size = os.path.getsize(full)
                    yield rel, size, functools.partial(_read, full, rel, size)
        return
    if not os.path.exists(source):
        raise FileNotFoundError(f"no such file or folder: {source}")
    if not tarfile.is_tarfile(source):
        raise FormatError(f"{source} is neither a folder nor a tar archive")
    try:
        with tarfile.open(source, mode="r|*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".pt"):
                    continue
                name = posixpath.normpath(member.name).lstrip("/")
                if name.startswith("../"):
                    raise FormatError(f"tar member escapes the archive: {member.name}")
                if member.size > MAX_PT_BYTES:
                    data = None  # refused by read(), as a bad file (so --skip-invalid can skip it)
                else:
                    fh = tar.extractfile(member)
                    data = fh.read() if fh is not None else b""
                yield name, member.size, functools.partial(_read_member, data, name, member.size)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise FormatError(f"{source}: damaged tar archive ({exc})") from None


def _check_size(rel: str, size: int) -> None:
    if size > MAX_PT_BYTES:
        raise FormatError(f"{rel}: {size} bytes, larger than any label-map tensor ({MAX_PT_BYTES} bytes)")


def _read_member(data: bytes | None, rel: str, size: int) -> bytes:
    _check_size(rel, size)
    assert data is not None  # only a member over the size limit is left unread
    return data


def _read(path: str, rel: str, size: int) -> bytes:
    _check_size(rel, size)
    with open(path, "rb") as fh:
        return fh.read()


def load_tensor(data: bytes, name: str = "<tensor>") -> np.ndarray:
    """``torch.load(weights_only=True)`` of one file's bytes → float32 numpy array.

    Anything but a plain tensor (or a file that needs arbitrary unpickling) is a :class:`FormatError`.
    """
    torch = require("torch", "torch")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... from a bad/unsafe file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"{name}: not a loadable tensor file ({first})") from None
    if not isinstance(obj, torch.Tensor):
        raise FormatError(f"{name}: holds a {type(obj).__name__}, expected a tensor")
    return obj.detach().to(torch.float32).cpu().numpy()


def split_tensor(
    array: np.ndarray,
    name: str,
    *,
    num_classes: int,
    expect_k: int | None = None,
    expect_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a ``[2, k, H, W]`` release tensor into ``(indices uint, scores float32)``, checking it."""
    if array.ndim != 4 or array.shape[0] != 2:
        raise FormatError(f"{name}: shape {list(array.shape)}, expected [2, k, H, W]")
    _, k, h, w = array.shape
    if expect_k is not None and k != expect_k:
        raise FormatError(f"{name}: k={k}, expected {expect_k}")
    if expect_hw is not None and (h, w) != tuple(expect_hw):
        raise FormatError(f"{name}: grid {h}x{w}, expected {expect_hw[0]}x{expect_hw[1]}")
    scores = np.ascontiguousarray(array[0], dtype=np.float32)
    raw_idx = array[1]
    if not np.isfinite(scores).all() or not np.isfinite(raw_idx).all():
        raise FormatError(f"{name}: non-finite values")
    if np.any(raw_idx != np.round(raw_idx)) or raw_idx.min() < 0 or raw_idx.max() >= num_classes:
        raise FormatError(f"{name}: class indices are not integers in [0, {num_classes})")
    return raw_idx.astype(np.int64), scores


def convert_release(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    source_name: str,
    source_format: str,
    num_classes: int,
    score_kind: str,
    encoding: str | None,
    teacher: Mapping[str, Any] | None,
    class_set: str | None,
    class_names: list[str] | None = None,
    image_suffix: str = ".JPEG",
    key_depth: int = 2,
    expect_k: int | None = None,
    expect_hw: tuple[int, int] | None = None,
    max_records: int | None = None,
    max_bytes: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    skip_invalid: bool = False,
    limit: int | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ConvertResult:
    """Convert a folder tree or tar of per-image ``[2, k, H, W]`` tensors into a label-map dataset.

    ``score_kind="auto"`` decides from the data (probabilities when every score lies in [0, 1] and
    each location's scores sum to at most 1, else logits), looking at the first tensor.
    ``class_names`` default to the names the package knows for ``class_set`` (ImageNet-1k's).
    """
    if class_names is None:
        class_names = class_names_for(class_set, num_classes)
    if score_kind not in ("logits", "probabilities", "auto"):
        raise InvalidArgumentError(f"score_kind must be logits, probabilities or auto, got {score_kind!r}")
    provenance = {
        "source": source_name,
        "source_format": source_format,
        "source_path": os.path.basename(os.path.normpath(os.fspath(source))),
        "image_suffix": image_suffix,
        "key_depth": key_depth,
    }
    meta = {PROVENANCE_KEY: provenance}
    if extra_metadata:
        meta.update(extra_metadata)
    files = iter_pt_files(source)
    skipped: list[tuple[str, str]] = []
    source_bytes = 0
    records = 0
    writer = None
    pending = _PendingMaps()
    try:
        for rel, size, read in files:
            if limit is not None and records >= limit:
                break
            key = key_for(rel, image_suffix, key_depth)
            if writer is None or not (resume and key in writer):  # keys the earlier run wrote are not read again
                try:
                    indices, scores = split_tensor(
                        load_tensor(read(), rel), rel, num_classes=num_classes, expect_k=expect_k, expect_hw=expect_hw
                    )
                except FormatError as exc:
                    if not skip_invalid:
                        raise
                    skipped.append((rel, str(exc)))
                    if progress is not None:
                        progress(1)
                    continue
                if writer is None:
                    kind = _detect_kind(scores) if score_kind == "auto" else score_kind
                    provenance["score_kind"] = kind
                    writer = Writer(
                        output,
                        num_classes=num_classes,
                        k=int(indices.shape[0]),
                        score_kind=kind,
                        encoding=encoding,
                        teacher=dict(teacher) if teacher else None,
                        class_set=class_set,
                        class_names=class_names,
                        metadata=meta,
                        max_records=max_records,
                        max_bytes=max_bytes,
                        overwrite=overwrite,
                        resume=resume,
                    )
                if not (resume and key in writer):  # the first file opens the writer, then may be a written key
                    pending.add(writer, key, indices, scores)
            source_bytes += size
            records += 1
            if progress is not None:
                progress(1)
        if writer is None:
            raise FormatError(f"no convertible .pt tensors found in {os.fspath(source)}")
        pending.flush(writer)
        paths = [os.fspath(p) for p in (writer.close() or [])]
    except BaseException:
        if writer is not None:
            if resume:  # what was read before the failure is kept for the next run
                with contextlib.suppress(Exception):
                    pending.flush(writer)
            _abort(writer)  # deletes partial output, or (resume) flushes it for the next run
        raise
    out_bytes = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    return ConvertResult(records, skipped, source_bytes, out_bytes, paths)


class _PendingMaps:
    """Maps waiting to be written together: :meth:`Writer.add_many` encodes and compresses a batch far
    faster than one ``add`` per map, with the same bytes."""

    BATCH = 256

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.indices: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []

    def add(self, writer: Writer, key: str, indices: np.ndarray, scores: np.ndarray) -> None:
        if self.keys and indices.shape != self.indices[0].shape:  # a batch holds maps of one shape
            self.flush(writer)
        self.keys.append(key)
        self.indices.append(indices)
        self.scores.append(scores)
        if len(self.keys) >= self.BATCH:
            self.flush(writer)

    def flush(self, writer: Writer) -> None:
        if self.keys:
            writer.add_many(self.keys, np.stack(self.indices), np.stack(self.scores))
        self.keys, self.indices, self.scores = [], [], []


def _abort(writer: Any) -> None:
    abort = getattr(writer, "abort", None)
    if callable(abort):
        try:
            abort()
        except Exception:  # pragma: no cover - best effort cleanup
            pass


def _detect_kind(scores: np.ndarray) -> str:
    if scores.min() >= 0.0 and scores.max() <= 1.0 and float(scores.sum(axis=0).max()) <= 1.0 + 1e-3:
        return "probabilities"
    return "logits"
