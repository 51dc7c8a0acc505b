"""Write label maps to a ``.rlm`` file or a folder of shards (spec/FORMAT.md).

Records are appended to a hidden partial file next to the output as they are added; closing the
writer appends the footer (metadata, dictionary, index, trailer), fsyncs, and renames the file into
place, so readers never see a half-written output; shards are published with the index last
(:mod:`relabel_maps.publish`). A writer holds its output's lock from construction to ``close()`` or
``abort()``: a second writer of the same output raises :class:`OutputLockedError`. With
``resume=True`` every record is also logged in a small journal; after a crash (even ``kill -9``) a
new writer with the same arguments recovers every complete, CRC-valid record and continues. The
same sequence of ``add`` calls always yields the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import format as fmt
from .arguments import as_stored, check_arguments, comparable_metadata, file_metadata
from .codecs import Codec, get_codec
from .dictionary import DICT_SAMPLES, DICT_SIZE, train_dictionary
from .errors import CorruptRecordError, FormatError, InvalidArgumentError, InvalidLabelMapError, WriterError
from .journal import PartialShard, RunFiles, abandon, journal_header, recover
from .labelmap import LabelMap
from .layout import dataset_location, is_sharded
from .lock import OutputLock
from .records import RecordDecoder, RecordEncoder

__all__ = ["Writer", "DICT_SAMPLES", "DICT_SIZE"]


def _default_codec(score_kind: str) -> Codec:
    """``"compact"`` for logits (its fixed 1/256 step suits logits) when available, else ``"f16"``;
    always ``"f16"`` for probabilities, whose small values a fixed absolute step would flatten."""
    if score_kind != "probabilities":
        try:
            return get_codec("compact")
        except InvalidArgumentError:  # not registered
            pass
    return get_codec("f16")


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
        teacher: teacher description (``name``, ``weights``, ``input_size``, ``crop_mode``, ``crop_pct``,
            ``mean``, ``std``, ``grid``); missing fields are stored as null.
        class_set / class_names: class-set id and optional list of ``num_classes`` names.
        metadata: free keys, each namespaced ``"ns.key"`` or the key ``"extra"``.
        max_records / max_bytes: shard rollover limits (records per shard; approximate bytes).
        dictionary: ``False``; ``True`` trains a zstd dictionary on the first records and keeps it
            when it makes them smaller; ``"auto"`` keeps it only when it pays for its own size.
        level: zstd compression level (default 3: spec/ENCODINGS.md, "Compression level").
        resume: journal every record and continue an interrupted run with the same arguments.
        overwrite: replace existing outputs (refused otherwise); readers see the old dataset until
            the new one is complete.
        extend: with ``resume``, continue a finished output instead of adopting it: it must have
            been written with these arguments (:class:`WriterError` otherwise) and stays readable
            until this writer publishes; the caller adds the records to keep (``add_raw``) and the
            new ones. An interrupted extension resumes like any run.
        lock: this output's lock, handed over by an earlier writer of it (``abort(keep_lock=True)``)
            so that no other writer can take the output in between; the new writer owns it.

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
        level: int = 3,
        resume: bool = False,
        overwrite: bool = False,
        extend: bool = False,
        lock: OutputLock | None = None,
    ) -> None:
        self._closed = True  # until fully constructed
        self._complete = False
        check_arguments(num_classes, k, score_kind, max_records, max_bytes, dictionary, level)
        self.num_classes, self.k, self.score_kind = int(num_classes), int(k), score_kind
        self.max_records, self.max_bytes = max_records, max_bytes
        self.level = int(level)
        self.dictionary_mode: bool | str = dictionary
        if extend and not resume:
            raise InvalidArgumentError("extend=True needs resume=True")
        self.resume, self.overwrite, self.extend = bool(resume), bool(overwrite), bool(extend)
        self.codec = get_codec(encoding) if encoding is not None else _default_codec(score_kind)
        self._encoder = RecordEncoder(codec=self.codec, num_classes=self.num_classes, k=self.k, level=self.level)
        self._metadata = file_metadata(self.num_classes, self.k, self.score_kind, self.codec.spec, self.level,
                                       teacher, class_set, class_names, metadata)

        p = Path(path)
        self.sharded = is_sharded(p, max_records=max_records, max_bytes=max_bytes)
        self.folder, self.name = dataset_location(path, sharded=self.sharded)
        self.path = p
        self._files = RunFiles(self.folder, self.name, self.sharded)
        self._keys: set[str] = set()
        self._done: list[tuple[Path, int]] = []  # finished shards: (file, records)
        self._shard: PartialShard | None = None
        self._pending: list[tuple[str, bytes, bytes]] = []  # (key, record header, body) before training
        self._dict: bytes | None = None if dictionary else b""
        self._written: list[str] = []
        self._raw_decoders: dict[bytes, RecordDecoder] = {}  # source dictionary -> decoder (add_raw)

        # OutputLockedError: another writer has this output
        self._lock: OutputLock = self._files.lock(p) if lock is None else self._files.adopt_lock(lock)
        try:
            finished = self._files.begin(resume=self.resume, overwrite=self.overwrite, extend=self.extend,
                                         metadata=as_stored(self._config()["metadata"]))
            if finished is not None:  # a finished run: nothing to add, close() returns its paths
                self._keys, self._written = finished
                self._complete = True
                self._lock.release()
                return
            if self.resume:
                state = recover(self._files, as_stored(self._config()), self._dict)
                self._done, self._keys, self._dict, self._shard = state.done, state.keys, state.dictionary, state.shard
            else:
                self._files.remove_stale()
            if self._dict is not None:
                self._start_compressor()
        except BaseException:
            self._lock.release()
            raise
        self._closed = False

    # ------------------------------------------------------------------------------ arguments
    # ------------------------------------------------------------------------------ outputs
    def _config(self) -> dict[str, Any]:
        """The arguments a resumed run must repeat."""
        return {
            "metadata": comparable_metadata(self._metadata),
            "max_records": self.max_records,
            "max_bytes": self.max_bytes,
            "dictionary": self.dictionary_mode,
            "sharded": self.sharded,
        }

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

    def add_many(self, keys: Sequence[str], indices: Any, scores: Any, *, lse: Any = None, counts: Any = None) -> None:
        """Add ``len(keys)`` label maps of one shape: ``indices``/``scores`` stacked ``(N, k', H, W)``,
        ``lse``/``counts`` ``(N, H, W)``. The same bytes as :meth:`add` of each in turn, encoded with a
        few numpy calls per batch and compressed on several threads. All or nothing: when a key or a
        map is refused, none of the batch is added."""
        keys, seen = list(keys), set()
        for key in keys:
            self._check_key(key)
            if key in seen:
                raise WriterError(f"duplicate key {key!r}")
            seen.add(key)
        if self._dict is None:  # the dictionary is trained on the first bodies: hold them as add() does
            batch = self._encoder.encode_many(keys, indices, scores, counts=counts, lse=lse)
            for key, body in zip(keys, batch.bodies, strict=True):
                self._store(key, batch.header, body)
            return
        records = self._encoder.stream_records(keys, indices, scores, counts=counts, lse=lse)  # raises first
        self._keys.update(keys)
        for key, rec in zip(keys, records, strict=True):
            self._write(key, rec)

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
        self._check_key(key)
        if not isinstance(record, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"a record is bytes, got {type(record).__name__}")
        rec = bytes(record)
        if crc32 is not None and fmt.crc32(rec) != crc32:
            raise CorruptRecordError(f"CRC32 mismatch in record {key!r}")
        source_dict = bytes(dictionary)
        header, body = self._raw_decoder(source_dict).checked_body(rec, key)
        self._store(key, header, body, rec[fmt.RECORD_HEADER_SIZE :] if source_dict == self._dict else None)

    def _raw_decoder(self, dictionary: bytes) -> RecordDecoder:
        """The decoder of records compressed with ``dictionary`` under this writer's structure."""
        decoder = self._raw_decoders.get(dictionary)
        if decoder is None:
            try:
                decoder = RecordDecoder(
                    num_classes=self.num_classes, k=self.k, score_kind=self.score_kind, codec=self.codec,
                    dictionary=dictionary,
                )
            except FormatError as exc:
                raise InvalidArgumentError(str(exc)) from None
            self._raw_decoders[dictionary] = decoder
        return decoder

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
        header, body = self._encoder.body(lm)
        self._store(key, header, body)

    def _store(self, key: str, header: bytes, body: bytes, frame: bytes | None = None) -> None:
        """Write a record, or hold it until the dictionary is trained; ``frame`` is its already
        compressed body when that was compressed with this writer's dictionary."""
        self._keys.add(key)
        if self._dict is None:
            self._pending.append((key, header, body))
            if len(self._pending) >= DICT_SAMPLES:
                self._train_dictionary()
        else:
            self._write(key, header + (frame if frame is not None else self._encoder.compress(body)))

    def _start_compressor(self) -> None:
        self._encoder.use_dictionary(self._dict or b"")
        self._metadata["compression"]["dictionary"] = bool(self._dict)
        self._metadata_bytes = fmt.dump_metadata(self._metadata)

    def _train_dictionary(self) -> None:
        """Train on the pending bodies (kept only where it makes records smaller), then write them."""
        samples = [body for _, _, body in self._pending]
        self._dict = train_dictionary(samples, level=self.level, count_size=self.dictionary_mode == "auto")
        self._start_compressor()
        pending, self._pending = self._pending, []
        for key, header, body in pending:
            self._write(key, header + self._encoder.compress(body))

    def _write(self, key: str, rec: bytes) -> None:
        shard = self._shard
        footer = len(self._metadata_bytes) + len(self._dict or b"")
        if shard is not None and shard.entries and shard.full(key, rec, self.max_records, self.max_bytes, footer):
            self._finish_shard()
            shard = None
        if shard is None:
            shard = self._open_shard()
        shard.append(key, rec)

    def _open_shard(self) -> PartialShard:
        """Create the partial file (and journal) of the next shard and make it current."""
        i = len(self._done) + 1
        shard = PartialShard(self._files.partial(i), self._files.journal(i) if self.resume else None)
        shard.create(journal_header(self._config(), self._dict or b"") if self.resume else None)
        self._shard = shard
        return shard

    def _finish_shard(self) -> None:
        shard = self._shard
        assert shard is not None
        shard.finish(self._metadata_bytes, self._dict or b"")
        done = self._files.done(len(self._done) + 1) if self.sharded else self._files.single_file
        shard.move_to(done)
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
        """Finalize every output atomically; returns the written paths (shards, then the index).
        When finalizing fails (e.g. a full disk) the writer aborts (:meth:`abort`) and re-raises."""
        if self._closed:
            return list(self._written)
        try:
            if self._dict is None:
                self._train_dictionary()
            if self._shard is None and not self._done:
                if not self._encoder.ready:
                    self._start_compressor()
                self._open_shard()
            if self._shard is not None:
                self._finish_shard()
            done = [path for path, _ in self._done]
            self._written = self._files.publish(done) if self.sharded else [str(self._files.single_file)]
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._encoder.close()
        self._lock.release()
        return list(self._written)

    def abort(self, *, keep_lock: bool = False) -> OutputLock | None:
        """Stop without finalizing, also when the disk is full. Without ``resume`` every file the
        writer created is deleted; with it they are flushed (as far as they can be) and kept for a
        later ``Writer(..., resume=True)``.

        ``keep_lock``: return the output's lock, still held, for the next writer of this output
        (``Writer(..., lock=...)``) instead of releasing it; ``None`` when this writer holds none
        (already closed, or it adopted a finished output)."""
        if self._closed:
            return None
        self._closed = True
        try:
            if self.resume and self._dict is None and self._pending:
                self._train_dictionary()
        finally:
            try:
                abandon(self._shard, [done for done, _ in self._done], keep=self.resume)
            finally:
                self._shard = None
                self._encoder.close()
                if not keep_lock:
                    self._lock.release()
        return self._lock if keep_lock else None

    def __enter__(self) -> Writer:
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
