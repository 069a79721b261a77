"""The campaign driver: plan → ingest (Ray tasks) → fit (GPU-pinned Ray actors) → mosaic (Ray tasks).

:func:`run_campaign` reads like the pipeline; :class:`CampaignDriver` runs one loop that waits
(``ray.wait``) on a mixed set of futures and hands each result to the module that schedules its stage:

- :mod:`campaign.ingesting`: the ingest queue, run ahead of the fits by a bounded number of tiles;
- :mod:`campaign.pool`: the fit actor pool (sizing, actor deaths and replacements, warm starts);
- :mod:`campaign.mosaics`: each zone's mosaic, streamed cell by cell as the tiles reaching a cell settle;
- :mod:`campaign.book`: tile states, attempts and retry budgets, written through to the ledger;
- :mod:`campaign.layout`: the plan, the output layout, the claim on the output, the Ray connection.

So a tile is fitted as soon as it is ingested, ingest keeps running while GPUs fit, and a cell is
mosaicked as soon as its tiles are fitted. Only URLs, tile references and small frozen dataclasses cross
into Ray.

Fault handling:
- a stage's error on bad input fails the tile at once (permanent), any other error is retried up to
  ``retries.<stage>`` attempts, then the tile is failed with its reason and the campaign goes on;
- a tile whose search finds no Sentinel-2 data (sea, outside every footprint) is recorded as empty:
  never retried, never failed;
- a fit that finds its input store corrupt sends the tile back to ingest (within the fit's retries);
- a fit actor that dies mid-fit loses its call: the attempt is recorded as ``worker_died`` and the tile
  requeued (:mod:`campaign.pool`);
- Ctrl-C cancels outstanding work, writes the ledger and the report and raises
  :class:`CampaignInterrupted`; a rerun resumes from the ledger.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from campaign.book import CampaignProgress, ProgressCallback, TileBook
from campaign.config import CampaignConfig, ingest_config
from campaign.errors import CampaignInterrupted
from campaign.inflight import Inflight, Work
from campaign.ingesting import INGEST_AHEAD_PER_ACTOR, IngestScheduler
from campaign.layout import (
    REPORT_FILE,
    OutputLayout,
    claim_output,
    connect_ray,
    new_run_id,
    plan_campaign,
    write_report,
)
from campaign.ledger import Ledger, RunRecord, Stage, TileState
from campaign.mosaics import MosaicScheduler
from campaign.pool import FitActorPool, FitPool, fit_pool
from campaign.report import DONE_STATES, MOSAIC_COMPLETE, CampaignReport, build_report
from campaign.workers import StageOutcome, StageWorkers, WorkerInfo
from tiler.grid import TileRef
from tiler.store import tile_status

__all__ = [
    "INGEST_AHEAD_PER_ACTOR",
    "REPORT_FILE",
    "CampaignDriver",
    "CampaignProgress",
    "FitPool",
    "OutputLayout",
    "ProgressCallback",
    "campaign_status",
    "campaign_times",
    "claim_output",
    "connect_ray",
    "fit_pool",
    "new_run_id",
    "plan_campaign",
    "run_campaign",
    "write_report",
]

log = logging.getLogger(__name__)

#: How long one ``ray.wait`` blocks before the loop looks again (Ctrl-C, ETA refresh), in seconds.
POLL_S = 0.5
#: Pause of the loop when nothing is in flight (only actors restarting, to be asked again later).
IDLE_S = 0.05
#: Store checks a resume runs at once (small reads; on an object store, requests in flight).
RESUME_CHECKS = 32


def campaign_times(config: CampaignConfig) -> tuple[Any, ...]:
    """The mosaic's time axis, fixed up front from the campaign's period (tiler.mosaic.campaign_times)."""
    from tiler.mosaic import campaign_times as times

    return tuple(times(config.start, config.end))


def campaign_bands(config: CampaignConfig) -> tuple[str, ...]:
    """The bands every fitted tile of the campaign holds: the ingest stage's bands."""
    return tuple(ingest_config(config).bands)


class CampaignDriver:
    """One run of a campaign: the loop and the state it shares between the stage schedulers."""

    def __init__(
        self,
        config: CampaignConfig,
        tiles: Sequence[TileRef],
        ledger: Ledger,
        *,
        run_id: str,
        retry_failed: bool = False,
        progress: ProgressCallback | None = None,
        workers: StageWorkers | None = None,
    ) -> None:
        self.config = config
        self.tiles = {t.tile_id: t for t in tiles}
        self.ledger = ledger
        self.layout = OutputLayout(config.output)
        self.run_id = run_id
        self.retry_failed = retry_failed
        self.workers = workers or StageWorkers()
        self._progress = progress
        self.book = TileBook(self.tiles, ledger, run_id=run_id, retries=config.retries)
        self.ingest = IngestScheduler(config, self.book, self.layout, self._emit)
        self.fits = FitActorPool(config, self.book, self.layout, self._emit, reingest=self._reingest)
        self.mosaics = MosaicScheduler(
            config,
            self.book,
            self.layout,
            self._emit,
            times=lambda: campaign_times(config),
            bands=lambda: campaign_bands(config),
        )
        self.inflight = Inflight()
        self._skipped = 0
        self._gpu_seconds_held_before = 0.0
        self._started = time.time()
        self._wait_seconds = 0.0
        self._loop_started: float | None = None
        #: Seconds spent in Ray calls that submit work (``.remote``) and fetch results (``ray.get``).
        self.ray_seconds = 0.0
        #: When the last fit of the run ended.
        self.last_fit_at: float | None = None
        #: CPUs of the Ray cluster when the run started.
        self._cpus = 1.0
        #: Whether a store is complete, as the resume found it.
        self._complete: dict[str, bool] = {}

    def _queued(self) -> bool:
        return bool(self.ingest.queue or self.fits.queue)

    # ----------------------------------------------------------------- the pipeline
    def run(self, connect: Callable[[], bool]) -> CampaignReport:
        """Run to the end. ``connect`` joins or starts Ray (returns whether to shut it down after);
        it is called only if there is work left, so a finished campaign reports without Ray."""
        self._started = time.time()
        self._resume()
        if not (self._queued() or self.mosaics.open()):
            return self._finish(interrupted=False, held=0.0)
        interrupted = False
        owns_ray = connect()
        try:
            try:
                self._start_tasks()
                if self._queued():
                    self.fits.start(self.workers.fit_actor)
                self._loop_started = time.perf_counter()
                while self.inflight or self._queued() or self.mosaics.open():
                    self._dispatch()
                    self._collect()
                    self.book.tick()
            except (KeyboardInterrupt, SystemExit):
                # Ctrl-C, or SIGTERM (`ray job stop`, a pod's eviction), which Ray's driver turns into
                # SystemExit: stop cleanly, keep the ledger, report.
                interrupted = True
                self._cancel_outstanding()
            finally:
                held = self.fits.stop() if self.fits.slots else 0.0
            report = self._finish(interrupted, held)
        finally:
            if owns_ray:
                import ray

                ray.shutdown()
        if interrupted:
            raise CampaignInterrupted(
                f"campaign {self.config.name!r} stopped: {report.tiles_done}/{report.tiles_planned} tiles "
                f"done, ledger saved in {self.layout.ledger}; rerun the same command to resume",
                report=report,
            )
        return report

    # ----------------------------------------------------------------- resume
    def _resume(self) -> None:
        """Queue every tile the ledger does not show as settled (done, empty, or failed for good).

        The ledger's states come from its index without parsing records; a record is parsed only for a
        failed tile (its retry budget) or with ``--retry-failed``.
        """
        book, ledger = self.book, self.ledger
        self._check_stores()
        for tile_id in self.tiles:
            known = ledger.state(tile_id)
            if known is not None and self.retry_failed:
                record = ledger.get(tile_id)
                assert record is not None
                for s in Stage:
                    book.base_attempts[(tile_id, s)] = record.attempts_at(s)
            stage = self._resume_stage(tile_id, known)
            state = known if known is not None else TileState.PLANNED
            if stage == Stage.INGEST:
                state = TileState.PLANNED
                self.ingest.queue.append(tile_id)
            elif stage == Stage.FIT:
                state = TileState.INGESTED
                self.fits.queue.append(tile_id)
            elif stage == Stage.MOSAIC:
                state = TileState.FITTED
            elif state in DONE_STATES:
                self._skipped += 1
            if known is not None and known != state:
                # The ledger said more than the stores hold (a store was deleted by hand) or the tile is
                # retried: correct the record now, so no report counts it as done meanwhile.
                record = ledger.get(tile_id)
                assert record is not None
                ledger.put(
                    record.model_copy(
                        update={"state": state, "failed_stage": None, "error": None, "permanent": False}
                    )
                )
            book.set_state(tile_id, state)
        book.gpu_seconds_fits += sum(
            max(0.0, fit[1] - fit[0]) * fit[3]
            for tile_id, _, _, fits in ledger.digest_rows()
            if tile_id in self.tiles
            for fit in fits
        )
        self._gpu_seconds_held_before = sum(r.gpu_seconds_held for r in ledger.runs())
        opts = self.config.storage_options
        self.mosaics.plan(
            [*self.ingest.queue, *self.fits.queue],
            ledger.zones(),
            lambda url: tile_status(url, opts) == "complete",
        )
        self._emit(
            "planned",
            f"{len(self.tiles)} tiles planned, {self._skipped} already done, "
            f"{len(self.ingest.queue)} to ingest, {len(self.fits.queue)} to fit",
        )

    def _check_stores(self) -> None:
        """Ask, concurrently, whether the stores a resume depends on are complete: the fitted store of
        every tile the ledger shows done, the input store of every tile it shows ingested (one small
        read each; on an object store, one request each, so they go out together)."""
        urls = []
        for tile_id in self.ledger.tile_ids():
            state = self.ledger.state(tile_id)
            if tile_id not in self.tiles:
                continue
            if state in DONE_STATES:
                urls.append(self.layout.fitted(tile_id))
            elif state == TileState.INGESTED:
                urls.append(self.layout.ingested(tile_id))
        if not urls:
            return
        opts = self.config.storage_options
        with ThreadPoolExecutor(max_workers=RESUME_CHECKS) as pool:
            done = pool.map(lambda url: tile_status(url, opts) == "complete", urls)
            self._complete = dict(zip(urls, done, strict=True))

    def _is_complete(self, url: str) -> bool:
        known = self._complete.get(url)
        return known if known is not None else tile_status(url, self.config.storage_options) == "complete"

    def _resume_stage(self, tile_id: str, state: TileState | None) -> Stage | None:
        """The stage a tile resumes at, or None when it needs nothing (done, empty, failed for good).

        Done means the ledger says so AND the output is committed: the ledger is written after the
        store, but a store can be deleted by hand; then the tile is redone rather than counted.
        """
        if state is None:
            return Stage.INGEST
        if state == TileState.EMPTY:
            return None
        fitted = lambda: self._is_complete(self.layout.fitted(tile_id))  # noqa: E731
        ingested = lambda: self._is_complete(self.layout.ingested(tile_id))  # noqa: E731
        if state == TileState.FAILED:
            record = self.ledger.get(tile_id)
            assert record is not None
            stage = record.failed_stage or Stage.INGEST
            if not self.retry_failed and (record.permanent or not self.book.may_retry(record, stage)):
                return None
            if stage == Stage.MOSAIC and fitted():
                return Stage.MOSAIC
            return Stage.FIT if stage != Stage.INGEST and ingested() else Stage.INGEST
        if state in DONE_STATES and fitted():
            return None
        if state != TileState.PLANNED and ingested():
            return Stage.FIT
        return Stage.INGEST

    def _reingest(self, tile_id: str) -> None:
        """A fit found the tile's input store corrupt: ingest it again (front of the queue)."""
        self.book.set_state(tile_id, TileState.PLANNED)
        self.ingest.queue.appendleft(tile_id)

    # ----------------------------------------------------------------- Ray tasks
    def _start_tasks(self) -> None:
        import ray

        resources = self.config.resources
        workers = self.workers
        self.ingest.start(
            ray.remote(workers.ingest).options(
                num_cpus=resources.ingest_cpus,
                # Ray resubmits a task whose worker died (node lost); the stage's own errors come back
                # as values and the driver retries those, counting attempts in the ledger.
                max_retries=self.config.retries.ingest - 1,
                retry_exceptions=False,
            )
        )
        mosaic_tasks = {
            name: ray.remote(fn).options(
                num_cpus=resources.mosaic_cpus, max_retries=self.config.retries.mosaic - 1
            )
            for name, fn in (
                ("mosaic_template", workers.mosaic_template),
                ("mosaic_region", workers.mosaic_region),
                ("mosaic_finalize", workers.mosaic_finalize),
                ("mosaic_outputs", workers.mosaic_outputs),
            )
        }
        self._cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.mosaics.start(mosaic_tasks, self._mosaic_slots())

    def _mosaic_slots(self) -> int:
        """Mosaic tasks that may run at once: as many as the cluster's CPUs hold. Ray queues them with the
        ingest tasks by the CPUs each asks for, so the streaming mosaic keeps pace with the fits (a
        mosaic held back while tiles are ingested is a backlog written after the last fit)."""
        return max(1, math.floor(self._cpus / self.config.resources.mosaic_cpus + 1e-9))

    # ----------------------------------------------------------------- the loop
    def _dispatch(self) -> None:
        submitting = time.perf_counter()
        self.fits.dispatch(self.inflight)
        self.ingest.dispatch(self.inflight, len(self.fits.queue), len(self.fits.slots))
        self.mosaics.dispatch(self.inflight)
        self.ray_seconds += time.perf_counter() - submitting

    def _collect(self) -> None:
        import ray

        if not self.inflight:  # e.g. only actors restarting, to be asked again later: do not spin
            time.sleep(IDLE_S)
            return
        waiting = time.perf_counter()
        ready, _ = ray.wait(self.inflight.refs(), num_returns=1, timeout=POLL_S)
        self._wait_seconds += time.perf_counter() - waiting
        for ref in ready:
            work = self.inflight.pop(ref)
            getting = time.perf_counter()
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as err:
                self._lost(work, err)
                continue
            finally:
                self.ray_seconds += time.perf_counter() - getting
            self._route(work, result)

    def _route(self, work: Work, result: Any) -> None:
        if work.kind == "ready":
            self.fits.ready(work, result)
        elif work.kind.startswith("mosaic"):
            self.mosaics.outcome(work, result)
        elif work.kind == "ingest":
            if self.ingest.outcome(result):
                self.fits.queue.append(result.tile_id)
        else:
            outcome: StageOutcome = result
            self.last_fit_at = time.time()
            self.fits.outcome(work, outcome)

    def _lost(self, work: Work, err: Exception) -> None:
        """A future that failed in Ray itself: its worker or actor died, or the task was cancelled."""
        import ray

        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if work.kind in ("ready", "fit"):
            if work.kind == "fit":
                self.last_fit_at = time.time()
            self.fits.lost(work, err)
        elif work.kind.startswith("mosaic"):
            self.mosaics.failed(work, f"worker died: {reason}", permanent=False)
        else:
            assert work.tile_id is not None
            cancelled = isinstance(err, ray.exceptions.TaskCancelledError)
            self.ingest.failed(
                work.tile_id,
                work.submitted,
                time.time(),
                None,
                f"worker died: {reason}",
                False,
                "interrupted" if cancelled else "worker_died",
            )

    # ----------------------------------------------------------------- progress
    def _emit(
        self, kind: str, message: str, tile_id: str | None = None, worker: WorkerInfo | None = None
    ) -> None:
        if self._progress is None:
            return
        book = self.book
        now = time.time()
        elapsed = now - self._started
        settled = book.done() + book.counts[TileState.FAILED] + book.counts[TileState.EMPTY]
        remaining = len(self.tiles) - settled
        eta = remaining * elapsed / book.fits_done if book.fits_done else None
        self._progress(
            CampaignProgress(
                kind=kind,
                message=message,
                tile_id=tile_id,
                total=len(self.tiles),
                states={str(s): book.counts[s] for s in TileState},
                ingesting=self.inflight.count("ingest"),
                fitting=self.inflight.count("fit"),
                mosaicking=self.inflight.mosaics(),
                elapsed_s=elapsed,
                eta_s=eta,
                gpu_seconds_held=self._gpu_seconds_held_before + self.fits.held_seconds(now),
                gpu_seconds_fits=book.gpu_seconds_fits,
                worker=worker,
            )
        )

    # ----------------------------------------------------------------- the end
    def _cancel_outstanding(self) -> None:
        import ray

        now = time.time()
        for ref, work in self.inflight.items():
            if work.kind == "ingest" or work.kind.startswith("mosaic"):
                ray.cancel(ref, force=True)
            if work.kind in ("ingest", "fit") and work.tile_id is not None:
                self.book.failed_attempt(
                    work.tile_id,
                    Stage.FIT if work.kind == "fit" else Stage.INGEST,
                    work.submitted,
                    now,
                    self.fits.slot_info(work.slot),
                    "interrupted (Ctrl-C)",
                    False,
                    "interrupted",
                )
        self.inflight.clear()

    def driver_busy_seconds(self) -> float:
        """Seconds the loop spent working (not waiting in ``ray.wait``) so far in this run."""
        if self._loop_started is None:
            return 0.0
        return time.perf_counter() - self._loop_started - self._wait_seconds

    def _finish(self, interrupted: bool, held: float) -> CampaignReport:
        book = self.book
        book.close()  # every record in the store before the run's record and the report
        ended = time.time()
        done = book.done()
        pool = self.fits.pool
        self.ledger.put_run(
            RunRecord(
                run_id=self.run_id,
                started=self._started,
                ended=ended,
                interrupted=interrupted,
                fit_actors=pool.actors if pool else 0,
                gpu_share=pool.num_gpus if pool else 0.0,
                gpu_seconds_held=held,
                tiles_done=done,
                tiles_failed=book.counts[TileState.FAILED],
                driver_busy_seconds=self.driver_busy_seconds(),
                ledger_seconds=book.ledger_seconds,
                ledger_wait_seconds=book.ledger_wait_seconds,
            )
        )
        report = build_report(
            name=self.config.name,
            output=self.config.output,
            fingerprint=self.config.fingerprint(),
            run_id=self.run_id,
            started=self._started,
            ended=ended,
            interrupted=interrupted,
            planned=[(t.tile_id, t.area_km2) for t in self.tiles.values()],
            records=self.ledger,
            runs=self.ledger.runs(),
            skipped=self._skipped,
            fits_per_gpu=self.config.resources.fits_per_gpu,
            mosaics=self.mosaics.states(),
            outputs={z.mosaic_url: z.outputs for z in self.ledger.zones().values()},
        )
        write_report(report, self.config.output, self.config.storage_options)
        # Fold this run's journal into the index, so the next status or resume reads one object.
        self.ledger.close()
        self._emit("finished", f"{done}/{len(self.tiles)} tiles done")
        return report


def campaign_status(config: CampaignConfig) -> CampaignReport:
    """The report of a campaign as its ledger stands (read-only: no Ray, nothing written)."""
    tiles = plan_campaign(config)
    layout = OutputLayout(config.output)
    ledger = Ledger.open(layout.ledger, config.storage_options)
    runs = ledger.runs()
    last = runs[-1] if runs else None
    zones = ledger.zones()
    # A zone whose tiles are all empty (sea) has no mosaic to wait for.
    with_data = {t.epsg for t in tiles if ledger.state(t.tile_id) != TileState.EMPTY}
    mosaics = {}
    for epsg in sorted(with_data):
        url = layout.mosaic(epsg)
        status = tile_status(url, config.storage_options)
        if status != "missing" or epsg in zones:
            mosaics[url] = (
                MOSAIC_COMPLETE if status == "complete" and epsg in zones else f"not finished ({status})"
            )
    return build_report(
        name=config.name,
        output=config.output,
        fingerprint=config.fingerprint(),
        run_id=last.run_id if last else "-",
        started=last.started if last else time.time(),
        ended=last.ended if last else time.time(),
        interrupted=bool(last and last.interrupted),
        planned=[(t.tile_id, t.area_km2) for t in tiles],
        records=ledger,
        runs=runs,
        skipped=0,
        fits_per_gpu=config.resources.fits_per_gpu,
        mosaics=mosaics,
        outputs={z.mosaic_url: z.outputs for z in zones.values()},
    )


def run_campaign(
    config: CampaignConfig,
    *,
    address: str | None = None,
    retry_failed: bool = False,
    progress: ProgressCallback | None = None,
    workers: StageWorkers | None = None,
) -> CampaignReport:
    """Run (or resume) a campaign to the end; returns its report.

    ``workers``: what runs on Ray (default: the real stages; a benchmark may pass labelled stand-ins).
    Raises :class:`CampaignInterrupted` (carrying the report) on Ctrl-C, after the ledger is written.
    """
    tiles = plan_campaign(config)
    ledger = Ledger.open(OutputLayout(config.output).ledger, config.storage_options)
    resumed = claim_output(ledger, config, tiles)
    log.info(
        "%s campaign %r: %d tiles, output %s",
        "resuming" if resumed else "starting",
        config.name,
        len(tiles),
        config.output,
    )
    driver = CampaignDriver(
        config,
        tiles,
        ledger,
        run_id=new_run_id(),
        retry_failed=retry_failed,
        progress=progress,
        workers=workers,
    )
    return driver.run(connect=lambda: connect_ray(address))
