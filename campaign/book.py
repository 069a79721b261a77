"""The ledger side of a run: each tile's state, its attempts against its retry budget, progress events.

:class:`TileBook` is the one place a run changes a tile's state. Every change is O(1): one record queued
for the ledger, one counter update, and a notice to whoever waits for tiles to settle (the mosaic
scheduler), so no event of a campaign costs more with more tiles.

Records are written in batches by one background thread, so the driver's loop does not wait on a
write (an fsync on a local disk, a PUT on an object store: 20–50 ms each on a loaded machine, which was
most of the loop's time per tile in ``bench/scale.py``). One write is in flight at most, so batches
reach the store in order; :meth:`TileBook.sync` waits for everything queued, and a write's error comes
back to the driver at the next flush or sync.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

from campaign.config import RetriesConfig
from campaign.ledger import Attempt, Ledger, Outcome, Stage, TileRecord, TileState
from campaign.report import DONE_STATES
from campaign.workers import StageOutcome, WorkerInfo
from tiler.grid import TileRef

#: Tile records written to the ledger together, at most: one write (one fsync, or one PUT) for many.
LEDGER_BATCH = 256
#: Seconds a changed record may wait in memory before its write starts. A crashed driver loses the
#: records that were waiting and the one write in flight: those tiles redo their last stage on the
#: rerun, and their outputs are whole.
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
        #: Time the writer thread spent writing ledger records, the writes (each of one or more records)
        #: and the records; and the time the driver waited for a write (the part of it in its loop).
        self.ledger_seconds = 0.0
        self.ledger_wait_seconds = 0.0
        self.ledger_writes = 0
        self.records_written = 0
        self._settled: list[Callable[[str], None]] = []
        #: Records changed since the last write, by tile (a tile changed twice is written once).
        self._pending: dict[str, TileRecord] = {}
        self._flushed_at = time.monotonic()
        #: The write in flight (its records stay readable here until it is done), and its thread.
        self._writing: dict[str, TileRecord] = {}
        self._write: Future[float] | None = None
        self._writer: ThreadPoolExecutor | None = None

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
        """The tile's latest record (written, being written or waiting to be), or None."""
        for waiting in (self._pending, self._writing):
            if tile_id in waiting:
                return waiting[tile_id]
        return self.ledger.get(tile_id)

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
        """Start writing the waiting records if the oldest has waited :data:`LEDGER_FLUSH_S`; take note
        of a finished write (and raise its error)."""
        if self._write is not None and self._write.done():
            self._wait_write()
        if self._pending and time.monotonic() - self._flushed_at >= LEDGER_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Start writing every waiting record, in one ledger write, after the write in flight ends."""
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        self._wait_write()
        self._writing, self._pending = self._pending, {}
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._write = self._writer.submit(self._put, list(self._writing.values()))

    def sync(self) -> None:
        """Write every waiting record and wait until the store has them (before a zone or run record,
        the report, or the end of the run); raises the error of a failed write."""
        self.flush()
        self._wait_write()

    def close(self) -> None:
        """:meth:`sync`, then stop the writer thread."""
        try:
            self.sync()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def _put(self, records: Sequence[TileRecord]) -> float:
        started = time.perf_counter()
        self.ledger.put_many(records)
        return time.perf_counter() - started

    def _wait_write(self) -> None:
        if self._write is None:
            return
        waiting = time.perf_counter()
        try:
            seconds = self._write.result()  # a LedgerError of the writer is raised here, in the driver
        except BaseException:
            # Not written: the records wait again (a newer record of a tile wins), for a later flush.
            self._pending = {**self._writing, **self._pending}
            self._writing = {}
            raise
        finally:
            self.ledger_wait_seconds += time.perf_counter() - waiting
            self._write = None
        self.ledger_seconds += seconds
        self.ledger_writes += 1
        self.records_written += len(self._writing)
        self._writing = {}

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
