"""The audit table: one row per image, streamed to Parquet (pyarrow) or CSV, written atomically.

============================ ============= ==========================================================
column                       type          meaning
============================ ============= ==========================================================
key                          string        the record's key
label                        int32         the label as a teacher class; -1 not a teacher class, -2 none
label_given                  string        the label as the dataset gives it
label_name                   string        the label's class name
p_label                      float32       the label's whole-image pooled probability (null: no label)
label_rank                   int32         classes the teacher ranks above the label (-1: no label)
label_share                  float32       share of locations whose top-1 is the label
label_local_max              float32       the label's highest per-location probability
teacher_class, teacher_name  int32, str    the teacher's top-1 pooled class
teacher_prob                 float32       its pooled probability
teacher_local_max            float32       the highest top-1 probability anywhere on the map
top_classes/probs/shares     list          the teacher's top classes, pooled probabilities, location shares
objects                      list<int32>   the best class of each object (multi-object: two or more)
real_labels                  list<int32>   the ReaL-style label set
mislabelled, multi_object,   bool          the flags (see :mod:`relabel_maps.audit.flags`)
not_visible, unknown_label
suggested                    int32         the teacher's class for a likely mislabelled image, else -1
suspicion                    float32       0 (the maps agree with the label) .. 1 (they contradict it)
fill                         string        the pooled label's fill mode
============================ ============= ==========================================================

CSV writes the list columns as JSON arrays.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import InvalidArgumentError, require
from .evidence import Evidence
from .flags import FLAG_NAMES, Flags

__all__ = ["TableWriter", "COLUMNS", "table_format"]

COLUMNS = (
    "key", "label", "label_given", "label_name", "p_label", "label_rank", "label_share", "label_local_max",
    "teacher_class", "teacher_name", "teacher_prob", "teacher_local_max", "top_classes", "top_probs",
    "top_shares", "objects", "real_labels", *FLAG_NAMES, "suggested", "suspicion", "fill",
)  # fmt: skip
_LISTS = {"top_classes", "top_probs", "top_shares", "objects", "real_labels"}
#: rows per Parquet row group (the writer keeps each group's metadata until the file is closed)
ROW_GROUP = 16384


def table_format(path: str | os.PathLike[str]) -> str:
    """``"parquet"`` or ``"csv"`` from the file name."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise InvalidArgumentError(f"audit table must end in .parquet or .csv, got {Path(path).name!r}")


def _columns(ev: Evidence, flags: Flags, given: Sequence[str | None], names: np.ndarray) -> dict[str, Any]:
    """Column name → array (lists as ``(values, mask)`` pairs of padded arrays)."""
    known = ev.label >= 0
    top1 = ev.top_classes[:, 0]
    valid = ev.top_classes >= 0
    return {
        "key": ev.keys,
        "label": ev.label,
        "label_given": list(given),
        "label_name": np.where(known, names[np.maximum(ev.label, 0)], ""),
        "p_label": ev.p_label,
        "label_rank": ev.label_rank,
        "label_share": ev.label_share,
        "label_local_max": ev.label_local_max,
        "teacher_class": top1,
        "teacher_name": names[np.maximum(top1, 0)],
        "teacher_prob": ev.top_probs[:, 0],
        "teacher_local_max": ev.teacher_local_max,
        "top_classes": (ev.top_classes, valid),
        "top_probs": (ev.top_probs, valid),
        "top_shares": (ev.top_shares, valid),
        "objects": (flags.objects, flags.objects >= 0),
        "real_labels": (ev.top_classes, flags.real_mask),
        **{name: getattr(flags, name) for name in FLAG_NAMES},
        "suggested": flags.suggested,
        "suspicion": flags.suspicion,
        "fill": ev.fill,
    }


class TableWriter:
    """Write batches of rows to ``path`` (``.parquet`` or ``.csv``); the file appears on :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], class_names: Sequence[str]) -> None:
        self.path = Path(path)
        self.format = table_format(self.path)
        self._names = np.array([str(n) for n in class_names], dtype=object)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.rows = 0
        self._pending: list[Any] = []  # record batches not yet written: one Parquet row group per ROW_GROUP rows
        self._pending_rows = 0
        self._fh: IO[str] | None = None
        self._csv: Any = None
        self._pq: Any = None
        self._pa: Any = None
        self._schema: Any = None
        if self.format == "parquet":
            self._pa = require("pyarrow", "audit")
            self._pq = require("pyarrow.parquet", "audit")
            self._schema = self._make_schema()
            self._writer = self._pq.ParquetWriter(str(self._tmp), self._schema, compression="zstd")
        else:
            self._fh = open(self._tmp, "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._fh)
            self._csv.writerow(COLUMNS)

    def _make_schema(self) -> Any:
        pa = self._pa
        f32, i32, s = pa.float32(), pa.int32(), pa.string()
        types = {
            "key": s, "label": i32, "label_given": s, "label_name": s, "p_label": f32, "label_rank": i32,
            "label_share": f32, "label_local_max": f32, "teacher_class": i32, "teacher_name": s,
            "teacher_prob": f32, "teacher_local_max": f32, "top_classes": pa.list_(i32),
            "top_probs": pa.list_(f32), "top_shares": pa.list_(f32), "objects": pa.list_(i32),
            "real_labels": pa.list_(i32), **dict.fromkeys(FLAG_NAMES, pa.bool_()), "suggested": i32,
            "suspicion": f32, "fill": s,
        }  # fmt: skip
        return pa.schema([pa.field(name, types[name]) for name in COLUMNS])

    def write(self, ev: Evidence, flags: Flags, given: Sequence[str | None]) -> None:
        """Append the rows of one batch."""
        if not len(ev):
            return
        cols = _columns(ev, flags, given, self._names)
        if self.format == "parquet":
            self._pending.append(self._arrow_batch(cols))
            self._pending_rows += len(ev)
            if self._pending_rows >= ROW_GROUP:
                self._flush()
        else:
            self._write_csv(cols, len(ev))
        self.rows += len(ev)

    def _arrow_batch(self, cols: dict[str, Any]) -> Any:
        pa = self._pa
        arrays = []
        for name, field in zip(COLUMNS, self._schema, strict=True):
            value = cols[name]
            if name in _LISTS:
                values, mask = value
                offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
                flat = pa.array(values[mask], type=field.type.value_type)
                arrays.append(pa.ListArray.from_arrays(pa.array(offsets), flat))
            elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
                arrays.append(pa.array(value, type=field.type, mask=np.isnan(value)))  # NaN -> null
            else:
                arrays.append(pa.array(value, type=field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self._schema)

    def _write_csv(self, cols: dict[str, Any], n: int) -> None:
        def cell(name: str, i: int) -> Any:
            value = cols[name]
            if name in _LISTS:
                values, mask = value
                row = values[i][mask[i]]
                return json.dumps([float(f"{x:.9g}") for x in row] if row.dtype.kind == "f" else row.tolist())
            x = value[i]
            if isinstance(x, np.floating):
                return "" if np.isnan(x) else f"{float(x):.9g}"
            if isinstance(x, np.bool_):
                return int(x)
            return "" if x is None else x

        for i in range(n):
            self._csv.writerow([cell(name, i) for name in COLUMNS])

    def _flush(self) -> None:
        if self._pending:
            table = self._pa.Table.from_batches(self._pending, schema=self._schema)
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
            self._pending, self._pending_rows = [], 0

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self.format == "parquet":
            self._flush()
            if self.rows == 0:
                self._writer.write_batch(self._pa.RecordBatch.from_pylist([], schema=self._schema))
            self._writer.close()
        elif self._fh is not None:
            self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        try:
            if self.format == "parquet":
                self._writer.close()
            elif self._fh is not None:
                self._fh.close()
        finally:
            if self._tmp.exists():
                self._tmp.unlink()
