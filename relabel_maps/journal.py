"""The files of a run being written: hidden working files, the crash journal, recovery and publication.

A shard being written is a hidden partial file (file header, then records) and, with ``resume``, a
journal: one JSON header line (journal version, the writer's arguments, the dictionary), then one
line ``[key, offset, nbytes, crc32]`` per record. A finished shard waits as ``.NAME-0000i.rlm.done``
until the run is published. After a crash, :func:`recover` takes every finished shard and every
complete, CRC-valid record of the partial one that the journal describes, and cuts both files back
to that point. A journal whose partial file is gone (a kill between renaming the finished file and
deleting its journal) is stale and deleted by the next run. :func:`abandon` stops a run even when
closing its files fails (a full disk): it keeps the resume state or deletes every working file.
A run holds its output's lock (:mod:`relabel_maps.lock`) from start to end, so that no two runs
share these files, and publishes shards by :func:`relabel_maps.publish.publish_shards`. A run's
arguments are checked and turned into file metadata by :mod:`relabel_maps.arguments`; the journal
stores them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from . import format as fmt
from .arguments import as_stored, comparable_metadata, json_line
from .errors import InvalidArgumentError, WriterError
from .layout import index_path, lock_path, shard_files, working_file, working_shard_count
from .lock import OutputLock
from .publish import fsync_dir, publish_shards
from .reader import Reader
from .shards import ShardedReader, open_index

__all__ = [
    "JOURNAL_VERSION",
    "PartialShard",
    "Recovered",
    "RunFiles",
    "abandon",
    "fsync_dir",
    "journal_header",
    "recover",
]

JOURNAL_VERSION = 1
#: write buffer of a partial shard: records of a few KB each reach the file in few system calls (a
#: crash can lose more unflushed records, which the journal's CRC check on resume already drops)
_FILE_BUFFER = 1 << 20
_Entry = tuple[str, int, int, int]  # key, offset, nbytes, crc32


def journal_header(config: Mapping[str, Any], dictionary: bytes) -> dict[str, Any]:
    """The first line of a journal: its version, the writer's arguments and the dictionary."""
    return {
        "journal": JOURNAL_VERSION,
        "config": dict(config),
        "dictionary": base64.b64encode(dictionary).decode("ascii"),
    }


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The files of dataset ``name`` being written in ``folder``: hidden working files (shards
    1-based) and the outputs they become."""

    folder: Path
    name: str
    sharded: bool

    @property
    def single_file(self) -> Path:
        """The output when not sharded."""
        return self.folder / self.name

    def outputs(self) -> list[Path]:
        """The outputs that exist already (index first)."""
        if not self.sharded:
            return [self.single_file] if self.single_file.exists() else []
        index = index_path(self.folder, self.name)
        return ([index] if index.exists() else []) + shard_files(self.folder, self.name)

    def partial(self, i: int) -> Path:
        return working_file(self.folder, self.name, i if self.sharded else None, "partial")

    def journal(self, i: int) -> Path:
        return working_file(self.folder, self.name, i if self.sharded else None, "journal")

    def done(self, i: int) -> Path:
        return working_file(self.folder, self.name, i, "done")

    def finished_run(self, metadata: Mapping[str, Any]) -> tuple[set[str], list[str]] | None:
        """``(keys, files)`` of the complete output of this run, or ``None`` when it is not complete;
        :class:`WriterError` when it was written with other arguments (``metadata`` as stored,
        :func:`comparable_metadata`)."""
        if self.partial(1).exists() or self.done(1).exists():
            return None
        return self.check_finished(metadata)

    def check_finished(self, metadata: Mapping[str, Any]) -> tuple[set[str], list[str]] | None:
        """``(keys, files)`` of the published output, or ``None`` when there is none;
        :class:`WriterError` when it was written with other arguments."""
        final = index_path(self.folder, self.name) if self.sharded else self.single_file
        if not final.exists():
            return None
        with open_index(final) if self.sharded else Reader(final) as maps:
            if comparable_metadata(as_stored(maps.metadata)) != metadata:
                raise WriterError(f"resume: {final} was written with different arguments")
            shards = [str(self.folder / n) for n in maps.shard_names] if isinstance(maps, ShardedReader) else []
            return set(maps), shards + [str(final)]

    def lock(self, output: Path) -> OutputLock:
        """Take the output's writer lock (creating the folder); :class:`OutputLockedError` when
        another writer holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return OutputLock(lock_path(self.folder, self.name), output)

    def adopt_lock(self, lock: OutputLock) -> OutputLock:
        """Take over ``lock``, held for this output by an earlier writer (:class:`InvalidArgumentError`
        when it is another output's, or no longer held)."""
        own = lock_path(self.folder, self.name)
        if not isinstance(lock, OutputLock) or not lock.held or Path(lock.path).resolve() != own.resolve():
            raise InvalidArgumentError(f"lock= takes this output's held lock ({own})")
        return lock

    def begin(self, *, resume: bool, overwrite: bool, metadata: Mapping[str, Any],
              extend: bool = False) -> tuple[set[str], list[str]] | None:
        """Start a run (holding the lock): drop stale journals; with ``resume`` (and neither
        ``overwrite`` nor ``extend``) return :meth:`finished_run` when the output is complete; refuse
        an existing output unless ``overwrite`` or ``extend`` (:class:`WriterError`). ``extend``
        keeps a finished output (to be published over) after checking that it was written with
        these arguments."""
        self.remove_stale_journals()
        if extend:
            self.check_finished(metadata)
            return None
        if resume and not overwrite:
            finished = self.finished_run(metadata)
            if finished is not None:
                return finished
        existing = self.outputs()
        if existing and not overwrite:
            hint = " (the run already finished)" if resume else ""
            raise WriterError(f"output exists{hint}: {existing[0]}; pass overwrite=True to replace it")
        return None

    def publish(self, done: list[Path]) -> list[str]:
        """Publish the finished shards ``done`` (:func:`publish_shards`): the shards, then the index."""
        return [str(p) for p in publish_shards(self.folder, self.name, done)]

    def _working_shards(self) -> range:
        return range(1, 1 + (working_shard_count(self.folder, self.name) if self.sharded else 1))

    def remove_stale(self) -> None:
        """Delete what an earlier run left behind."""
        for i in self._working_shards():
            for p in (self.partial(i), self.journal(i), self.done(i)):
                p.unlink(missing_ok=True)

    def remove_stale_journals(self) -> None:
        """Delete journals without their partial file: their shard finished (nothing to recover)."""
        for i in self._working_shards():
            if not self.partial(i).exists():
                self.journal(i).unlink(missing_ok=True)


class PartialShard:
    """One output file being written: a partial file of records (+ an optional journal)."""

    def __init__(self, partial: Path, journal: Path | None) -> None:
        self.partial = partial
        self.journal_path = journal
        self.file: BinaryIO | None = None
        self.journal: BinaryIO | None = None
        self.entries: list[_Entry] = []
        self.pos = fmt.HEADER_SIZE
        self.key_bytes = 0

    def create(self, header: Mapping[str, Any] | None) -> None:
        """Start the partial file (and the journal with ``header`` when it has one)."""
        self.file = open(self.partial, "wb", buffering=_FILE_BUFFER)
        self.file.write(fmt.pack_header())
        if self.journal_path is not None and header is not None:
            self.journal = open(self.journal_path, "wb")
            self.journal.write(json_line(header))

    def full(self, key: str, rec: bytes, max_records: int | None, max_bytes: int | None, footer: int) -> bool:
        """Whether appending ``rec`` would pass a rollover limit; ``footer`` is the size of the
        footer without the index rows and keys."""
        if max_records is not None and len(self.entries) >= max_records:
            return True
        if max_bytes is not None:
            n = len(self.entries) + 1
            size = self.pos + len(rec) + footer + n * fmt.INDEX_ROW_SIZE + self.key_bytes + len(key.encode("utf-8"))
            return size + fmt.TRAILER_SIZE > max_bytes
        return False

    def append(self, key: str, rec: bytes) -> None:
        assert self.file is not None
        crc = fmt.crc32(rec)
        self.file.write(rec)
        self.entries.append((key, self.pos, len(rec), crc))
        if self.journal is not None:
            self.journal.write(json_line([key, self.pos, len(rec), crc]))
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

    def move_to(self, done: Path) -> None:
        """Rename the finished file to ``done`` (durably) and drop its journal."""
        os.replace(self.partial, done)
        fsync_dir(done.parent)
        if self.journal_path is not None:
            self.journal_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close both files, even when the first fails (a full disk fails the flush of buffered
        bytes); raises the first error."""
        files, self.file, self.journal = (self.file, self.journal), None, None
        error: BaseException | None = None
        for f in files:
            try:
                if f is not None:
                    f.close()
            except BaseException as exc:  # raised below, after closing the other file
                error = error or exc
        if error is not None:
            raise error

    def keep(self) -> None:
        """Flush and close for a later resume; what cannot be written (a full disk) is simply not
        recovered (the journal describes only records whose bytes are there and pass their CRC)."""
        with contextlib.suppress(OSError):
            self.flush(sync=True)
        with contextlib.suppress(OSError):
            self.close()

    def discard(self) -> None:
        """Close (errors ignored: the files go) and delete the partial file and the journal."""
        with contextlib.suppress(OSError):
            self.close()
        self.partial.unlink(missing_ok=True)
        if self.journal_path is not None:
            self.journal_path.unlink(missing_ok=True)

    def reopen(self, entries: list[_Entry], journal_bytes: int) -> None:
        """Continue after ``entries`` (recovered): cut both files back to them and append from there."""
        assert self.journal_path is not None
        self.entries = entries
        self.pos = entries[-1][1] + entries[-1][2] if entries else fmt.HEADER_SIZE
        self.key_bytes = sum(len(e[0].encode("utf-8")) for e in entries)
        with open(self.journal_path, "r+b") as jf:
            jf.truncate(journal_bytes)
        self.file = open(self.partial, "r+b", buffering=_FILE_BUFFER)
        if not entries:
            self.file.truncate(0)
            self.file.write(fmt.pack_header())
        self.file.truncate(self.pos)
        self.file.seek(self.pos)
        self.journal = open(self.journal_path, "ab")


def abandon(shard: PartialShard | None, done: list[Path], *, keep: bool) -> None:
    """Stop a run without finishing it, also on a full disk. ``keep``: flush and close the partial
    ``shard`` for a later resume. Otherwise delete it, its journal and the finished hidden shards
    ``done`` (a published output, not hidden, stays)."""
    if keep:
        if shard is not None:
            shard.keep()
        return
    if shard is not None:
        shard.discard()
    for path in done:
        if path.name.startswith("."):
            path.unlink(missing_ok=True)


@dataclasses.dataclass
class Recovered:
    """What an interrupted run left: finished shards ``(file, records)``, every key stored, the
    dictionary (``None`` while not known) and the partial shard to continue (``None``: start one)."""

    done: list[tuple[Path, int]]
    keys: set[str]
    dictionary: bytes | None
    shard: PartialShard | None


def recover(files: RunFiles, config: Mapping[str, Any], dictionary: bytes | None) -> Recovered:
    """Pick up finished shards and the complete, CRC-valid records of the partial shard.

    ``config`` is the writer's arguments as stored (:func:`as_stored`); a shard or journal written
    with other arguments raises :class:`WriterError`. ``dictionary`` is the writer's (``None``:
    trained later).
    """
    state = Recovered([], set(), dictionary, None)
    i = 1
    while files.sharded and files.done(i).exists():
        with Reader(files.done(i)) as r:
            if r.metadata.get("compression", {}).get("dictionary"):
                state.dictionary = r.dictionary
            elif state.dictionary is None:
                state.dictionary = b""
            if comparable_metadata(r.metadata) != config["metadata"]:
                raise WriterError(f"resume: {files.done(i)} was written with different arguments")
            state.keys.update(r.keys())
            state.done.append((files.done(i), len(r)))
        files.journal(i).unlink(missing_ok=True)  # stale: the shard finished
        files.partial(i).unlink(missing_ok=True)
        i += 1
    _recover_partial(state, files.partial(i), files.journal(i), config)
    return state


def _recover_partial(state: Recovered, partial: Path, journal: Path, config: Mapping[str, Any]) -> None:
    if not (partial.exists() and journal.exists()):
        partial.unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
        return
    with open(journal, "rb") as jf:
        lines = jf.read().split(b"\n")
    try:
        header = json.loads(lines[0])
        ok = header.get("journal") == JOURNAL_VERSION
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
    if state.dictionary is not None and state.dictionary != dictionary:
        raise WriterError(f"resume: {journal} disagrees with the finished shards' dictionary")
    state.dictionary = dictionary
    good_journal = len(lines[0]) + 1
    entries: list[_Entry] = []
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
            if not sound or key in state.keys or fmt.crc32(os.pread(pf.fileno(), n, off)) != crc:
                break
            entries.append((key, off, n, crc))
            state.keys.add(key)
            pos += n
            good_journal += len(line) + 1
    shard = PartialShard(partial, journal)
    shard.reopen(entries, good_journal)
    state.shard = shard
