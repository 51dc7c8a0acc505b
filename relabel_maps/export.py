"""Per-image summary table of a label-map dataset, written as Parquet (pyarrow is imported lazily).

One row per record, in key order:

- ``key`` (string): the record's key (usually the image's relative path);
- ``grid_height``, ``grid_width`` (int32): the label map's grid ``(H, W)`` (not the image's size);
- ``top_classes`` (list<int32>): the ``top`` classes of the whole-image pooled soft label;
- ``top_scores`` (list<float32>): their probabilities (``pool(box=(0, 0, 1, 1))``);
- ``top_names`` (list<string>): their class names (only when the dataset stores names);
- ``top1_share`` (float32): fraction of grid locations whose own top-1 class is the pooled top-1
  class (how much of the image it covers).

The pooled label uses the dataset's default fill mode unless ``fill`` is given (see POOLING.md).
The output depends only on the data, so exporting the same dataset twice gives identical bytes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, require
from .labelmap import LabelMap

__all__ = ["summarize", "summary_rows", "export_parquet", "parquet_bytes"]

_ROW_GROUP = 8192


def summarize(labelmap: LabelMap, *, top: int = 5, fill: str | None = None) -> dict[str, Any]:
    """Summary of one label map: its whole-image pooled top classes and the top-1 class share."""
    if top < 1:
        raise InvalidArgumentError(f"top must be >= 1, got {top}")
    pooled = np.asarray(labelmap.pool((0.0, 0.0, 1.0, 1.0), fill=fill), dtype=np.float64)
    order = np.argsort(-pooled, kind="stable")[:top]
    share = float(np.mean(labelmap.top1() == int(order[0])))
    return {
        "key": labelmap.key,
        "grid_height": labelmap.height,
        "grid_width": labelmap.width,
        "top_classes": [int(c) for c in order],
        "top_scores": [float(pooled[c]) for c in order],
        "top1_share": share,
    }


def summary_rows(
    maps: Mapping[str, LabelMap],
    *,
    top: int = 5,
    fill: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield :func:`summarize` of every record of ``maps`` in key order."""
    for key in maps:
        row = summarize(maps[key], top=top, fill=fill)
        row["key"] = key
        if progress is not None:
            progress(1)
        yield row


def _schema(pa: Any, with_names: bool) -> Any:
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("grid_height", pa.int32(), nullable=False),
        pa.field("grid_width", pa.int32(), nullable=False),
        pa.field("top_classes", pa.list_(pa.int32()), nullable=False),
        pa.field("top_scores", pa.list_(pa.float32()), nullable=False),
    ]
    if with_names:
        fields.append(pa.field("top_names", pa.list_(pa.string()), nullable=False))
    fields.append(pa.field("top1_share", pa.float32(), nullable=False))
    return pa.schema(fields)


def _batch(pa: Any, schema: Any, rows: list[dict[str, Any]], names: list[str] | None) -> Any:
    columns: dict[str, Any] = {
        "key": [r["key"] for r in rows],
        "grid_height": [r["grid_height"] for r in rows],
        "grid_width": [r["grid_width"] for r in rows],
        "top_classes": [r["top_classes"] for r in rows],
        "top_scores": [r["top_scores"] for r in rows],
    }
    if names is not None:
        columns["top_names"] = [[str(names[c]) if c < len(names) else "" for c in r["top_classes"]] for r in rows]
    columns["top1_share"] = [r["top1_share"] for r in rows]
    return pa.RecordBatch.from_pydict(columns, schema=schema)


def export_parquet(
    maps: Any,
    out: str | os.PathLike | Any,
    *,
    top: int = 5,
    fill: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the summary table of ``maps`` (an open dataset) to ``out`` (a path or binary file);
    return the number of rows."""
    pa = require("pyarrow", "parquet")
    pq = require("pyarrow.parquet", "parquet")
    names = (getattr(maps, "metadata", None) or {}).get("class_names")
    names = list(names) if names else None
    schema = _schema(pa, names is not None)
    if isinstance(out, (str, os.PathLike)):  # write next to the target, then rename: no half files
        final = os.fspath(out)
        tmp = os.path.join(os.path.dirname(final) or ".", f".{os.path.basename(final)}.tmp")
        try:
            with open(tmp, "wb") as fh:
                count = export_parquet(maps, fh, top=top, fill=fill, progress=progress)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return count
    count = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        rows: list[dict[str, Any]] = []
        for row in summary_rows(maps, top=top, fill=fill, progress=progress):
            rows.append(row)
            if len(rows) == _ROW_GROUP:
                writer.write_batch(_batch(pa, schema, rows, names))
                count += len(rows)
                rows = []
        if rows or count == 0:
            writer.write_batch(_batch(pa, schema, rows, names))
            count += len(rows)
    return count


def parquet_bytes(maps: Any, **kwargs: Any) -> bytes:
    """:func:`export_parquet` into memory."""
    buf = io.BytesIO()
    export_parquet(maps, buf, **kwargs)
    return buf.getvalue()
