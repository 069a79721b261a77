"""The campaign ledger: every tile's record in the output store, as a compacted index and a journal.

Layout under the campaign output (any fsspec URL)::

    ledger/campaign.json            the campaign's fingerprint and settings (a rerun must match them)
    ledger/journal/<stamp>-<writer>-<tile_id>.json
                                    one object per record written: the tile's whole record (state,
                                    attempts with their worker and GPU, timings) as of that write
                                    (``put_many``: several records in one object, one a line)
    ledger/index/<as_of>-<id>.idx   the compacted index: every tile's latest record as of a point, in
                                    one object (zstd: a JSON header with each tile's id, stamp and a
                                    digest of what the report needs, then the records, one a line)
    ledger/runs/<run_id>.json       one summary per run of the driver (wall time, GPU time its actors held)
    ledger/zones/<epsg>.json        one record per UTM zone: its mosaic and the outputs written from it
    ledger/tiles/<tile_id>.json     records of a ledger written before the index existed: still read,
                                    folded into the index by the first compaction

A tile with no record is *planned*. Each record written is a new journal object with a unique,
increasing *stamp* (nanoseconds, strictly increasing per writer and above every stamp loaded), so
nothing is ever overwritten in place: write-then-rename on a local disk, a single PUT on an object store
(S3, GCS and Azure make a PUT visible all at once or not at all). A crash leaves whole objects only, and
since a record is written only after the stage's output is committed, a record can never claim an
output that is not there.

Loading reads the index object(s) and the journal (the records newer than the index); for each tile the
record with the highest stamp wins, so a journal entry already folded into an index (a compaction cut
short before deleting it) changes nothing. :meth:`Ledger.compact` (when a ledger has written
:data:`COMPACT_EVERY` records or :data:`COMPACT_SHARE` of the index's, whichever is more, or
:data:`MAX_JOURNAL_ENTRIES` journal entries; and on :meth:`Ledger.close`) lists the journal, merges it
into a new index, writes the index, and only then deletes the journal entries and older indexes it
merged: every record is always in an index or in the journal, whatever crashes when, and records
written during a compaction are entries it did not list, which stay. A reader that finds a listed object
gone (a compaction meanwhile) loads again.

Records in an index are parsed only when asked for (:meth:`Ledger.get`); the states
(:meth:`Ledger.state`) and the report's figures (:meth:`Ledger.digests`) come from the index header, so
``declouder status`` on a 350,000-tile campaign parses no record it does not print.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal, NamedTuple, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem
from numcodecs import Zstd
from pydantic import BaseModel, ConfigDict, ValidationError

from campaign.errors import LedgerError
from tiler.object_store import with_retries

TILES_DIR = "tiles"
JOURNAL_DIR = "journal"
INDEX_DIR = "index"
RUNS_DIR = "runs"
ZONES_DIR = "zones"
CAMPAIGN_FILE = "campaign.json"
_TMP_MARK = ".tmp-"
#: Format of the index objects this code writes (and the only one it reads).
INDEX_FORMAT = 1
INDEX_SUFFIX = ".idx"
#: A ledger compacts its journal into a new index after writing this many records. It bounds what a
#: load reads one object at a time (at most about this many journal entries: on an object store one
#: GET each) against how often the whole index is rewritten (bench/ledger.py measures both).
COMPACT_EVERY = 5_000
#: ... or this share of the index's records, if more: every compaction rewrites the whole index, so a fixed
#: threshold makes the records rewritten over a campaign grow with the square of its tiles (350 k tiles ×
#: 3 records: ~200 rewrites of up to 1 M records). A threshold proportional to the index keeps them linear:
#: the index sizes written form a geometric series, in total at most (1 + 1/share) × the records written.
COMPACT_SHARE = 0.5
#: ... and at the latest after this many journal entries (objects), whatever they hold: a load reads each.
MAX_JOURNAL_ENTRIES = 2_000
#: Loads retried when a listed object vanished under a concurrent compaction.
LOAD_ATTEMPTS = 5
#: zstd level 1 (numcodecs): the index is rewritten at every compaction, so encoding speed matters
#: more than size; ledger records are repetitive JSON, which it shrinks ~30× (bench/ledger.py).
_INDEX_CODEC = Zstd(level=1)


class TileState(StrEnum):
    """Where a tile stands. ``failed`` keeps the stage it failed in (:attr:`TileRecord.failed_stage`)."""

    PLANNED = "planned"
    INGESTED = "ingested"
    FITTED = "fitted"
    MOSAICKED = "mosaicked"
    FAILED = "failed"
    #: No Sentinel-2 data over the tile (sea, outside every footprint): settled, never retried or failed.
    EMPTY = "empty"


class Stage(StrEnum):
    INGEST = "ingest"
    FIT = "fit"
    MOSAIC = "mosaic"


#: The state a tile reaches when a stage succeeds.
STATE_AFTER: dict[Stage, TileState] = {
    Stage.INGEST: TileState.INGESTED,
    Stage.FIT: TileState.FITTED,
    Stage.MOSAIC: TileState.MOSAICKED,
}

Outcome = Literal["ok", "error", "worker_died", "interrupted"]


class _Frozen(BaseModel):
    # Records outlive the code that wrote them: a field added by a later version is ignored, not refused.
    model_config = ConfigDict(frozen=True, extra="ignore")


class Attempt(_Frozen):
    """One try of one stage on one tile, as the worker that ran it saw it."""

    stage: Stage
    number: int
    run_id: str
    started: float
    ended: float
    outcome: Outcome
    error: str | None = None
    #: Bad input (a DeclouderError): retrying the same input would fail the same way.
    permanent: bool = False
    worker: str | None = None
    node_id: str | None = None
    pid: int | None = None
    #: GPU ids Ray assigned to the worker and the CUDA_VISIBLE_DEVICES the fit ran with.
    gpu_ids: tuple[str, ...] = ()
    cuda_visible_devices: str | None = None
    gpu_share: float = 0.0
    device: str | None = None

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended - self.started)


class TileRecord(_Frozen):
    """Everything the ledger knows about one tile."""

    tile_id: str
    epsg: int
    area_km2: float
    state: TileState = TileState.PLANNED
    failed_stage: Stage | None = None
    error: str | None = None
    permanent: bool = False
    attempts: tuple[Attempt, ...] = ()
    #: Small summaries the stages return (IngestSummary, FitResult), as JSON-able dicts.
    ingest: dict[str, Any] | None = None
    fit: dict[str, Any] | None = None

    def attempts_at(self, stage: Stage) -> int:
        """Attempts that count towards the retry limit: a stop (Ctrl-C) is not the tile's fault."""
        return sum(1 for a in self.attempts if a.stage == stage and a.outcome != "interrupted")

    def successes_at(self, stage: Stage) -> int:
        return sum(1 for a in self.attempts if a.stage == stage and a.outcome == "ok")

    def seconds_at(self, stage: Stage) -> float:
        return sum(a.seconds for a in self.attempts if a.stage == stage)

    def gpu_seconds(self) -> float:
        """GPU time the tile's fit attempts held (failed ones included: they were paid for too)."""
        return sum(a.seconds * a.gpu_share for a in self.attempts if a.stage == Stage.FIT)

    def record(self, attempt: Attempt, *, state: TileState | None = None, **summary: Any) -> TileRecord:
        """This record with one more attempt; a success moves the tile on, a failure keeps its state."""
        update: dict[str, Any] = {"attempts": (*self.attempts, attempt), **summary}
        if attempt.outcome == "ok":
            update.update(
                state=state or STATE_AFTER[attempt.stage], failed_stage=None, error=None, permanent=False
            )
        return self.model_copy(update=update)

    def failed(self, stage: Stage, error: str, *, permanent: bool) -> TileRecord:
        return self.model_copy(
            update={"state": TileState.FAILED, "failed_stage": stage, "error": error, "permanent": permanent}
        )


class RunRecord(_Frozen):
    """One run of the driver over the campaign."""

    run_id: str
    started: float
    ended: float
    interrupted: bool
    fit_actors: int
    gpu_share: float
    #: GPU time the fit actors held from start to end of the run (what a cluster bills), in seconds.
    gpu_seconds_held: float
    tiles_done: int
    tiles_failed: int
    #: Seconds the driver loop spent working (not waiting on Ray): scheduling, waiting for ledger
    #: writes, progress.
    driver_busy_seconds: float = 0.0
    #: Seconds the ledger's writer thread spent writing tile records (beside the loop; campaign.book).
    ledger_seconds: float = 0.0
    #: Of the loop's busy time, waiting for a ledger write to end (the next batch, a sync, the end).
    ledger_wait_seconds: float = 0.0


class ZoneRecord(_Frozen):
    """The mosaic of one UTM zone, written once the mosaic and its outputs are complete."""

    epsg: int
    mosaic_url: str
    run_id: str
    finished: float
    #: Output kind (quicklooks, cogs, stac) -> where it was written.
    outputs: dict[str, str] = {}


#: A fit attempt as the report sees it: (started, ended, outcome, gpu_share, node_id, gpu_ids).
FitSpan = tuple[float, float, str, float, str | None, tuple[str, ...]]


class TileDigest(NamedTuple):
    """What the report needs of one tile, kept in the index header so a status parses no record."""

    tile_id: str
    state: TileState
    failed_stage: Stage | None
    fits: tuple[FitSpan, ...]

    @classmethod
    def of(cls, record: TileRecord) -> TileDigest:
        return cls(
            record.tile_id,
            record.state,
            record.failed_stage,
            tuple(
                (a.started, a.ended, a.outcome, a.gpu_share, a.node_id, a.gpu_ids)
                for a in record.attempts
                if a.stage == Stage.FIT
            ),
        )


def _digest(record: TileRecord) -> list[Any]:
    """The JSON form of a record's :class:`TileDigest` (without the id, which the header holds)."""
    fits = [
        [a.started, a.ended, a.outcome, a.gpu_share, a.node_id, list(a.gpu_ids)]
        for a in record.attempts
        if a.stage == Stage.FIT
    ]
    return [record.state.value, record.failed_stage.value if record.failed_stage else None, fits]


class LedgerStore(Protocol):
    """Whole-object storage under one prefix: what the ledger needs, and all a test has to provide."""

    def read(self, name: str) -> bytes | None: ...

    def read_dir(self, prefix: str) -> dict[str, bytes]: ...

    def write(self, name: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> list[str]:
        """Names (relative to ``prefix``) of the whole objects under ``prefix``, freshly listed."""
        ...

    def read_many(self, prefix: str, names: Sequence[str]) -> dict[str, bytes]:
        """Contents of ``prefix/name`` for each name; names that do not exist are left out."""
        ...

    def delete(self, prefix: str, names: Sequence[str]) -> None:
        """Delete ``prefix/name`` for each name; names already gone are fine."""
        ...


class FsspecLedgerStore:
    """A :class:`LedgerStore` on any fsspec URL: atomic rename on local disks, one PUT elsewhere."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self._fs, self._root = fsspec.core.url_to_fs(self.url, **with_retries(self.url, storage_options))
        self._local = isinstance(self._fs, LocalFileSystem)
        #: Object-store operations issued (lists, reads, writes, deletes) and bytes moved, for benchmarks.
        self.ops: dict[str, int] = {"list": 0, "read": 0, "write": 0, "delete": 0, "bytes_read": 0}

    def _path(self, name: str) -> str:
        return f"{self._root}/{name}"

    def read(self, name: str) -> bytes | None:
        self.ops["read"] += 1
        try:
            data = bytes(self._fs.cat_file(self._path(name)))
        except FileNotFoundError:
            return None
        self.ops["bytes_read"] += len(data)
        return data

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        self._fs.invalidate_cache(base)  # listings are cached per filesystem: this one must be fresh
        self.ops["list"] += 1
        try:
            paths = self._fs.find(base)
        except FileNotFoundError:
            return []
        names = [p[len(base) + 1 :] if p.startswith(base + "/") else p.rsplit("/", 1)[-1] for p in paths]
        return sorted(n for n in names if _TMP_MARK not in n.rsplit("/", 1)[-1])

    def read_many(self, prefix: str, names: Sequence[str]) -> dict[str, bytes]:
        if not names:
            return {}
        base = self._path(prefix)
        paths = [f"{base}/{n}" for n in names]
        # One batched call: concurrent GETs on object stores.
        contents = self._fs.cat(paths, on_error="return")
        self.ops["read"] += len(paths)
        out: dict[str, bytes] = {}
        for path, content in contents.items():
            if isinstance(content, FileNotFoundError):
                continue  # folded into the index and deleted by a compaction since the listing
            if isinstance(content, BaseException):
                # A read that failed after the store's retries must not silently drop a record.
                raise content
            out[path[len(base) + 1 :]] = bytes(content)
        self.ops["bytes_read"] += sum(len(c) for c in out.values())
        return out

    def read_dir(self, prefix: str) -> dict[str, bytes]:
        names = self.list(prefix)
        return {n.rsplit("/", 1)[-1]: c for n, c in self.read_many(prefix, names).items()}

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self.ops["write"] += 1
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see the old object or the new one
        else:
            self._fs.pipe_file(path, data)  # one PUT: object stores publish it whole or not at all

    def delete(self, prefix: str, names: Sequence[str]) -> None:
        if not names:
            return
        paths = [self._path(f"{prefix}/{n}") for n in names]
        self.ops["delete"] += 1 if not self._local else len(paths)
        try:
            self._fs.rm(paths)  # object stores: batched deletes
        except FileNotFoundError:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self._fs.rm_file(path)


class _VanishedError(Exception):
    """A listed ledger object was gone when read: a compaction ran meanwhile; load again."""


def _stamp_of(name: str) -> int:
    return int(name.split("-", 1)[0])


class Ledger:
    """Tile records of one campaign, loaded lazily, each change written through to the store.

    Thread-safe: puts and compactions of one ledger object are serialised by a lock.
    """

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._writer = uuid.uuid4().hex[:8]
        self._clear()

    def _clear(self) -> None:
        #: Parsed records (put here, or parsed on demand).
        self._records: dict[str, TileRecord] = {}
        #: Each tile's record as JSON (a slice of an index, a journal entry, or what put wrote).
        self._json: dict[str, bytes | memoryview] = {}
        self._stamps: dict[str, int] = {}
        self._digests: dict[str, list[Any]] = {}
        self._last_stamp = 0
        #: What the state in memory was loaded from: index names, journal names, legacy records.
        self._indexes: list[str] = []
        self._journal: set[str] = set()
        self._legacy: list[str] = []
        self._since_compact = 0
        self._entries_since_compact = 0

    def _compact_due(self) -> bool:
        threshold = max(COMPACT_EVERY, int(COMPACT_SHARE * len(self._stamps)))
        return self._since_compact >= threshold or self._entries_since_compact >= MAX_JOURNAL_ENTRIES

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> Ledger:
        """The ledger at ``url`` (usually ``<output>/ledger``), with its records loaded."""
        ledger = cls(FsspecLedgerStore(url, storage_options))
        ledger.load()
        return ledger

    # ------------------------------------------------------------------ loading
    def load(self) -> Mapping[str, TileRecord]:
        """Read the index and the journal; returns a read-only view of the records (parsed on access)."""
        with self._lock:
            for _ in range(LOAD_ATTEMPTS):
                try:
                    self._load_once()
                    return _RecordView(self)
                except _VanishedError:
                    continue
            raise LedgerError(
                f"ledger {self._describe()}: its objects kept changing while loading ({LOAD_ATTEMPTS} "
                "tries); another process is compacting it: retry when it is done"
            )

    def _describe(self) -> str:
        return repr(getattr(self._store, "url", "store"))

    def _load_once(self) -> None:
        self._clear()
        # The journal is listed before the indexes: an entry deleted after this listing was merged
        # into an index written before its deletion, which the index listing below then sees.
        journal = self._store.list(JOURNAL_DIR)
        indexes = [n for n in self._store.list(INDEX_DIR) if n.endswith(INDEX_SUFFIX)]
        for name in indexes:
            data = self._store.read(f"{INDEX_DIR}/{name}")
            if data is None:
                raise _VanishedError(name)
            self._merge_index(name, data)
        self._indexes = indexes
        legacy = self._store.read_dir(TILES_DIR)
        for name, data in sorted(legacy.items()):
            record = self._parse(data, f"{TILES_DIR}/{name}")
            self._apply(record.tile_id, 0, record, data)
        self._legacy = sorted(legacy)
        self._merge_journal(journal)

    def _merge_journal(self, names: Iterable[str]) -> None:
        names = [n for n in names if n not in self._journal]
        contents = self._store.read_many(JOURNAL_DIR, names)
        if len(contents) != len(names):
            raise _VanishedError(next(n for n in names if n not in contents))
        for name in sorted(names, key=_stamp_of):
            for line in contents[name].split(b"\n"):  # one record, or a batch of put_many, a line each
                record = self._parse(line, f"{JOURNAL_DIR}/{name}")
                self._apply(record.tile_id, _stamp_of(name), record, line)
            self._journal.add(name)

    def _merge_index(self, name: str, data: bytes) -> None:
        where = f"{INDEX_DIR}/{name}"
        try:
            payload = bytes(_INDEX_CODEC.decode(data))
            split = payload.index(b"\n")
            header = json.loads(payload[:split])
            if header.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {header.get('format')!r}, this code reads {INDEX_FORMAT}")
            ids, stamps, digests, lengths = (header[k] for k in ("ids", "stamps", "digests", "lengths"))
            if not len(ids) == len(stamps) == len(digests) == len(lengths):
                raise ValueError("its columns have different lengths")
            if split + 1 + sum(lengths) + max(len(ids) - 1, 0) != len(payload):
                raise ValueError("its records do not add up to its length (truncated?)")
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:  # zstd, JSON, shape
            raise LedgerError(
                f"ledger index {where} in {self._describe()} is not readable ({type(err).__name__}: "
                f"{err}); the tiles it holds cannot be read: restore the object from a backup, or "
                "delete it and rerun (the tiles it held are then redone)"
            ) from None
        view = memoryview(payload)
        starts = list(itertools.accumulate((n + 1 for n in lengths), initial=split + 1))
        slices: list[bytes | memoryview] = [view[a : a + n] for a, n in zip(starts, lengths, strict=False)]
        self._last_stamp = max(self._last_stamp, max(stamps, default=0))
        if not self._stamps:  # the usual case, one index: build the tables at C speed
            self._stamps = dict(zip(ids, stamps, strict=True))
            self._digests = dict(zip(ids, digests, strict=True))
            self._json = dict(zip(ids, slices, strict=True))
            return
        for tile_id, stamp, digest, record_json in zip(ids, stamps, digests, slices, strict=True):
            if stamp > self._stamps.get(tile_id, -1):
                self._records.pop(tile_id, None)
                self._json[tile_id] = record_json
                self._stamps[tile_id] = stamp
                self._digests[tile_id] = digest

    def _parse(self, data: bytes | memoryview, where: str) -> TileRecord:
        try:
            return TileRecord.model_validate_json(bytes(data))
        except ValidationError as err:
            raise LedgerError(
                f"ledger record {where} is not a valid tile record ({err.errors()[0]['msg']}); "
                "delete that file and rerun: its tile will be redone"
            ) from None

    def _apply(self, tile_id: str, stamp: int, record: TileRecord, data: bytes | memoryview) -> None:
        self._last_stamp = max(self._last_stamp, stamp)
        if stamp < self._stamps.get(tile_id, -1):
            return  # an older version (e.g. a journal entry an index already holds a newer one of)
        self._records[tile_id] = record
        self._json[tile_id] = data
        self._stamps[tile_id] = stamp
        self._digests[tile_id] = _digest(record)

    # ------------------------------------------------------------------ reading
    def __iter__(self) -> Iterator[TileRecord]:
        """Every record, parsed (at 100,000s of tiles prefer :meth:`digests` or :meth:`state`)."""
        for tile_id in list(self._stamps):
            record = self.get(tile_id)
            if record is not None:
                yield record

    def __len__(self) -> int:
        return len(self._stamps)

    def __contains__(self, tile_id: object) -> bool:
        return tile_id in self._stamps

    def get(self, tile_id: str) -> TileRecord | None:
        record = self._records.get(tile_id)
        if record is None and tile_id in self._json:
            record = self._parse(self._json[tile_id], f"index entry {tile_id}")
            self._records[tile_id] = record
        return record

    def state(self, tile_id: str) -> TileState | None:
        """The tile's state without parsing its record; None when it has none (planned)."""
        digest = self._digests.get(tile_id)
        return None if digest is None else TileState(digest[0])

    def tile_ids(self) -> list[str]:
        return list(self._stamps)

    def digests(self) -> Iterator[TileDigest]:
        """What the report needs of every tile, without parsing records."""
        for tile_id, (state, failed_stage, fits) in self._digests.items():
            yield TileDigest(
                tile_id,
                TileState(state),
                Stage(failed_stage) if failed_stage else None,
                tuple((f[0], f[1], f[2], f[3], f[4], tuple(f[5])) for f in fits),
            )

    def digest_rows(self) -> Iterator[tuple[str, str, str | None, list[list[Any]]]]:
        """:meth:`digests` as plain rows (state and stage as strings, fits as lists): the fast form."""
        for tile_id, (state, failed_stage, fits) in self._digests.items():
            yield tile_id, state, failed_stage, fits

    @property
    def records(self) -> Mapping[str, TileRecord]:
        """A read-only view of every record (parsed when accessed)."""
        return _RecordView(self)

    # ------------------------------------------------------------------ writing
    def _next_stamp(self) -> int:
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        return self._last_stamp

    def put(self, record: TileRecord) -> None:
        """Write ``record`` through to the store (a new journal entry); it replaces the tile's record."""
        with self._lock:
            stamp = self._next_stamp()
            name = f"{stamp:020d}-{self._writer}-{record.tile_id}.json"
            data = record.model_dump_json().encode()
            try:
                self._store.write(f"{JOURNAL_DIR}/{name}", data)
            except OSError as err:
                raise LedgerError(f"tile {record.tile_id!r}: cannot write its ledger record: {err}") from err
            self._apply(record.tile_id, stamp, record, data)
            self._journal.add(name)
            self._since_compact += 1
            self._entries_since_compact += 1
            if self._compact_due():
                self.compact()

    def put_many(self, records: Sequence[TileRecord]) -> None:
        """Write several records as one journal entry (one write: one fsync, or one PUT).

        All or none of them are stored; a tile given twice keeps its last record.
        """
        if not records:
            return
        with self._lock:
            stamp = self._next_stamp()
            more = f"+{len(records) - 1}" if len(records) > 1 else ""
            name = f"{stamp:020d}-{self._writer}-{records[0].tile_id}{more}.json"
            lines = [record.model_dump_json().encode() for record in records]
            try:
                self._store.write(f"{JOURNAL_DIR}/{name}", b"\n".join(lines))
            except OSError as err:
                raise LedgerError(
                    f"tiles {records[0].tile_id!r} and {len(records) - 1} more: cannot write their ledger "
                    f"records: {err}"
                ) from err
            for record, line in zip(records, lines, strict=True):
                self._apply(record.tile_id, stamp, record, line)
            self._journal.add(name)
            self._since_compact += len(records)
            self._entries_since_compact += 1
            if self._compact_due():
                self.compact()

    def compact(self) -> str | None:
        """Merge the journal into a new index object; returns its name (None: nothing to merge).

        Safe at any time, with other writers adding records meanwhile (entries written after the
        listing stay in the journal) and against crashes at any point (the index is written before
        anything it merged is deleted; a leftover entry is older than the index's and is ignored).
        """
        with self._lock:
            journal = self._store.list(JOURNAL_DIR)
            indexes = [n for n in self._store.list(INDEX_DIR) if n.endswith(INDEX_SUFFIX)]
            if indexes != self._indexes:
                self._load_once()  # another process compacted: start from what is there now
                journal = sorted(self._journal)
            else:
                self._merge_journal(journal)
            self._since_compact = 0
            self._entries_since_compact = 0
            if not journal and not self._legacy and len(self._indexes) <= 1:
                return None
            name = self._write_index()
            self._store.delete(JOURNAL_DIR, journal)
            self._store.delete(TILES_DIR, [n for n in self._legacy])
            self._store.delete(INDEX_DIR, [n for n in self._indexes if n != name])
            self._journal -= set(journal)
            self._legacy = []
            self._indexes = [name]
            return name

    def _write_index(self) -> str:
        ids = list(self._stamps)
        parts = [self._json[t] for t in ids]  # views into the loaded index: joined without copies
        header = {
            "format": INDEX_FORMAT,
            "as_of": max(self._stamps.values(), default=0),
            "count": len(ids),
            "ids": ids,
            "stamps": [self._stamps[t] for t in ids],
            "digests": [self._digests[t] for t in ids],
            "lengths": [len(p) for p in parts],
        }
        payload = json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"\n".join(parts)
        name = f"{header['as_of']:020d}-{uuid.uuid4().hex[:8]}{INDEX_SUFFIX}"
        self._store.write(f"{INDEX_DIR}/{name}", bytes(_INDEX_CODEC.encode(payload)))
        return name

    def close(self) -> None:
        """Compact what this ledger wrote since its last compaction (if anything); safe to call anytime."""
        with self._lock:
            if self._journal or self._legacy:
                self.compact()

    # ------------------------------------------------------------------ campaign, runs, zones
    def read_campaign(self) -> dict[str, Any] | None:
        data = self._store.read(CAMPAIGN_FILE)
        return None if data is None else json.loads(data)

    def write_campaign(self, info: Mapping[str, Any]) -> None:
        self._store.write(CAMPAIGN_FILE, json.dumps(dict(info), indent=2, sort_keys=True).encode())

    def put_run(self, run: RunRecord) -> None:
        self._store.write(f"{RUNS_DIR}/{run.run_id}.json", run.model_dump_json(indent=2).encode())

    def runs(self) -> list[RunRecord]:
        runs = [RunRecord.model_validate_json(d) for d in self._store.read_dir(RUNS_DIR).values()]
        return sorted(runs, key=lambda r: r.started)

    def put_zone(self, zone: ZoneRecord) -> None:
        self._store.write(f"{ZONES_DIR}/{zone.epsg}.json", zone.model_dump_json(indent=2).encode())

    def zones(self) -> dict[int, ZoneRecord]:
        zones = [ZoneRecord.model_validate_json(d) for d in self._store.read_dir(ZONES_DIR).values()]
        return {z.epsg: z for z in zones}


class _RecordView(Mapping[str, TileRecord]):
    """The records of a ledger as a read-only mapping, parsed when accessed."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __getitem__(self, tile_id: str) -> TileRecord:
        record = self._ledger.get(tile_id)
        if record is None:
            raise KeyError(tile_id)
        return record

    def __iter__(self) -> Iterator[str]:
        return iter(self._ledger.tile_ids())

    def __len__(self) -> int:
        return len(self._ledger)
