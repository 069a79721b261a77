"""Mosaic scheduling, one mosaic per UTM zone, streamed while tiles still fit.

When the run starts, each zone's template is written from the plan (its cells, the campaign's fixed
time axis and its bands; no fitted tile is read). A cell's region is written as soon as the (up to four)
tiles that reach into it, itself and its W, S and SW neighbours (a tile reaches ``overlap`` px beyond its
cell to the east and north, tiler.grid), are settled: fitted, empty, or failed for good. Each cell keeps
a countdown of its unsettled reaching tiles, so a tile settling costs O(1) (four decrements), and a zone
is finalized when its last region is written: there is no step over all tiles of a zone anywhere.

On a rerun, the template is kept when it matches (same campaign, so the same cells, dates and bands) and
a cell is written again only when a tile reaching it was fitted since its region was written; a cell
whose own tile is recorded as mosaicked and that no new fit reaches is left as it is.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from campaign.book import Emit, TileBook
from campaign.config import CampaignConfig, mosaic_sigma
from campaign.inflight import Inflight, Work
from campaign.layout import OutputLayout
from campaign.ledger import Stage, TileState, ZoneRecord
from campaign.report import MOSAIC_COMPLETE
from campaign.workers import MosaicGridSpec, StageOutcome
from tiler.grid import TileRef

#: Zone states: template | init | regions | finalizing | finalized | outputs | done | failed | skipped
OPEN_STATES = frozenset({"template", "init", "regions", "finalizing", "finalized", "outputs"})


@dataclass
class _Zone:
    """The mosaic of one UTM zone: template → regions (as cells become ready) → finalize → outputs."""

    epsg: int
    url: str
    keys: tuple[str, ...]
    state: str = "template"
    attempts: Counter[str] = field(default_factory=Counter)
    #: Cells whose reaching tiles are all settled, waiting for the template or a free mosaic slot.
    ready: deque[str] = field(default_factory=deque)
    #: Cells not yet written (or confirmed written) in this run.
    unwritten: int = 0
    running: int = 0
    #: The template was written new: no region of an earlier run is there.
    fresh: bool = False
    #: Tiles of the zone with a fitted store, and tiles not empty (fitted or failed).
    fitted: int = 0
    not_empty: int = 0
    failed_keys: set[str] = field(default_factory=set)
    reason: str = ""


def reaching(tile: TileRef) -> list[TileRef]:
    """Tiles whose pixels reach into the cell of ``tile``: itself and its W, S and SW neighbours."""
    return [
        TileRef(tile.epsg, tile.col - dc, tile.row - dr, tile.size, tile.overlap, tile.resolution)
        for dc in (0, 1)
        for dr in (0, 1)
    ]


def reached_by(tile: TileRef) -> list[TileRef]:
    """Cells a tile's pixels reach into: its own and its E, N and NE neighbours'."""
    return [
        TileRef(tile.epsg, tile.col + dc, tile.row + dr, tile.size, tile.overlap, tile.resolution)
        for dc in (0, 1)
        for dr in (0, 1)
    ]


class MosaicScheduler:
    """Streams each zone's regions as their tiles settle; see the module docstring."""

    def __init__(
        self,
        config: CampaignConfig,
        book: TileBook,
        layout: OutputLayout,
        emit: Emit,
        *,
        times: Callable[[], tuple[Any, ...]],
        bands: Callable[[], tuple[str, ...]],
    ) -> None:
        self.config = config
        self.book = book
        self.layout = layout
        self.emit = emit
        self.zones: dict[int, _Zone] = {}
        self._times = times
        self._bands = bands
        #: Per cell: reaching tiles of the plan not settled yet.
        self._unsettled: dict[str, int] = {}
        #: Cells a tile fitted since their region was written reaches: written again (overwrite).
        self._dirty: set[str] = set()
        self._tasks: dict[str, Any] = {}
        self.slots = 1
        #: Decided from the config before any template: σ in the mosaics, and the calendar's cadence.
        self.sigma = mosaic_sigma(config)
        self.cadence = config.outputs.cadence
        #: When the last region of the run was written (the mosaic's tail after the last fit).
        self.last_region_at: float | None = None
        book.on_settled(self._settled)

    # ------------------------------------------------------------------ plan
    def plan(
        self, todo: Iterable[str], recorded: Mapping[int, ZoneRecord], complete: Callable[[str], bool]
    ) -> None:
        """Set the zones up after resume: ``todo`` are the tiles this run still ingests or fits."""
        tiles = self.book.tiles
        pending = set(todo)
        by_zone: dict[int, list[str]] = {}
        for tile_id, tile in tiles.items():
            by_zone.setdefault(tile.epsg, []).append(tile_id)
        for epsg, keys in sorted(by_zone.items()):
            self.zones[epsg] = _Zone(epsg=epsg, url=self.layout.mosaic(epsg), keys=tuple(sorted(keys)))
        states = self.book.states
        for tile_id in tiles:
            if tile_id in pending:
                continue
            if states[tile_id] == TileState.FITTED:  # fitted, its cells not (all) rewritten since
                self._dirty.update(t.tile_id for t in reached_by(tiles[tile_id]))
            self._count(tile_id)
        for tile_id, tile in tiles.items():
            self._unsettled[tile_id] = sum(
                1 for t in reaching(tile) if t.tile_id in tiles and t.tile_id in pending
            )
        for zone in self.zones.values():
            zone.unwritten = len(zone.keys)
            if zone.not_empty == 0 and not any(k in pending for k in zone.keys):
                zone.state, zone.reason = "skipped", "every tile of the zone is empty"
            elif (
                not pending.intersection(zone.keys)
                and not self._dirty.intersection(zone.keys)
                and zone.epsg in recorded
                and complete(zone.url)
                and self._same_products(zone.url)
            ):
                zone.state = "done"
            else:
                zone.ready.extend(k for k in zone.keys if self._unsettled[k] == 0)

    def _same_products(self, url: str) -> bool:
        """The finished mosaic has the σ and calendar this run asks for (else its template is rewritten)."""
        from tiler.errors import MosaicError
        from tiler.mosaic import mosaic_info

        try:
            info = mosaic_info(url, storage_options=self.config.storage_options or None)
        except MosaicError:
            return False
        cadence = info.calendar.cadence if info.calendar is not None else None
        return info.sigma == self.sigma and cadence == self.cadence

    def _count(self, tile_id: str) -> None:
        zone = self.zones[self.book.tiles[tile_id].epsg]
        state = self.book.states[tile_id]
        if state != TileState.EMPTY:
            zone.not_empty += 1
        if self.book.contributes(tile_id):
            zone.fitted += 1

    def _settled(self, tile_id: str) -> None:
        """A tile settled in this run: four countdowns; a cell reaching zero is ready to write."""
        tiles = self.book.tiles
        self._count(tile_id)
        fitted = self.book.contributes(tile_id)
        for cell in reached_by(tiles[tile_id]):
            key = cell.tile_id
            if key not in tiles:
                continue
            if fitted:
                self._dirty.add(key)
            self._unsettled[key] -= 1
            if self._unsettled[key] == 0:
                self.zones[cell.epsg].ready.append(key)

    def open(self) -> bool:
        return any(z.state in OPEN_STATES for z in self.zones.values())

    def start(self, tasks: Mapping[str, Any], slots: int) -> None:
        """Ray is up: the remote mosaic functions, and how many mosaic tasks may run at once."""
        self._tasks = dict(tasks)
        self.slots = slots

    # ------------------------------------------------------------------ scheduling
    def dispatch(self, inflight: Inflight) -> None:
        grid = MosaicGridSpec(self.config.grid.size, self.config.grid.overlap, self.config.grid.resolution)
        opts = self.config.storage_options or None
        running = inflight.mosaics()
        for zone in self.zones.values():
            label = f"EPSG:{zone.epsg}"
            if zone.state == "template" and running < self.slots:
                ref = self._tasks["mosaic_template"].remote(
                    zone.url,
                    label,
                    zone.keys,
                    self._times(),
                    self._bands(),
                    grid,
                    opts,
                    self.sigma,
                    self.cadence,
                )
                inflight.add(ref, Work("mosaic_init", label, time.time(), zone=zone.epsg))
                zone.state = "init"
                running += 1
                self.emit("mosaic_started", f"mosaic of {label}: writing its template from the plan")
            while zone.state == "regions" and zone.ready and running < self.slots:
                key = zone.ready.popleft()
                overwrite = key in self._dirty and not zone.fresh
                if not (zone.fresh or overwrite) and self.book.state(key) == TileState.MOSAICKED:
                    zone.unwritten -= 1  # written by an earlier run, and nothing new reaches it
                    continue
                ref = self._tasks["mosaic_region"].remote(zone.url, key, self._reaching(key), overwrite, opts)
                inflight.add(
                    ref, Work("mosaic_region", key, time.time(), zone=zone.epsg, overwrite=overwrite)
                )
                self._dirty.discard(key)
                zone.running += 1
                running += 1
            if zone.state == "regions" and zone.unwritten == 0 and zone.running == 0:
                if zone.failed_keys:
                    zone.state = "failed"
                    zone.reason = f"regions not written: {', '.join(sorted(zone.failed_keys)[:5])}"
                elif zone.fitted == 0:
                    zone.state = "failed" if zone.not_empty else "skipped"
                    zone.reason = (
                        "no tile of the zone was fitted" if zone.not_empty else "every tile is empty"
                    )
                else:
                    ref = self._tasks["mosaic_finalize"].remote(zone.url, label, opts)
                    inflight.add(ref, Work("mosaic_finalize", label, time.time(), zone=zone.epsg))
                    zone.state = "finalizing"
                    running += 1
            if zone.state == "finalized":
                kinds = tuple(k for k in ("quicklooks", "cogs", "stac") if getattr(self.config.outputs, k))
                if kinds:
                    out_dir = self.layout.outputs(zone.epsg)
                    ref = self._tasks["mosaic_outputs"].remote(zone.url, label, out_dir, kinds, opts)
                    inflight.add(ref, Work("mosaic_outputs", label, time.time(), zone=zone.epsg))
                    zone.state = "outputs"
                    running += 1
                else:
                    self._zone_done(
                        zone, {"calendar": self.layout.calendar(zone.epsg)} if self.cadence else {}
                    )

    def _reaching(self, key: str) -> dict[str, str]:
        """Fitted stores of the tiles reaching into the cell of ``key``."""
        tiles = self.book.tiles
        near = sorted(t.tile_id for t in reaching(tiles[key]))
        return {t: self.layout.fitted(t) for t in near if t in tiles and self.book.contributes(t)}

    # ------------------------------------------------------------------ results
    def outcome(self, work: Work, outcome: StageOutcome) -> None:
        zone = self.zones[work.zone or 0]
        if not outcome.ok:
            self.failed(work, outcome.error or "unknown error", outcome.permanent, outcome)
            return
        if work.kind == "mosaic_init":
            zone.fresh = bool(outcome.summary.get("fresh"))
            zone.state = "regions"
        elif work.kind == "mosaic_region":
            zone.running -= 1
            zone.unwritten -= 1
            self.last_region_at = time.time()
            key = outcome.tile_id
            if self.book.contributes(key):
                record = self.book.record(key)
                attempt = self.book.attempt(
                    Stage.MOSAIC, record, outcome.started, outcome.ended, outcome.worker, "ok"
                )
                self.book.put(record.record(attempt))
                self.emit("mosaicked", f"mosaicked {key}", key, outcome.worker)
        elif work.kind == "mosaic_finalize":
            zone.state = "finalized"
            self.emit("mosaic_done", f"mosaic of EPSG:{zone.epsg} complete: {zone.url}")
        else:
            self._zone_done(zone, {str(k): str(v) for k, v in outcome.summary.items()})

    def _zone_done(self, zone: _Zone, outputs: Mapping[str, str]) -> None:
        self.book.sync()  # the tiles' records before the zone's: a zone record means its tiles are in
        self.book.ledger.put_zone(
            ZoneRecord(
                epsg=zone.epsg,
                mosaic_url=zone.url,
                run_id=self.book.run_id,
                finished=time.time(),
                outputs=dict(outputs),
            )
        )
        zone.state = "done"
        if outputs:
            self.emit("outputs_done", f"outputs of EPSG:{zone.epsg}: {', '.join(outputs.values())}")

    def failed(self, work: Work, error: str, permanent: bool, outcome: StageOutcome | None = None) -> None:
        zone = self.zones[work.zone or 0]
        step = work.kind.removeprefix("mosaic_")
        key = work.tile_id or f"EPSG:{zone.epsg}"
        zone.attempts[key] += 1
        retry = not permanent and zone.attempts[key] < self.book.limit(Stage.MOSAIC)
        if work.kind == "mosaic_region":
            zone.running -= 1
            if self.book.contributes(key):
                record = self.book.record(key)
                worker = outcome.worker if outcome else None
                started, ended = (
                    (outcome.started, outcome.ended) if outcome else (work.submitted, time.time())
                )
                attempt = self.book.attempt(
                    Stage.MOSAIC, record, started, ended, worker, "error", error, permanent
                )
                record = record.record(attempt)
                self.book.put(record if retry else record.failed(Stage.MOSAIC, error, permanent=permanent))
            if retry:
                if work.overwrite:
                    self._dirty.add(key)
                zone.ready.appendleft(key)
            else:
                zone.unwritten -= 1
                zone.failed_keys.add(key)
        elif retry:
            zone.state = {"mosaic_init": "template", "mosaic_finalize": "regions"}.get(work.kind, "finalized")
        else:
            zone.state, zone.reason = "failed", f"{step} failed: {error}"
        self.emit("retry" if retry else "failed", f"mosaic {step} of {key} failed ({error})", key)

    def states(self) -> dict[str, str]:
        """Mosaic URL -> "complete", or why it is not (skipped zones: no mosaic)."""
        states = {}
        for zone in self.zones.values():
            if zone.state == "done":
                states[zone.url] = MOSAIC_COMPLETE
            elif zone.state != "skipped":
                states[zone.url] = zone.reason or f"not finished ({zone.state})"
        return states
