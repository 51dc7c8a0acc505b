"""Parquet files (and Hugging Face datasets stored as Parquet) as a stream source: one unit per row
group, read with pyarrow a few rows at a time (``iter_batches``), so memory stays flat however
large the file or its row groups.

The image column (``image_column``, default ``image``) is a Hugging Face ``Image`` struct
(``bytes``, ``path``) or a plain binary column. A sample's key is the ``key_column``'s value when
one is named (a column, or a struct field as ``column.field``, e.g. ``image.path`` or
``__key__``), else ``{file stem}/{row}`` (:func:`relabel_maps.samplekeys.parquet_key`). A row
without image bytes is reported (``missing-image``), as is a null key (``missing-key``), a file
that is not Parquet or a row group that does not decode (``corrupt-file``: the rows before are kept).
A column that does not exist is the caller's mistake and raises when the source is opened.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...errors import InvalidArgumentError, require
from ...samplekeys import parquet_key
from .base import FileRef, RawSample, StreamSource, Unit
from .files import is_transport_error, open_file, resilient

__all__ = ["ParquetSource", "DEFAULT_IMAGE_COLUMN"]

DEFAULT_IMAGE_COLUMN = "image"
_ROWS_PER_READ = 32  # rows decoded from Parquet at a time
_FOOTER_THREADS = 8  # footers read at once (remote files: one round trip each)


def _column(schema: Any, spec: str, what: str, source: str) -> tuple[str, str | None]:
    """``(column, struct field or None)`` of ``spec`` (``col`` or ``col.field``) in an Arrow ``schema``."""
    pa = require("pyarrow", "sources")
    names = list(schema.names)
    if spec in names:
        return spec, None
    col, _, field = spec.partition(".")
    if field and col in names:
        kind = schema.field(col).type
        if pa.types.is_struct(kind) and kind.get_field_index(field) >= 0:
            return col, field
    raise InvalidArgumentError(f"{source}: no {what} column {spec!r} (columns: {', '.join(names)})")


class ParquetSource(StreamSource):
    """Parquet ``files`` (local or ``hf://``), one unit per row group, in file then row-group order."""

    kind = "parquet"

    def __init__(self, files: Sequence[FileRef], image_column: str | None = None,
                 key_column: str | None = None) -> None:
        self.image_column = image_column or DEFAULT_IMAGE_COLUMN
        self.key_column = key_column
        with ThreadPoolExecutor(min(_FOOTER_THREADS, max(1, len(files)))) as pool:
            footers = list(pool.map(self._footer, files))
        units = []
        for f, groups in zip(files, footers, strict=True):
            if groups is None:  # unreadable: one unit whose read reports it
                units.append(Unit(f, 0, None, 0))
                continue
            first = 0
            for g, rows in enumerate(groups):
                units.append(Unit(f, g, rows, first))
                first += rows
        key = key_column if key_column is not None else "{file stem}/{row}"
        super().__init__(units, {"key": key, "image_column": self.image_column})

    def _footer(self, f: FileRef) -> list[int] | None:
        """Row counts of ``f``'s row groups (``None``: not a readable Parquet file); checks that the image
        and key columns exist."""
        pq = require("pyarrow.parquet", "sources")

        def read() -> Iterator[list[int] | None]:
            with open_file(f.url) as fh:
                try:
                    pf = pq.ParquetFile(fh)
                except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
                    if is_transport_error(exc, f.url):
                        raise
                    yield None
                    return
                schema = pf.schema_arrow
                _column(schema, self.image_column, "image", f.name)
                if self.key_column is not None:
                    _column(schema, self.key_column, "key", f.name)
                yield [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]

        return next(resilient(f.url, read))

    def read(self, unit: Unit) -> Iterator[RawSample]:
        return resilient(unit.file.url, lambda: self._samples(unit))

    def _samples(self, unit: Unit) -> Iterator[RawSample]:
        rows = 0
        try:
            for sample in self._rows(unit):
                rows += 1
                yield sample
        except InvalidArgumentError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file must not stop the run
            if is_transport_error(exc, unit.file.url):
                raise
            kept = f"; the {rows} rows before it were read" if rows else ""
            yield RawSample(None, unit.name, reason="corrupt-file", detail=f"{type(exc).__name__}: {exc}{kept}")

    def _rows(self, unit: Unit) -> Iterator[RawSample]:
        pq = require("pyarrow.parquet", "sources")
        with open_file(unit.file.url) as fh:
            pf = pq.ParquetFile(fh)
            image_col, image_field = _column(pf.schema_arrow, self.image_column, "image", unit.file.name)
            key_col, key_field = (None, None) if self.key_column is None else _column(
                pf.schema_arrow, self.key_column, "key", unit.file.name)
            columns = [image_col] + ([key_col] if key_col is not None and key_col != image_col else [])
            row = unit.first_row
            for batch in pf.iter_batches(batch_size=_ROWS_PER_READ, row_groups=[unit.row_group], columns=columns,
                                         use_threads=False):
                images = _image_bytes(batch.column(image_col), image_field)
                keys = (None if key_col is None else
                        _values(batch.column(key_col), key_field))
                for j, (data, where) in enumerate(images):
                    yield self._sample(unit, row + j, data, where, None if keys is None else keys[j])
                row += batch.num_rows

    def _sample(self, unit: Unit, row: int, data: bytes | None, where: str | None, key_value: Any) -> RawSample:
        path = f"{unit.file.name}#row={row}"
        if self.key_column is None:
            key: str | None = parquet_key(unit.file.name, row)
        else:
            key = None if key_value is None else str(key_value)
        if key is None:
            return RawSample(None, path, reason="missing-key", detail=f"the row's {self.key_column!r} is null")
        if not data:
            extra = f" (path {where!r} only)" if where else ""
            return RawSample(key, path, reason="missing-image", detail=f"the row has no image bytes{extra}")
        return RawSample(key, path, data)


def _values(column: Any, field: str | None) -> list[Any]:
    values: list[Any] = (column.field(field) if field else column).to_pylist()
    return values


def _image_bytes(column: Any, field: str | None) -> list[tuple[bytes | None, str | None]]:
    """``(bytes, path)`` per row of an image column: an ``Image`` struct (``bytes``, ``path``), a binary
    column, or the named struct field."""
    pa = require("pyarrow", "sources")
    if field is not None:
        return [(v, None) for v in _values(column, field)]
    if pa.types.is_struct(column.type):
        kind = column.type
        if kind.get_field_index("bytes") < 0:
            raise InvalidArgumentError(f"the image column is a struct without a 'bytes' field ({kind})")
        paths = _values(column, "path") if kind.get_field_index("path") >= 0 else [None] * len(column)
        valid = column.is_valid().to_pylist()
        data = _values(column, "bytes")
        return [(d if ok else None, p if ok else None) for d, p, ok in zip(data, paths, valid, strict=True)]
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [(v, None) for v in column.to_pylist()]
    raise InvalidArgumentError(f"the image column holds {column.type}, not image bytes (an Image struct or binary)")
