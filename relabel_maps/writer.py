"""Write label maps to a ``.rlm`` file or a folder of shards (spec/FORMAT.md).

Records are appended to a hidden partial file next to the output as they are added; closing the
writer appends the footer (metadata, dictionary, index, trailer), fsyncs, and renames the file into
place, so readers never see a half-written output. With ``resume=True`` every record is also logged
in a small journal; after a crash (even ``kill -9``) a new writer with the same arguments recovers
every complete, CRC-valid record and continues. The same sequence of ``add`` calls always yields
the same bytes.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

import numpy as np
import zstandard

from . import format as fmt
from .codecs import RecordArrays, get_codec
from .errors import CorruptRecordError, FormatError, InvalidArgumentError, InvalidLabelMapError, WriterError
from .labelmap import SCORE_KINDS, LabelMap

__all__ = ["Writer", "DICT_SAMPLES", "DICT_SIZE"]

#: number of records a dictionary is trained on (the first ones added)
DICT_SAMPLES = 256
#: size in bytes of a trained dictionary
DICT_SIZE = 16384
_DICT_MIN_SAMPLES = 8
_JOURNAL_VERSION = 1


def _default_encoding(score_kind: str = "logits") -> str:
    """``"compact"`` for logits (its fixed 1/256 step suits logits) when available, else ``"f16"``;
    always ``"f16"`` for probabilities, whose small values a fixed absolute step would flatten."""
    from .codecs import CODECS, _load_builtin

    if score_kind == "probabilities":
        return "f16"
    _load_builtin()
    return "compact" if "compact" in CODECS else "f16"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class _Shard:
    """One output file being written: a partial file of records (+ an optional journal)."""

    def __init__(self, partial: Path, journal: Path | None) -> None:
        self.partial = partial
        self.journal_path = journal
        self.file: BinaryIO | None = None
        self.journal: BinaryIO | None = None
        self.entries: list[tuple[str, int, int, int]] = []
        self.pos = fmt.HEADER_SIZE
        self.key_bytes = 0

    def create(self, journal_header: dict[str, Any] | None) -> None:
        self.file = open(self.partial, "wb")
        self.file.write(fmt.pack_header())
        if self.journal_path is not None and journal_header is not None:
            self.journal = open(self.journal_path, "wb")
            self.journal.write(_json_line(journal_header))

    def append(self, key: str, rec: bytes) -> None:
        assert self.file is not None
        crc = fmt.crc32(rec)
        self.file.write(rec)
        self.entries.append((key, self.pos, len(rec), crc))
        if self.journal is not None:
            self.journal.write(_json_line([key, self.pos, len(rec), crc]))
        self.pos += len(rec)
        self.key_bytes += len(key.encode("utf-8"))

    def flush(self, sync: bool) -> None:
        for f in (self.file, self.journal):  # records before the journal lines that describe them
            if f is not None:
                f.flush()
                if sync:
                    os.fsync(f.fileno())

    def finish(self, metadata_bytes: bytes, dictionary: bytes) -> None:
        """Append the footer and trailer, fsync and close (the caller renames the file)."""
        assert self.file is not None
        index, _ = fmt.pack_index(self.entries)
        self.file.seek(self.pos)
        self.file.truncate()
        self.file.write(fmt.pack_footer(self.pos, len(self.entries), metadata_bytes, dictionary, index))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.close()

    def close(self) -> None:
        for f in (self.file, self.journal):
            if f is not None:
                f.close()
        self.file = self.journal = None


def _json_line(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _without_dictionary_flag(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` minus ``compression.dictionary``, which depends on training, not on the arguments."""
    meta = dict(metadata)
    meta["compression"] = {k: v for k, v in meta["compression"].items() if k != "dictionary"}
    return meta


class Writer:
    """Write label maps to ``path``: one ``.rlm`` file, or shards in a folder.

    ``path`` ending in ``.rlm`` without ``max_records``/``max_bytes`` gives one file. A folder path,
    or any limit, gives shards ``NAME-00001-of-0000N.rlm`` plus ``NAME.index.json`` in the folder
    (``NAME`` is the ``.rlm`` stem, else the folder's name). See the module docstring for
    atomicity, determinism and ``resume``.

    Args:
        num_classes: size of the class set; ``k``: entries stored per location (at most).
        score_kind: ``"logits"`` or ``"probabilities"``.
        encoding: a codec name or spec (default: ``"compact"`` for logits when available, else ``"f16"``;
            ``"f16"`` for probabilities).
        teacher: teacher description (``name``, ``weights``, ``input_size``, ``resize``, ``mean``,
            ``std``, ``grid``); missing fields are stored as null.
        class_set / class_names: class-set id and optional list of ``num_classes`` names.
        metadata: free keys, each namespaced ``"ns.key"`` or the key ``"extra"``.
        max_records / max_bytes: shard rollover limits (records per shard; approximate bytes).
        dictionary: ``False``; ``True`` trains a zstd dictionary on the first records and keeps it
            when it makes them smaller; ``"auto"`` keeps it only when it pays for its own size.
        level: zstd compression level.
        resume: journal every record and continue an interrupted run with the same arguments.
        overwrite: replace existing outputs (refused otherwise).

    Resume: ``flush()`` makes every record added so far durable (fsynced record bytes and journal
    lines); after a crash, ``Writer(same path, same arguments, resume=True)`` recovers every
    flushed (and any other complete, CRC-valid) record, and ``key in writer`` / ``writer.keys()``
    report them so the caller can skip them. Different arguments raise :class:`WriterError`. If
    the output is already complete, the writer adopts it: its keys are reported, ``add`` raises
    :class:`WriterError` and ``close()`` returns the existing paths. Adding the remaining records in
    the same order as an uninterrupted run gives the same bytes (with a dictionary, which is trained
    at the first ``flush()`` in resume mode, also flush at the same points). A ``with`` block left
    by an exception keeps the resume state (``abort()``); without ``resume`` it deletes it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        num_classes: int,
        k: int,
        score_kind: str = "logits",
        encoding: str | Mapping[str, Any] | None = None,
        teacher: Mapping[str, Any] | None = None,
        class_set: str | None = None,
        class_names: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        max_records: int | None = None,
        max_bytes: int | None = None,
        dictionary: bool | str = False,
        level: int = 19,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self._closed = True  # until fully constructed
        self._complete = False
        self._validate_args(num_classes, k, score_kind, max_records, max_bytes, dictionary, level)
        self.num_classes, self.k, self.score_kind = int(num_classes), int(k), score_kind
        self.max_records, self.max_bytes = max_records, max_bytes
        self.level = int(level)
        self.dictionary_mode: bool | str = dictionary
        self.resume, self.overwrite = bool(resume), bool(overwrite)
        self.codec = get_codec(encoding if encoding is not None else _default_encoding(score_kind))
        self._index_dtype = fmt.index_dtype_for(self.num_classes)
        self._metadata = self._build_metadata(teacher, class_set, class_names, metadata)

        p = Path(path)
        sharded = max_records is not None or max_bytes is not None or p.suffix != ".rlm" or p.is_dir()
        if sharded:
            if p.suffix == ".rlm" and not p.is_dir():
                self.folder, self.name = p.parent, p.stem
            else:
                self.folder, self.name = p, p.name
            if not self.name:
                raise InvalidArgumentError(f"cannot derive a dataset name from {path!r}")
        else:
            self.folder, self.name = p.parent, p.name
        self.sharded = sharded
        self.path = p

        self._keys: set[str] = set()
        self._done: list[tuple[Path, int]] = []  # finished shards: (file, records)
        self._shard: _Shard | None = None
        self._pending: list[tuple[str, bytes, bytes]] = []  # (key, record header, body) before training
        self._dict: bytes | None = None if dictionary else b""
        self._cctx: zstandard.ZstdCompressor | None = None
        self._written: list[str] = []
        self._raw_decoders: dict[bytes, Any] = {}  # source dictionary -> RecordDecoder (add_raw)

        if self.resume and not self.overwrite and self._adopt_finished():
            return  # a finished run: nothing to add, close() returns its paths
        self._check_outputs()
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self._recover()
        else:
            self._remove_stale()
        if self._dict is not None:
            self._start_compressor()
        self._closed = False

    # ------------------------------------------------------------------------------ arguments
    @staticmethod
    def _validate_args(num_classes: Any, k: Any, score_kind: str, max_records: Any, max_bytes: Any,
                       dictionary: Any, level: Any) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not is_int(num_classes) or not 1 <= num_classes <= fmt.LIMITS.max_num_classes:
            raise InvalidArgumentError(f"num_classes must be an integer in [1, {fmt.LIMITS.max_num_classes}]")
        if not is_int(k) or not 1 <= k <= min(fmt.LIMITS.max_k, num_classes):
            raise InvalidArgumentError(f"k must be an integer in [1, min(255, num_classes)], got {k!r}")
        if score_kind not in SCORE_KINDS:
            raise InvalidArgumentError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}")
        for name, v in (("max_records", max_records), ("max_bytes", max_bytes)):
            if v is not None and (not is_int(v) or v < 1):
                raise InvalidArgumentError(f"{name} must be a positive integer or None, got {v!r}")
        if dictionary not in (False, True, "auto"):
            raise InvalidArgumentError(f"dictionary must be False, True or 'auto', got {dictionary!r}")
        if not is_int(level) or not -7 <= level <= 22:
            raise InvalidArgumentError(f"level must be an integer in [-7, 22], got {level!r}")

    def _build_metadata(self, teacher: Mapping[str, Any] | None, class_set: str | None,
                        class_names: Sequence[str] | None, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        from . import __version__

        if class_set is not None and not isinstance(class_set, str):
            raise InvalidArgumentError("class_set must be a string or None")
        names = None
        if class_names is not None:
            names = list(class_names)
            if len(names) != self.num_classes or not all(isinstance(s, str) for s in names):
                raise InvalidArgumentError(f"class_names must be {self.num_classes} strings")
        if teacher is not None and not isinstance(teacher, Mapping):
            raise InvalidArgumentError("teacher must be a mapping or None")
        t = {key: None for key in fmt.TEACHER_KEYS}
        t.update(dict(teacher or {}))
        meta: dict[str, Any] = {
            "format_version": fmt.version_string(),
            "num_classes": self.num_classes,
            "k": self.k,
            "score_kind": self.score_kind,
            "encoding": self.codec.spec,
            "compression": {"codec": "zstd", "level": self.level, "dictionary": False},
            "class_set": class_set,
            "class_names": names,
            "teacher": t,
            "tool": {"name": "relabel-maps", "version": __version__},
        }
        for key, value in dict(extra or {}).items():
            if not isinstance(key, str) or not (key == "extra" or ("." in key.strip(".") and key[0] != ".")):
                raise InvalidArgumentError(
                    f"free metadata key {key!r} must be namespaced ('ns.key') or be 'extra'"
                )
            meta[key] = value
        try:
            fmt.dump_metadata(meta)
        except FormatError as exc:
            raise InvalidArgumentError(str(exc)) from None
        return meta

    # ------------------------------------------------------------------------------ file names
    def _final_single(self) -> Path:
        return self.folder / self.name

    def _hidden(self, i: int, suffix: str) -> Path:
        """Hidden working file of shard ``i`` (of the single output when not sharded)."""
        base = f"{self.name}-{i:05d}.rlm" if self.sharded else self.name
        return self.folder / f".{base}.{suffix}"

    def _partial(self, i: int) -> Path:
        return self._hidden(i, "partial")

    def _journal(self, i: int) -> Path:
        return self._hidden(i, "journal")

    def _done_path(self, i: int) -> Path:
        return self.folder / f".{self.name}-{i:05d}.rlm.done"

    def _index_path(self) -> Path:
        return self.folder / f"{self.name}.index.json"

    def _final_shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        out = []
        for p in self.folder.iterdir():
            m = fmt.SHARD_NAME_RE.match(p.name)
            if m and m.group("name") == self.name:
                out.append(p)
        return sorted(out)

    def _check_outputs(self) -> None:
        existing = (
            [p for p in [self._index_path()] if p.exists()] + self._final_shards()
            if self.sharded
            else [p for p in [self._final_single()] if p.exists()]
        )
        if existing and not self.overwrite:
            hint = " (the run already finished)" if self.resume else ""
            raise WriterError(f"output exists{hint}: {existing[0]}; pass overwrite=True to replace it")

    def _adopt_finished(self) -> bool:
        """With ``resume``: if the output is already complete, take its keys and stay closed."""
        from .opener import open as open_maps

        final = self._index_path() if self.sharded else self._final_single()
        if not final.exists() or self._partial(1).exists() or self._done_path(1).exists():
            return False
        with open_maps(final) as maps:
            stored = _without_dictionary_flag(json.loads(_json_line(maps.metadata)))
            if stored != json.loads(_json_line(self._config()["metadata"])):
                raise WriterError(f"resume: {final} was written with different arguments")
            self._keys = set(maps)
            shards = [str(self.folder / n) for n in getattr(maps, "shard_names", [])]
        self._written = shards + [str(final)] if self.sharded else [str(final)]
        self._complete = True
        return True

    def _remove_stale(self) -> None:
        for i in range(1, 1 + (self._count_stale() if self.sharded else 1)):
            for p in (self._partial(i), self._journal(i), self._done_path(i)):
                p.unlink(missing_ok=True)

    def _count_stale(self) -> int:
        n = 0
        prefix = f".{self.name}-"
        for p in self.folder.iterdir() if self.folder.is_dir() else []:
            if p.name.startswith(prefix) and p.name.endswith((".partial", ".journal", ".done")):
                digits = p.name[len(prefix) : len(prefix) + 5]
                if digits.isdigit():
                    n = max(n, int(digits))
        return n

    # ------------------------------------------------------------------------------ resume
    def _config(self) -> dict[str, Any]:
        return {
            "metadata": _without_dictionary_flag(self._metadata),
            "max_records": self.max_records,
            "max_bytes": self.max_bytes,
            "dictionary": self.dictionary_mode,
            "sharded": self.sharded,
        }

    def _journal_header(self) -> dict[str, Any]:
        return {
            "journal": _JOURNAL_VERSION,
            "config": self._config(),
            "dictionary": base64.b64encode(self._dict or b"").decode("ascii"),
        }

    def _recover(self) -> None:
        """Pick up finished shards and the complete, CRC-valid records of the partial shard."""
        from .reader import Reader

        config = json.loads(_json_line(self._config()))
        i = 1
        while self.sharded and self._done_path(i).exists():
            with Reader(self._done_path(i)) as r:
                if r.metadata.get("compression", {}).get("dictionary"):
                    self._dict = r.dictionary
                elif self._dict is None:
                    self._dict = b""
                if _without_dictionary_flag(r.metadata) != config["metadata"]:
                    raise WriterError(f"resume: {self._done_path(i)} was written with different arguments")
                self._keys.update(r.keys())
                self._done.append((self._done_path(i), len(r)))
            self._journal(i).unlink(missing_ok=True)  # stale: the shard finished
            self._partial(i).unlink(missing_ok=True)
            i += 1
        partial, journal = self._partial(i), self._journal(i)
        if not (partial.exists() and journal.exists()):
            partial.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
            return
        with open(journal, "rb") as jf:
            lines = jf.read().split(b"\n")
        try:
            header = json.loads(lines[0])
            ok = header.get("journal") == _JOURNAL_VERSION
        except (ValueError, AttributeError):
            ok = False
        if not ok or len(lines) < 2:  # the header line itself is incomplete: nothing was stored
            partial.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
            return
        if header.get("config") != config:
            raise WriterError(
                f"resume: {journal} was written with different arguments; use the same arguments "
                "or resume=False to start over"
            )
        dictionary = base64.b64decode(header.get("dictionary", ""))
        if self._dict is not None and self._dict != dictionary:
            raise WriterError(f"resume: {journal} disagrees with the finished shards' dictionary")
        self._dict = dictionary
        shard = _Shard(partial, journal)
        good_journal = len(lines[0]) + 1
        entries: list[tuple[str, int, int, int]] = []
        with open(partial, "rb") as pf:
            size = os.fstat(pf.fileno()).st_size
            pos = fmt.HEADER_SIZE
            valid_header = pf.read(fmt.HEADER_SIZE) == fmt.pack_header()
            for line in lines[1:-1] if valid_header else []:  # lines[-1] follows the last newline
                try:
                    key, off, n, crc = json.loads(line)
                    sound = off == pos and isinstance(key, str) and 0 < n and off + n <= size
                except (ValueError, TypeError):
                    break
                if not sound or key in self._keys or fmt.crc32(os.pread(pf.fileno(), n, off)) != crc:
                    break
                entries.append((key, off, n, crc))
                self._keys.add(key)
                pos += n
                good_journal += len(line) + 1
        shard.entries = entries
        shard.pos = entries[-1][1] + entries[-1][2] if entries else fmt.HEADER_SIZE
        shard.key_bytes = sum(len(e[0].encode("utf-8")) for e in entries)
        with open(journal, "r+b") as jf:
            jf.truncate(good_journal)
        shard.file = open(partial, "r+b")
        if not entries:
            shard.file.truncate(0)
            shard.file.write(fmt.pack_header())
        shard.file.truncate(shard.pos)
        shard.file.seek(shard.pos)
        shard.journal = open(journal, "ab")
        self._shard = shard

    # ------------------------------------------------------------------------------ adding
    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def keys(self) -> list[str]:
        """Keys stored so far (recovered ones included), sorted."""
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def add(
        self,
        key: str,
        indices: Any,
        scores: Any,
        *,
        lse: Any = None,
        counts: Any = None,
    ) -> None:
        """Add one label map: ``indices``/``scores`` of shape ``(k', H, W)`` with ``k' <= k``.

        Entries are sorted by descending score per location; ``lse`` ``(H, W)`` and ``counts``
        ``(H, W)`` are optional.
        """
        lm = LabelMap.from_arrays(
            indices, scores, num_classes=self.num_classes, score_kind=self.score_kind, lse=lse, counts=counts
        )
        self._add(key, lm)

    def add_map(self, key: str, labelmap: LabelMap) -> None:
        """Add a :class:`LabelMap` (its ``num_classes`` and ``score_kind`` must match the writer's)."""
        if not isinstance(labelmap, LabelMap):
            raise InvalidLabelMapError("add_map expects a LabelMap")
        if labelmap.num_classes != self.num_classes or labelmap.score_kind != self.score_kind:
            raise InvalidLabelMapError(
                f"label map has num_classes={labelmap.num_classes}, score_kind={labelmap.score_kind!r}; "
                f"the writer stores {self.num_classes}, {self.score_kind!r}"
            )
        self.add(key, labelmap.indices, labelmap.scores, lse=labelmap.lse, counts=labelmap.counts)

    def add_raw(self, key: str, record: bytes, *, dictionary: bytes = b"", crc32: int | None = None) -> None:
        """Add a stored record as read by :meth:`Reader.read_record` (record header + zstd frame)
        without decoding and re-encoding its arrays.

        ``dictionary`` is the zstd dictionary the frame was compressed with (the source file's
        :attr:`Reader.dictionary`; empty for none); ``crc32``, when given, is checked against the
        record's bytes (a :class:`Reader` opened with ``verify=True`` also checks it in
        ``read_record``). The record must decode under this writer's
        encoding, ``num_classes`` and ``k`` and be a valid label map sorted by descending score
        (:class:`CorruptRecordError` otherwise). It is copied byte for byte when its dictionary is
        this writer's; otherwise its frame is recompressed (the body is kept as is). The caller
        vouches that the source's ``score_kind`` matches (the bytes do not tell).
        """
        from .reader import RecordDecoder, check_decoded

        self._check_key(key)
        if not isinstance(record, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"a record is bytes, got {type(record).__name__}")
        rec = bytes(record)
        if crc32 is not None and fmt.crc32(rec) != crc32:
            raise CorruptRecordError(f"CRC32 mismatch in record {key!r}")
        source_dict = bytes(dictionary)
        decoder = self._raw_decoders.get(source_dict)
        if decoder is None:
            try:
                decoder = RecordDecoder(
                    num_classes=self.num_classes, k=self.k, score_kind=self.score_kind, codec=self.codec,
                    dictionary=source_dict,
                )
            except FormatError as exc:
                raise InvalidArgumentError(str(exc)) from None
            self._raw_decoders[source_dict] = decoder
        h, w, k, flags, body = decoder.decompress(rec, key)
        check_decoded(decoder.decode_body(h, w, k, flags, body, key))
        header = fmt.pack_record_header(h, w, k, flags)  # canonical: reserved field 0
        self._store(key, header, body, rec[fmt.RECORD_HEADER_SIZE :] if source_dict == self._dict else None)

    def _check_key(self, key: str) -> None:
        if self._closed:
            if self._complete:
                raise WriterError(f"{self.path} is already complete; nothing can be added (resume of a finished run)")
            raise WriterError("writer is closed")
        if not isinstance(key, str):
            raise InvalidArgumentError(f"keys are strings, got {type(key).__name__}")
        try:
            kb = key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"key {key!r} is not encodable as UTF-8") from None
        if len(kb) > fmt.LIMITS.max_key_bytes:
            raise InvalidArgumentError(f"key is {len(kb)} bytes, longer than {fmt.LIMITS.max_key_bytes}")
        if key in self._keys:
            raise WriterError(f"duplicate key {key!r}")

    def _add(self, key: str, lm: LabelMap) -> None:
        self._check_key(key)
        k, h, w = lm.shape
        lim = fmt.LIMITS
        if k > self.k:
            raise InvalidLabelMapError(f"label map has k={k} entries per location; the writer stores at most {self.k}")
        if h > lim.max_height or w > lim.max_width or k * h * w > lim.max_entries:
            raise InvalidLabelMapError(f"label map {k}x{h}x{w} exceeds the format's limits")
        indices, scores = lm.indices, lm.scores
        if lm.counts is not None:  # canonical padding: index 0, score 0 (spec/FORMAT.md §4)
            pad = ~lm.valid()
            if pad.any():
                indices, scores = np.where(pad, 0, indices).astype(indices.dtype), np.where(pad, 0, scores).astype(np.float32)
        arrays = RecordArrays(indices, scores, lm.counts, lm.lse)
        body = self.codec.encode(arrays)
        if len(body) > self.codec.max_body_size(k, h, w, arrays.flags, self._index_dtype.itemsize):
            raise WriterError(f"encoding {self.codec.name!r} produced a body above its declared bound")
        self._store(key, fmt.pack_record_header(h, w, k, arrays.flags), body)

    def _store(self, key: str, header: bytes, body: bytes, frame: bytes | None = None) -> None:
        """Write a record, or hold it until the dictionary is trained; ``frame`` is its already
        compressed body when that was compressed with this writer's dictionary."""
        self._keys.add(key)
        if self._dict is None:
            self._pending.append((key, header, body))
            if len(self._pending) >= DICT_SAMPLES:
                self._train_dictionary()
        else:
            self._write(key, header + (frame if frame is not None else self._compress(body)))

    def _compress(self, body: bytes) -> bytes:
        assert self._cctx is not None
        return self._cctx.compress(body)

    def _start_compressor(self) -> None:
        params: dict[str, Any] = {"level": self.level, "write_content_size": True, "write_checksum": False}
        if self._dict:
            params["dict_data"] = zstandard.ZstdCompressionDict(self._dict)
        self._cctx = zstandard.ZstdCompressor(**params)
        self._metadata["compression"]["dictionary"] = bool(self._dict)
        self._metadata_bytes = fmt.dump_metadata(self._metadata)

    def _train_dictionary(self) -> None:
        """Train on the pending bodies; keep the dictionary only where it makes records smaller."""
        samples = [body for _, _, body in self._pending]
        plain = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        base = sum(len(plain.compress(s)) for s in samples)
        chosen = b""
        if len(samples) >= _DICT_MIN_SAMPLES:
            try:
                trained = zstandard.train_dictionary(
                    DICT_SIZE, samples, k=1024, d=8, steps=0, threads=0, level=self.level
                ).as_bytes()
            except zstandard.ZstdError:
                trained = b""
            if trained:
                cctx = zstandard.ZstdCompressor(level=self.level, dict_data=zstandard.ZstdCompressionDict(trained))
                size = sum(len(cctx.compress(s)) for s in samples)
                cost = size + (len(trained) if self.dictionary_mode == "auto" else 0)
                if cost < base:
                    chosen = trained
        self._dict = chosen
        self._start_compressor()
        pending, self._pending = self._pending, []
        for key, header, body in pending:
            self._write(key, header + self._compress(body))

    def _write(self, key: str, rec: bytes) -> None:
        shard = self._shard
        if shard is not None and shard.entries and self._full(shard, key, rec):
            self._finish_shard()
            shard = None
        if shard is None:
            shard = self._open_shard()
        shard.append(key, rec)

    def _open_shard(self) -> _Shard:
        """Create the partial file (and journal) of the next shard and make it current."""
        i = len(self._done) + 1
        shard = _Shard(self._partial(i), self._journal(i) if self.resume else None)
        shard.create(self._journal_header() if self.resume else None)
        self._shard = shard
        return shard

    def _full(self, shard: _Shard, key: str, rec: bytes) -> bool:
        if self.max_records is not None and len(shard.entries) >= self.max_records:
            return True
        if self.max_bytes is not None:
            n = len(shard.entries) + 1
            footer = len(self._metadata_bytes) + len(self._dict or b"") + n * fmt.INDEX_ROW_SIZE
            footer += shard.key_bytes + len(key.encode("utf-8")) + fmt.TRAILER_SIZE
            return shard.pos + len(rec) + footer > self.max_bytes
        return False

    def _finish_shard(self) -> None:
        shard = self._shard
        assert shard is not None
        i = len(self._done) + 1
        shard.finish(self._metadata_bytes, self._dict or b"")
        if self.sharded:
            done = self._done_path(i)
            os.replace(shard.partial, done)
        else:
            done = self._final_single()
            os.replace(shard.partial, done)
        _fsync_dir(self.folder)
        if shard.journal_path is not None:
            shard.journal_path.unlink(missing_ok=True)
        self._done.append((done, len(shard.entries)))
        self._shard = None

    # ------------------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        """Make every record added so far durable (written and fsynced; with ``resume`` also journaled)."""
        if self._closed:
            if self._complete:
                return
            raise WriterError("writer is closed")
        if self._dict is None and self._pending and self.resume:
            self._train_dictionary()  # nothing is durable before the dictionary exists
        if self._shard is not None:
            self._shard.flush(sync=True)

    def close(self) -> list[str]:
        """Finalize every output atomically; returns the written paths (shards, then the index)."""
        if self._closed:
            return list(self._written)
        try:
            if self._dict is None:
                self._train_dictionary()
            if self._shard is None and not self._done:
                if self._cctx is None:
                    self._start_compressor()
                self._open_shard()
            if self._shard is not None:
                self._finish_shard()
            self._written = self._publish()
        finally:
            self._closed = True
        return list(self._written)

    def _publish(self) -> list[str]:
        if not self.sharded:
            return [str(self._final_single())]
        from .shards import write_index

        total = len(self._done)
        if self.overwrite:
            for old in self._final_shards():
                old.unlink()
        paths = []
        for i, (done, _) in enumerate(self._done, start=1):
            final = self.folder / fmt.shard_name(self.name, i, total)
            os.replace(done, final)
            paths.append(final)
        _fsync_dir(self.folder)
        index = self._index_path()
        write_index(paths, index)
        return [str(p) for p in paths] + [str(index)]

    def abort(self) -> None:
        """Stop without finalizing. Without ``resume`` the partial files are deleted; with it they
        are flushed and kept for a later ``Writer(..., resume=True)``."""
        if self._closed:
            return
        self._closed = True
        if self.resume:
            if self._dict is None and self._pending:
                self._train_dictionary()
            if self._shard is not None:
                self._shard.flush(sync=True)
                self._shard.close()
            return
        if self._shard is not None:
            self._shard.close()
            self._shard.partial.unlink(missing_ok=True)
        for done, _ in self._done:
            if done.name.startswith("."):
                done.unlink(missing_ok=True)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"Writer({str(self.path)!r}, records={len(self._keys)}, closed={self._closed})"
