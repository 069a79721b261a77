"""The ledger side of a run: each tile's state, its attempts against its retry budget, progress events.

:class:`TileBook` is the one place a run changes a tile's state. Every change is O(1): one ledger write,
one counter update, and a notice to whoever waits for tiles to settle (the mosaic scheduler), so no
event of a campaign costs more with more tiles.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from campaign.config import RetriesConfig
from campaign.ledger import Attempt, Ledger, Outcome, Stage, TileRecord, TileState
from campaign.report import DONE_STATES
from campaign.workers import StageOutcome, WorkerInfo
from tiler.grid import TileRef

#: Tile records written to the ledger together, at most: one write (one fsync, or one PUT) for many.
LEDGER_BATCH = 256
#: Seconds a changed record may wait in memory before it is written (what a crashed driver can lose:
#: the tiles whose records were waiting redo their last stage on the rerun; their outputs are whole).
LEDGER_FLUSH_S = 1.0

#: What becomes of a tile after a failed attempt.
Verdict = Literal["retry", "failed", "interrupted"]


@dataclass(frozen=True)
class CampaignProgress:
    """One event of a running campaign, with the counts a live view shows."""

    kind: str
    message: str
    tile_id: str | None
    total: int
    states: Mapping[str, int]
    ingesting: int
    fitting: int
    mosaicking: int
    elapsed_s: float
    eta_s: float | None
    gpu_seconds_held: float
    gpu_seconds_fits: float
    worker: WorkerInfo | None = None


ProgressCallback = Callable[[CampaignProgress], None]


class Emit(Protocol):
    """How a scheduler reports an event of the run (the driver turns it into a :class:`CampaignProgress`)."""

    def __call__(
        self, kind: str, message: str, tile_id: str | None = None, worker: WorkerInfo | None = None
    ) -> None: ...


class TileBook:
    """Tile states of one run, written through to the ledger, with the counts progress and reports use."""

    def __init__(
        self, tiles: Mapping[str, TileRef], ledger: Ledger, *, run_id: str, retries: RetriesConfig
    ) -> None:
        self.tiles = tiles
        self.ledger = ledger
        self.run_id = run_id
        self.retries = retries
        self.states: dict[str, TileState] = {}
        self.counts: Counter[TileState] = Counter()
        #: Attempts a tile had used before this run, when ``--retry-failed`` gives it a fresh budget.
        self.base_attempts: dict[tuple[str, Stage], int] = {}
        self.gpu_seconds_fits = 0.0
        self.fits_done = 0
        #: Time spent writing ledger records, the writes (each of one or more records) and the records.
        self.ledger_seconds = 0.0
        self.ledger_writes = 0
        self.records_written = 0
        self._settled: list[Callable[[str], None]] = []
        #: Records changed since the last write, by tile (a tile changed twice is written once).
        self._pending: dict[str, TileRecord] = {}
        self._flushed_at = time.monotonic()

    # ------------------------------------------------------------------ states
    def on_settled(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(tile_id)`` when a tile settles in this run: fitted, empty or failed for good."""
        self._settled.append(listener)

    def settle(self, tile_id: str) -> None:
        for listener in self._settled:
            listener(tile_id)

    def state(self, tile_id: str) -> TileState | None:
        return self.states.get(tile_id)

    def set_state(self, tile_id: str, state: TileState) -> None:
        previous = self.states.get(tile_id)
        if previous is not None:
            self.counts[previous] -= 1
        self.states[tile_id] = state
        self.counts[state] += 1

    def done(self) -> int:
        return sum(self.counts[s] for s in DONE_STATES)

    def contributes(self, tile_id: str) -> bool:
        """Whether the tile has a committed fitted store a mosaic can read."""
        state = self.states.get(tile_id)
        if state in DONE_STATES:
            return True
        record = self.get(tile_id)
        return state == TileState.FAILED and record is not None and record.failed_stage == Stage.MOSAIC

    # ------------------------------------------------------------------ ledger records
    def get(self, tile_id: str) -> TileRecord | None:
        """The tile's latest record (written or waiting to be), or None."""
        pending = self._pending.get(tile_id)
        return pending if pending is not None else self.ledger.get(tile_id)

    def record(self, tile_id: str) -> TileRecord:
        record = self.get(tile_id)
        if record is None:
            tile = self.tiles[tile_id]
            record = TileRecord(tile_id=tile_id, epsg=tile.epsg, area_km2=tile.area_km2)
        return record

    def put(self, record: TileRecord) -> None:
        """Change a tile's record: written with others within :data:`LEDGER_FLUSH_S` (see :meth:`tick`)."""
        self._pending[record.tile_id] = record
        self.set_state(record.tile_id, record.state)
        if len(self._pending) >= LEDGER_BATCH:
            self.flush()

    def tick(self) -> None:
        """Write the waiting records if the oldest has waited :data:`LEDGER_FLUSH_S`."""
        if self._pending and time.monotonic() - self._flushed_at >= LEDGER_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write every waiting record, in one ledger write."""
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        writing = time.perf_counter()
        self.ledger.put_many(list(self._pending.values()))
        self.records_written += len(self._pending)
        self._pending.clear()
        self.ledger_seconds += time.perf_counter() - writing
        self.ledger_writes += 1

    def limit(self, stage: Stage) -> int:
        return int(getattr(self.retries, stage.value))

    def may_retry(self, record: TileRecord, stage: Stage) -> bool:
        used = record.attempts_at(stage) - self.base_attempts.get((record.tile_id, stage), 0)
        return used < self.limit(stage)

    def attempt(
        self,
        stage: Stage,
        record: TileRecord,
        started: float,
        ended: float,
        worker: WorkerInfo | None,
        outcome: Outcome,
        error: str | None = None,
        permanent: bool = False,
    ) -> Attempt:
        return Attempt(
            stage=stage,
            number=record.attempts_at(stage) + 1,
            run_id=self.run_id,
            started=started,
            ended=ended,
            outcome=outcome,
            error=error,
            permanent=permanent,
            worker=worker.name if worker else None,
            node_id=worker.node_id if worker else None,
            pid=worker.pid if worker else None,
            gpu_ids=worker.gpu_ids if worker else (),
            cuda_visible_devices=worker.cuda_visible_devices if worker else None,
            gpu_share=worker.gpu_share if worker and stage == Stage.FIT else 0.0,
        )

    # ------------------------------------------------------------------ what a stage's result does
    def succeeded(self, outcome: StageOutcome) -> Attempt:
        """Record a stage's success on a tile (ingested or fitted); a fit settles the tile."""
        record = self.record(outcome.tile_id)
        attempt = self.attempt(outcome.stage, record, outcome.started, outcome.ended, outcome.worker, "ok")
        attempt = attempt.model_copy(update={"device": outcome.device})
        summary = dict(outcome.summary)
        if outcome.stage == Stage.FIT:
            self.put(record.record(attempt, fit=summary))
        else:
            self.put(record.record(attempt, ingest=summary))
        if outcome.stage == Stage.FIT:
            self.fits_done += 1
            self.gpu_seconds_fits += attempt.seconds * attempt.gpu_share
            self.settle(outcome.tile_id)
        return attempt

    def empty(self, outcome: StageOutcome) -> None:
        """Record a tile whose search found no Sentinel-2 data over it: settled for good, not failed."""
        record = self.record(outcome.tile_id)
        attempt = self.attempt(outcome.stage, record, outcome.started, outcome.ended, outcome.worker, "ok")
        reason = outcome.error or "no Sentinel-2 data over the tile"
        self.put(record.record(attempt, state=TileState.EMPTY, ingest={"empty": reason}))
        self.settle(outcome.tile_id)

    def failed_attempt(
        self,
        tile_id: str,
        stage: Stage,
        started: float,
        ended: float,
        worker: WorkerInfo | None,
        error: str,
        permanent: bool,
        outcome: Outcome,
        *,
        budget: Stage | None = None,
    ) -> Verdict:
        """Record a failed attempt; say whether to retry the tile or it failed for good (then it settles).

        ``budget``: the stage whose retry limit applies (default ``stage``).
        """
        record = self.record(tile_id)
        attempt = self.attempt(stage, record, started, ended, worker, outcome, error, permanent)
        record = record.record(attempt)
        if stage == Stage.FIT:
            self.gpu_seconds_fits += attempt.seconds * attempt.gpu_share
        if outcome == "interrupted":
            self.put(record)
            return "interrupted"
        if not permanent and self.may_retry(record, budget or stage):
            self.put(record)
            return "retry"
        tries = record.attempts_at(budget or stage)
        reason = error if permanent else f"{error} (gave up after {tries} attempts)"
        self.put(record.failed(stage, reason, permanent=permanent))
        self.settle(tile_id)
        return "failed"
