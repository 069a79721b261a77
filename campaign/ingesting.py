"""Ingest scheduling: tiles wait in a queue and run as Ray tasks, a bounded number ahead of the fits.

Ingest runs ahead of the fit pool by :data:`INGEST_AHEAD_PER_ACTOR` tiles per fit actor (and never more
than ``resources.ingest_concurrency`` at once), so no GPU waits for input while scratch space holds a
bounded number of input tiles. A tile whose search finds no Sentinel-2 data is recorded as empty.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from campaign.book import Emit, TileBook
from campaign.config import CampaignConfig, ingest_config
from campaign.inflight import Inflight, Work
from campaign.layout import OutputLayout
from campaign.ledger import Outcome, Stage
from campaign.workers import StageOutcome

#: Tiles ingested ahead of the fits, per fit actor: enough that no GPU waits, few enough that scratch
#: space holds a bounded number of input tiles (~0.5 GB each at 384×768×30 dates).
INGEST_AHEAD_PER_ACTOR = 2


class IngestScheduler:
    """The ingest queue of a run and its Ray tasks."""

    def __init__(self, config: CampaignConfig, book: TileBook, layout: OutputLayout, emit: Emit) -> None:
        self.config = config
        self.book = book
        self.layout = layout
        self.emit = emit
        self.queue: deque[str] = deque()
        self._task: Any = None
        self._ingest_config: Any = None

    def start(self, task: Any) -> None:
        """Ray is up: ``task`` is the remote ingest function."""
        self._task = task
        if self.queue:
            self._ingest_config = ingest_config(self.config)

    def dispatch(self, inflight: Inflight, waiting_fits: int, actors: int) -> None:
        resources = self.config.resources
        running = inflight.count("ingest")
        ahead = max(resources.ingest_concurrency, INGEST_AHEAD_PER_ACTOR * actors)
        while self.queue and running < resources.ingest_concurrency and running + waiting_fits < ahead:
            tile_id = self.queue.popleft()
            if self._ingest_config is None:
                self._ingest_config = ingest_config(self.config)
            ref = self._task.remote(
                self.book.tiles[tile_id],
                self.layout.ingested(tile_id),
                self._ingest_config,
                self.config.storage_options or None,
            )
            inflight.add(ref, Work("ingest", tile_id, time.time()))
            running += 1
            self.emit("ingest_started", f"ingesting {tile_id}", tile_id)

    def outcome(self, outcome: StageOutcome) -> bool:
        """A finished ingest task; True when the tile is ready to fit."""
        tile_id = outcome.tile_id
        if outcome.empty:
            self.book.empty(outcome)
            self.emit("empty", f"{tile_id}: no Sentinel-2 data over the tile (recorded as empty)", tile_id)
            return False
        if not outcome.ok:
            self.failed(
                tile_id,
                outcome.started,
                outcome.ended,
                outcome,
                outcome.error or "unknown error",
                outcome.permanent,
                "error",
            )
            return False
        attempt = self.book.succeeded(outcome)
        self.emit("ingested", f"ingested {tile_id} in {attempt.seconds:.1f} s", tile_id, outcome.worker)
        return True

    def failed(
        self,
        tile_id: str,
        started: float,
        ended: float,
        outcome: StageOutcome | None,
        error: str,
        permanent: bool,
        kind: Outcome,
    ) -> None:
        worker = outcome.worker if outcome is not None else None
        verdict = self.book.failed_attempt(
            tile_id, Stage.INGEST, started, ended, worker, error, permanent, kind
        )
        if verdict == "retry":
            self.queue.appendleft(tile_id)  # front of the queue: the next free slot takes it
            what = "worker_died" if kind == "worker_died" else "retry"
            self.emit(what, f"ingest of {tile_id} failed ({error}); retrying", tile_id, worker)
        elif verdict == "failed":
            self.emit("failed", f"{tile_id} failed at ingest: {error}", tile_id, worker)
