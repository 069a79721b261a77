"""The campaign ledger: one small JSON object per tile in the output store, written atomically.

Layout under the campaign output (any fsspec URL)::

    ledger/campaign.json          the campaign's fingerprint and settings (a rerun must match them)
    ledger/tiles/<tile_id>.json   one record per tile: state, attempts (with their worker and GPU), timings
    ledger/runs/<run_id>.json     one summary per run of the driver (wall time, GPU time its actors held)
    ledger/zones/<epsg>.json      one record per UTM zone: its mosaic and the outputs written from it

A tile with no record is *planned*. Only the driver writes the ledger (one writer), and every record is
replaced whole: write-then-rename on a local disk, a single PUT on an object store (S3, GCS and Azure make
a PUT visible all at once or not at all). A crash therefore leaves either the old record or the new one,
never half of one, and since the record is written only after the stage's output is committed, a
record can never claim an output that is not there.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any, Literal, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, ValidationError

from campaign.errors import LedgerError

TILES_DIR = "tiles"
RUNS_DIR = "runs"
ZONES_DIR = "zones"
CAMPAIGN_FILE = "campaign.json"
_TMP_MARK = ".tmp-"


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
    #: Seconds the driver loop spent working (not waiting on Ray): scheduling, ledger writes, progress.
    driver_busy_seconds: float = 0.0
    #: Of which writing ledger records.
    ledger_seconds: float = 0.0


class ZoneRecord(_Frozen):
    """The mosaic of one UTM zone, written once the mosaic and its outputs are complete."""

    epsg: int
    mosaic_url: str
    run_id: str
    finished: float
    #: Output kind (quicklooks, cogs, stac) -> where it was written.
    outputs: dict[str, str] = {}


class LedgerStore(Protocol):
    """Whole-object storage under one prefix: what the ledger needs, and all a test has to provide."""

    def read(self, name: str) -> bytes | None: ...

    def read_dir(self, prefix: str) -> dict[str, bytes]: ...

    def write(self, name: str, data: bytes) -> None: ...


class FsspecLedgerStore:
    """A :class:`LedgerStore` on any fsspec URL: atomic rename on local disks, one PUT elsewhere."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self._fs, self._root = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        self._local = isinstance(self._fs, LocalFileSystem)

    def _path(self, name: str) -> str:
        return f"{self._root}/{name}"

    def read(self, name: str) -> bytes | None:
        try:
            return bytes(self._fs.cat_file(self._path(name)))
        except FileNotFoundError:
            return None

    def read_dir(self, prefix: str) -> dict[str, bytes]:
        base = self._path(prefix)
        try:
            paths = [p for p in self._fs.find(base) if _TMP_MARK not in p.rsplit("/", 1)[-1]]
        except FileNotFoundError:
            return {}
        if not paths:
            return {}
        # One batched call: concurrent GETs on object stores, where a big campaign has many records.
        contents = self._fs.cat(paths, on_error="omit")
        return {p.rsplit("/", 1)[-1]: bytes(c) for p, c in contents.items()}

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX: readers see the old record or the new one
        else:
            self._fs.pipe_file(path, data)  # one PUT: object stores publish it whole or not at all


class Ledger:
    """Tile records of one campaign, cached in memory, each change written through to the store."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._records: dict[str, TileRecord] = {}

    @classmethod
    def open(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> Ledger:
        """The ledger at ``url`` (usually ``<output>/ledger``), with its records loaded."""
        ledger = cls(FsspecLedgerStore(url, storage_options))
        ledger.load()
        return ledger

    def load(self) -> dict[str, TileRecord]:
        records: dict[str, TileRecord] = {}
        for name, data in self._store.read_dir(TILES_DIR).items():
            try:
                record = TileRecord.model_validate_json(data)
            except ValidationError as err:
                raise LedgerError(
                    f"ledger record {TILES_DIR}/{name} is not a valid tile record "
                    f"({err.errors()[0]['msg']}); "
                    "delete that file and rerun: its tile will be redone"
                ) from None
            records[record.tile_id] = record
        self._records = records
        return dict(records)

    def __iter__(self) -> Iterator[TileRecord]:
        return iter(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def get(self, tile_id: str) -> TileRecord | None:
        return self._records.get(tile_id)

    @property
    def records(self) -> Mapping[str, TileRecord]:
        return dict(self._records)

    def put(self, record: TileRecord) -> None:
        """Write ``record`` through to the store, replacing the tile's previous record."""
        try:
            self._store.write(f"{TILES_DIR}/{record.tile_id}.json", record.model_dump_json().encode())
        except OSError as err:
            raise LedgerError(f"tile {record.tile_id!r}: cannot write its ledger record: {err}") from err
        self._records[record.tile_id] = record

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
