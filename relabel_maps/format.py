"""Byte layouts, constants and hard limits of spec/FORMAT.md (format v1.1).

Pure functions only: nothing here touches a file. The reader and writer build on these packers and
parsers so that the layout lives in one place. Every parser raises :class:`FormatError` (or a
subclass) on bad input and never lets a ``struct.error``/``IndexError`` escape.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .errors import CorruptRecordError, FormatError, UnsupportedVersionError
from .keys import check_sorted

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "END_MAGIC",
    "HEADER_SIZE",
    "TRAILER_SIZE",
    "RECORD_HEADER_SIZE",
    "INDEX_DTYPE",
    "INDEX_ROW_SIZE",
    "Limits",
    "LIMITS",
    "Trailer",
    "RecordHeader",
    "pack_header",
    "parse_header",
    "pack_trailer",
    "parse_trailer",
    "pack_record_header",
    "parse_record_header",
    "pack_index",
    "parse_index",
    "index_dtype_for",
    "dump_metadata",
    "parse_metadata",
    "check_metadata",
    "version_string",
    "crc32",
    "REQUIRED_METADATA_KEYS",
    "DESCRIPTIVE_METADATA_KEYS",
    "SHARD_NAME_RE",
    "shard_name",
    "SUPPORTED_MAJORS",
    "KNOWN_RECORD_FLAGS",
    "TEACHER_KEYS",
    "check_major",
    "check_version_string",
    "VERSION_STRING_RE",
    "check_keys",
    "RECORD_HEADER_STRUCT",
    "pack_footer",
    "assemble",
    "build_file",
]

#: (MAJOR, MINOR) written by this library.
FORMAT_VERSION: tuple[int, int] = (1, 1)
#: MAJOR versions this reader implements.
SUPPORTED_MAJORS = (1,)

MAGIC = b"\x89RLM\r\n\x1a\n"
END_MAGIC = b"\x89RLMEND\n"
HEADER_SIZE = 16
TRAILER_SIZE = 64
RECORD_HEADER_SIZE = 8

_HEADER = struct.Struct("<8sHHI")
# footer_offset, record_count, metadata_length, dictionary_length, index_length,
# metadata_crc32, dictionary_crc32, index_crc32, major, minor, reserved, trailer_crc32, end magic
_TRAILER = struct.Struct("<QQIIQIIIHHII8s")
#: record header: height, width, k, flags, reserved
RECORD_HEADER_STRUCT = struct.Struct("<HHBBH")
assert _HEADER.size == HEADER_SIZE and _TRAILER.size == TRAILER_SIZE and RECORD_HEADER_STRUCT.size == RECORD_HEADER_SIZE

#: One index row (little-endian): record offset, record length, record CRC32, key offset, key length.
INDEX_DTYPE = np.dtype(
    [("offset", "<u8"), ("nbytes", "<u4"), ("crc32", "<u4"), ("key_offset", "<u4"), ("key_length", "<u4")]
)
INDEX_ROW_SIZE = INDEX_DTYPE.itemsize  # 24

KNOWN_RECORD_FLAGS = 0x03  # FLAG_COUNTS | FLAG_LSE


class Limits(NamedTuple):
    """Hard limits a reader enforces (spec/FORMAT.md, "Limits")."""

    max_metadata_bytes: int = 64 << 20
    max_dictionary_bytes: int = 16 << 20
    max_index_bytes: int = 4 << 30
    max_key_bytes: int = 65535
    max_records: int = (1 << 32) - 1
    max_record_bytes: int = 1 << 30
    max_height: int = 4096
    max_width: int = 4096
    max_k: int = 255
    max_entries: int = 1 << 24  # k * H * W of one record
    max_num_classes: int = 1 << 31
    max_expansion: int = 1024  # decompressed bytes per frame byte, beyond expansion_floor
    expansion_floor: int = 1 << 20


LIMITS = Limits()

REQUIRED_METADATA_KEYS = ("format_version", "num_classes", "k", "score_kind", "encoding", "compression")
DESCRIPTIVE_METADATA_KEYS = ("class_set", "class_names", "teacher", "tool")
TEACHER_KEYS = ("name", "weights", "input_size", "crop_mode", "crop_pct", "mean", "std", "grid")
SCORE_KINDS = ("logits", "probabilities")

#: ``NAME-00001-of-00012.rlm``: 5+ digit, 1-based shard number and total.
SHARD_NAME_RE = re.compile(r"^(?P<name>.+)-(?P<index>[0-9]{5,})-of-(?P<total>[0-9]{5,})\.rlm$")
#: ``"MAJOR.MINOR"``: 1-5 ASCII digits each (the header stores them as u16).
VERSION_STRING_RE = re.compile(r"([0-9]{1,5})\.([0-9]{1,5})")


def shard_name(name: str, index: int, total: int) -> str:
    """File name of shard ``index`` (1-based) of ``total``."""
    return f"{name}-{index:05d}-of-{total:05d}.rlm"


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32 (ISO-HDLC, as zlib) of ``data``."""
    return zlib.crc32(data) & 0xFFFFFFFF


def version_string(version: tuple[int, int] = FORMAT_VERSION) -> str:
    return f"{version[0]}.{version[1]}"


def index_dtype_for(num_classes: int) -> np.dtype:
    """Class-index dtype of a file with ``num_classes`` classes: uint16 up to 65536, else uint32."""
    return np.dtype(np.uint16 if num_classes <= 65536 else np.uint32)


# ---------------------------------------------------------------------------------------- header
def pack_header(version: tuple[int, int] = FORMAT_VERSION) -> bytes:
    return _HEADER.pack(MAGIC, version[0], version[1], 0)


def check_major(major: int, where: str) -> None:
    if major not in SUPPORTED_MAJORS:
        raise UnsupportedVersionError(
            f"{where} declares format version {major}.x; this reader implements "
            f"{', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}"
        )


def check_version_string(value: Any, where: str) -> tuple[int, int]:
    """Parse a ``"MAJOR.MINOR"`` version string and reject an unsupported MAJOR."""
    m = VERSION_STRING_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise FormatError(f"{where} format_version must be 'MAJOR.MINOR' (ASCII digits), got {value!r:.40}")
    major, minor = int(m.group(1)), int(m.group(2))
    check_major(major, where)
    return major, minor


def parse_header(buf: bytes) -> tuple[int, int]:
    """Return ``(major, minor)`` of a 16-byte file header."""
    if len(buf) < HEADER_SIZE:
        raise FormatError(f"file too short for the {HEADER_SIZE}-byte header ({len(buf)} bytes)")
    magic, major, minor, _reserved = _HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise FormatError(f"bad magic {magic!r}: not a relabel-maps (.rlm) file")
    check_major(major, "header")
    return major, minor


# --------------------------------------------------------------------------------------- trailer
class Trailer(NamedTuple):
    footer_offset: int
    record_count: int
    metadata_length: int
    dictionary_length: int
    index_length: int
    metadata_crc32: int
    dictionary_crc32: int
    index_crc32: int
    major: int
    minor: int

    @property
    def dictionary_offset(self) -> int:
        return self.footer_offset + self.metadata_length

    @property
    def index_offset(self) -> int:
        return self.dictionary_offset + self.dictionary_length

    @property
    def footer_length(self) -> int:
        return self.metadata_length + self.dictionary_length + self.index_length


def pack_trailer(t: Trailer) -> bytes:
    head = _TRAILER.pack(*t, 0, 0, END_MAGIC)[:52]
    return head + struct.pack("<I", crc32(head)) + END_MAGIC


def parse_trailer(buf: bytes, file_size: int, limits: Limits = LIMITS) -> Trailer:
    """Parse and bounds-check the 64-byte trailer of a file of ``file_size`` bytes."""
    if len(buf) != TRAILER_SIZE:
        raise FormatError(f"truncated trailer ({len(buf)} of {TRAILER_SIZE} bytes)")
    fields = _TRAILER.unpack(buf)
    if fields[-1] != END_MAGIC:
        raise FormatError("no trailer end magic: the file is truncated or was not finalized")
    if fields[-2] != crc32(buf[:52]):
        raise FormatError("trailer CRC32 mismatch")
    t = Trailer(*fields[:10])
    check_major(t.major, "trailer")
    if t.footer_offset < HEADER_SIZE:
        raise FormatError(f"footer offset {t.footer_offset} lies inside the header")
    if t.metadata_length < 2 or t.metadata_length > limits.max_metadata_bytes:
        raise FormatError(f"metadata length {t.metadata_length} outside [2, {limits.max_metadata_bytes}]")
    if t.dictionary_length > limits.max_dictionary_bytes:
        raise FormatError(f"dictionary length {t.dictionary_length} exceeds {limits.max_dictionary_bytes}")
    if t.index_length > limits.max_index_bytes:
        raise FormatError(f"index length {t.index_length} exceeds {limits.max_index_bytes}")
    if t.record_count > limits.max_records or t.record_count * INDEX_ROW_SIZE > t.index_length:
        raise FormatError(f"record count {t.record_count} does not fit an index of {t.index_length} bytes")
    if t.footer_offset + t.footer_length + TRAILER_SIZE != file_size:
        raise FormatError(
            f"sections (footer at {t.footer_offset}, {t.footer_length} bytes) do not end at the trailer "
            f"of a {file_size}-byte file"
        )
    return t


# ---------------------------------------------------------------------------------------- record
class RecordHeader(NamedTuple):
    height: int
    width: int
    k: int
    flags: int


def pack_record_header(height: int, width: int, k: int, flags: int) -> bytes:
    return RECORD_HEADER_STRUCT.pack(height, width, k, flags, 0)


def parse_record_header(buf: bytes | memoryview, max_k: int, limits: Limits = LIMITS) -> RecordHeader:
    """Parse and check an 8-byte record header against the file's ``k`` and the hard limits."""
    if len(buf) < RECORD_HEADER_SIZE:
        raise CorruptRecordError("record shorter than its 8-byte header")
    h, w, k, flags, _reserved = RECORD_HEADER_STRUCT.unpack_from(buf)
    if not (1 <= h <= limits.max_height and 1 <= w <= limits.max_width):
        raise CorruptRecordError(f"record grid {h}x{w} outside [1, {limits.max_height}]x[1, {limits.max_width}]")
    if not 1 <= k <= max_k:
        raise CorruptRecordError(f"record k={k} outside [1, {max_k}]")
    if k * h * w > limits.max_entries:
        raise CorruptRecordError(f"record has {k * h * w} entries, more than {limits.max_entries}")
    if flags & ~KNOWN_RECORD_FLAGS:
        raise CorruptRecordError(f"record flags 0x{flags:02x} set unknown bits")
    return RecordHeader(h, w, k, flags)


# ----------------------------------------------------------------------------------------- index
def pack_index(entries: list[tuple[str, int, int, int]]) -> tuple[bytes, list[str]]:
    """Index bytes for ``(key, offset, nbytes, crc32)`` entries (any order); returns bytes and sorted keys."""
    encoded = sorted((key.encode("utf-8"), off, n, crc) for key, off, n, crc in entries)
    rows = np.zeros(len(encoded), dtype=INDEX_DTYPE)
    pos = 0
    for i, (kb, off, n, crc) in enumerate(encoded):
        if i and kb == encoded[i - 1][0]:
            raise FormatError(f"duplicate key {kb.decode('utf-8')!r}")
        rows[i] = (off, n, crc, pos, len(kb))
        pos += len(kb)
    blob = b"".join(e[0] for e in encoded)
    return rows.tobytes() + blob, [e[0].decode("utf-8") for e in encoded]


def parse_index(
    buf: bytes | memoryview, count: int, records_end: int, limits: Limits = LIMITS
) -> tuple[np.ndarray, bytes]:
    """Validate an index (vectorised) and return ``(rows, key_blob)``.

    Checks: exact size, contiguous key spans, key lengths, offsets inside ``[16, records_end)``,
    record lengths, no overlapping records. Key UTF-8 validity and strict sorting are checked by
    :func:`check_keys`.
    """
    table = count * INDEX_ROW_SIZE
    if len(buf) < table:
        raise FormatError(f"index of {len(buf)} bytes is shorter than {count} rows")
    rows = np.frombuffer(buf, dtype=INDEX_DTYPE, count=count)
    blob = bytes(buf[table:])
    if count:
        klen = rows["key_length"].astype(np.int64)
        if int(klen.max()) > limits.max_key_bytes:
            raise FormatError(f"a key is longer than {limits.max_key_bytes} bytes")
        starts = np.concatenate(([0], np.cumsum(klen)[:-1]))
        if not np.array_equal(rows["key_offset"].astype(np.int64), starts):
            raise FormatError("index key spans are not contiguous")
        if int(klen.sum()) != len(blob):
            raise FormatError(f"index key blob is {len(blob)} bytes, rows describe {int(klen.sum())}")
        off = rows["offset"]
        nb = rows["nbytes"].astype(np.uint64)
        if int(off.min()) < HEADER_SIZE:
            raise FormatError("a record offset points into the header")
        if int(nb.min()) <= RECORD_HEADER_SIZE or int(nb.max()) > limits.max_record_bytes:
            raise FormatError(f"a record length is outside ({RECORD_HEADER_SIZE}, {limits.max_record_bytes}]")
        if int(off.max()) >= records_end:
            raise FormatError(f"a record offset lies outside the records area [16, {records_end})")
        end = off + nb  # cannot overflow: off < records_end < 2**63 and nb < 2**32
        if int(end.max()) > records_end:
            raise FormatError(f"a record extends past the records area [16, {records_end})")
        order = np.argsort(off, kind="stable")
        if count > 1 and bool((end[order[:-1]] > off[order[1:]]).any()):
            raise FormatError("index describes overlapping records")
    elif blob:
        raise FormatError("empty index with a non-empty key blob")
    return rows, blob


def check_keys(rows: np.ndarray, blob: bytes) -> None:
    """Check the keys of a parsed index: valid UTF-8, strictly increasing (whole-array operations)."""
    check_sorted(blob, rows["key_offset"], rows["key_length"])


# -------------------------------------------------------------------------------------- metadata
def dump_metadata(metadata: Mapping[str, Any]) -> bytes:
    """Canonical metadata bytes: UTF-8 JSON, sorted keys, no insignificant whitespace."""
    try:
        return json.dumps(metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
            "utf-8"
        )
    except (TypeError, ValueError) as exc:
        raise FormatError(f"metadata is not JSON-serialisable: {exc}") from None


def parse_metadata(buf: bytes) -> dict[str, Any]:
    """Parse metadata bytes and check the structural keys (:func:`check_metadata`)."""
    try:
        meta = json.loads(bytes(buf).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"metadata is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise FormatError("metadata must be a JSON object")
    check_metadata(meta)
    return meta


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_metadata(meta: Mapping[str, Any], limits: Limits = LIMITS) -> None:
    """Check the keys a reader needs; unknown keys are ignored (newer MINOR versions)."""
    missing = [k for k in REQUIRED_METADATA_KEYS if k not in meta]
    if missing:
        raise FormatError(f"metadata lacks required keys: {', '.join(missing)}")
    check_version_string(meta["format_version"], "metadata")
    nc = meta["num_classes"]
    if not _is_int(nc) or not 1 <= nc <= limits.max_num_classes:
        raise FormatError(f"num_classes must be an integer in [1, {limits.max_num_classes}], got {nc!r}")
    k = meta["k"]
    if not _is_int(k) or not 1 <= k <= min(limits.max_k, nc):
        raise FormatError(f"k must be an integer in [1, min({limits.max_k}, num_classes)], got {k!r}")
    if meta["score_kind"] not in SCORE_KINDS:
        raise FormatError(f"score_kind must be one of {SCORE_KINDS}, got {meta['score_kind']!r}")
    enc = meta["encoding"]
    if not (isinstance(enc, dict) and isinstance(enc.get("name"), str)):
        raise FormatError(f"encoding must be an object with a 'name', got {enc!r}")
    comp = meta["compression"]
    if not isinstance(comp, dict) or comp.get("codec") != "zstd" or not isinstance(comp.get("dictionary", False), bool):
        raise FormatError(f"compression must be {{'codec': 'zstd', 'dictionary': bool, ...}}, got {comp!r}")
    names = meta.get("class_names")
    if names is not None and (
        not isinstance(names, list) or len(names) != nc or not all(isinstance(s, str) for s in names)
    ):
        raise FormatError("class_names must be null or a list of num_classes strings")


# ------------------------------------------------------------------------------------- assembly
def pack_footer(
    footer_offset: int,
    record_count: int,
    metadata: bytes,
    dictionary: bytes,
    index: bytes,
    version: tuple[int, int] = FORMAT_VERSION,
) -> bytes:
    """Bytes that follow a records area ending at ``footer_offset``: metadata, dictionary, index and
    the trailer (CRCs computed)."""
    trailer = Trailer(
        footer_offset=footer_offset,
        record_count=record_count,
        metadata_length=len(metadata),
        dictionary_length=len(dictionary),
        index_length=len(index),
        metadata_crc32=crc32(metadata),
        dictionary_crc32=crc32(dictionary),
        index_crc32=crc32(index),
        major=version[0],
        minor=version[1],
    )
    return metadata + dictionary + index + pack_trailer(trailer)


def assemble(
    records_area: bytes,
    metadata: bytes,
    dictionary: bytes,
    index: bytes,
    record_count: int,
    version: tuple[int, int] = FORMAT_VERSION,
) -> bytes:
    """Bytes of a whole file from its sections (records area without the header); CRCs computed."""
    footer = pack_footer(HEADER_SIZE + len(records_area), record_count, metadata, dictionary, index, version)
    return pack_header(version) + records_area + footer


def build_file(records: list[tuple[str, bytes]], metadata: Mapping[str, Any], dictionary: bytes = b"") -> bytes:
    """A complete file from ``(key, record bytes)`` pairs (stored in the given order) and metadata."""
    area = bytearray()
    entries = []
    for key, rec in records:
        entries.append((key, HEADER_SIZE + len(area), len(rec), crc32(rec)))
        area += rec
    index, _ = pack_index(entries)
    return assemble(bytes(area), dump_metadata(metadata), dictionary, index, len(entries))
