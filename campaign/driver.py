"""The campaign driver: plan → ingest (Ray tasks) → fit (GPU-pinned Ray actors) → mosaic (Ray tasks).

:func:`run_campaign` reads like the pipeline; :class:`CampaignDriver` holds the scheduling state. One
loop waits (``ray.wait``) on a mixed set of futures: ingest tasks, fit calls, actor start-ups and mosaic
tasks, so a tile is fitted as soon as it is ingested and ingest keeps running while GPUs fit. Only URLs,
tile references and small frozen dataclasses cross into Ray.

Fault handling:
- a stage's error on bad input fails the tile at once (permanent), any other error is retried up to
  ``retries.<stage>`` attempts, then the tile is failed with its reason and the campaign goes on;
- a fit actor that dies mid-fit (killed, OOM, node lost) loses its call (``max_task_retries=0``): the
  driver records the attempt as ``worker_died`` and requeues the tile on whichever actor is idle next,
  while Ray restarts the dead actor (``max_restarts``) or the driver replaces it;
- Ctrl-C cancels outstanding work, writes the ledger and the report and raises
  :class:`CampaignInterrupted`; a rerun resumes from the ledger.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from campaign.config import CampaignConfig, ResourcesConfig, ingest_config
from campaign.errors import CampaignError, CampaignInterrupted, CampaignMismatchError
from campaign.ledger import (
    Attempt,
    FsspecLedgerStore,
    Ledger,
    Outcome,
    RunRecord,
    Stage,
    TileRecord,
    TileState,
    ZoneRecord,
)
from campaign.report import DONE_STATES, MOSAIC_COMPLETE, CampaignReport, build_report
from campaign.workers import FitOptions, MosaicGridSpec, StageOutcome, WorkerInfo
from tiler.grid import TileRef
from tiler.store import tile_status

log = logging.getLogger(__name__)

#: How long one ``ray.wait`` blocks before the loop looks again (Ctrl-C, ETA refresh), in seconds.
POLL_S = 0.5
#: Ray restarts a dead fit actor this many times; beyond that the driver starts a fresh one.
ACTOR_MAX_RESTARTS = 4
#: Pause of the loop when nothing is in flight (only actors restarting, to be asked again later).
IDLE_S = 0.05
#: Seconds between asking a restarting actor whether it is up again.
ACTOR_PING_RETRY_S = 1.0
#: Fresh actors the driver may start in place of actors that died for good, per pool slot.
REPLACEMENTS_PER_SLOT = 2
#: Neighbours a warm start may take its weights from, in order of preference (col, row offsets): the
#: four sharing an edge, then the diagonals.
WARM_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1))
#: Tiles ingested ahead of the fits, per fit actor: enough that no GPU waits, few enough that scratch
#: space holds a bounded number of input tiles (~0.5 GB each at 384×768×30 dates).
INGEST_AHEAD_PER_ACTOR = 2

REPORT_FILE = "report.json"


@dataclass(frozen=True)
class OutputLayout:
    """Where a campaign writes under its output URL."""

    root: str

    def ingested(self, tile_id: str) -> str:
        return f"{self.root.rstrip('/')}/tiles/{tile_id}.zarr"

    def fitted(self, tile_id: str) -> str:
        return f"{self.root.rstrip('/')}/fitted/{tile_id}.zarr"

    def mosaic(self, epsg: int) -> str:
        # The mosaicker's own naming (tiler.mosaic.mosaic_tiles), so `declouder mosaic` finds the same store.
        return f"{self.root.rstrip('/')}/mosaic_{epsg}.zarr"

    def outputs(self, epsg: int) -> str:
        return f"{self.root.rstrip('/')}/outputs/{epsg}"

    @property
    def ledger(self) -> str:
        return f"{self.root.rstrip('/')}/ledger"


@dataclass(frozen=True)
class FitPool:
    """How many fit actors to start and what each holds, from the config and the cluster's resources."""

    actors: int
    num_gpus: float
    num_cpus: float
    device: str
    note: str


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


def plan_campaign(config: CampaignConfig) -> list[TileRef]:
    """The campaign's tiles: its area on the zone-wide UTM grid (tiler.grid)."""
    from tiler.grid import load_area, plan_tiles

    area = load_area(config.area)
    tiles = plan_tiles(
        area, size=config.grid.size, overlap=config.grid.overlap, resolution=config.grid.resolution
    )
    if not tiles:
        raise CampaignError(
            f"area {config.area!r} covers no tile of the grid; check the area (lon/lat order: "
            "minlon,minlat,maxlon,maxlat)"
        )
    return list(tiles)


def fit_pool(resources: ResourcesConfig, cluster: Mapping[str, float], device: str) -> FitPool:
    """Size the fit actor pool from the config and the cluster's resources now.

    GPU fits (``device`` cuda, or auto on a cluster with GPUs): ``1 / gpus_per_fit`` actors per GPU.
    On an autoscaling cluster whose GPU nodes are not up yet (KubeRay scaling from zero), the pending
    actors are what makes the autoscaler add GPU nodes: ``resources.fit_actors`` says how many (default:
    one GPU's worth). CPU fits: as many actors as the CPUs hold, less the CPUs one ingest task needs (with
    every CPU held by an idle fit actor no tile could be ingested and the campaign would wait forever).
    """
    gpus = float(cluster.get("GPU", 0.0))
    cpus = float(cluster.get("CPU", 0.0))
    by_cpu = max(1, math.floor((cpus - resources.ingest_cpus) / resources.cpus_per_fit + 1e-9))
    if device.startswith("cuda") or (device == "auto" and gpus > 0):
        if resources.fit_actors:
            actors, why = resources.fit_actors, "resources.fit_actors"
        elif gpus > 0:
            actors = max(1, math.floor(gpus * resources.fits_per_gpu + 1e-9))
            if cpus:  # leave CPUs for ingest (see above); a cluster scaling from zero reports none yet
                actors = min(actors, by_cpu)
            why = f"{gpus:g} GPUs in the cluster"
        else:
            actors = resources.fits_per_gpu
            why = "no GPU in the cluster yet: the autoscaler adds GPU nodes for pending actors; set "
            why += "resources.fit_actors for more"
        return FitPool(
            actors=actors,
            num_gpus=resources.gpus_per_fit,
            num_cpus=resources.cpus_per_fit,
            device=device,
            note=(
                f"{actors} fit actors, {resources.gpus_per_fit:g} GPU each "
                f"({resources.fits_per_gpu} per GPU)" + (f" ({why})" if why else "")
            ),
        )
    actors = resources.fit_actors or by_cpu
    return FitPool(
        actors=actors,
        num_gpus=0.0,
        num_cpus=resources.cpus_per_fit,
        device="cpu" if device == "auto" else device,
        note=(
            f"no GPUs in the Ray cluster: fits run on {actors} CPU actors with "
            f"{resources.cpus_per_fit:g} CPUs each (expect a much slower campaign)"
        ),
    )


def connect_ray(address: str | None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start Ray embedded in this process.

    Returns whether this call started the connection (and so should end it). Under
    ``ray job submit``, Ray sets ``RAY_ADDRESS`` for the entrypoint, so the same command joins the cluster.
    """
    import os

    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level=logging.WARNING)
        log.info("joined the Ray cluster at %s", address or os.environ["RAY_ADDRESS"])
    else:
        # Embedded: a local Ray with this machine's CPUs and GPUs; no dashboard, to start in seconds.
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        log.info("started an embedded Ray instance (no --address / RAY_ADDRESS given)")
    return True


def claim_output(ledger: Ledger, config: CampaignConfig, tiles: Sequence[TileRef]) -> bool:
    """Record the campaign's settings in its output, or check a rerun's settings match. True: a resume."""
    settings = config.model_dump(mode="json", include={"area", "start", "end", "catalog", "grid", "fit"})
    existing = ledger.read_campaign()
    if existing is not None:
        if existing.get("fingerprint") != config.fingerprint():
            before = existing.get("settings", {})
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise CampaignMismatchError(
                f"output {config.output!r} holds campaign {existing.get('name')!r} with different "
                f"settings ({', '.join(changed) or 'fingerprint'}); resuming would mix two campaigns: "
                "use a new output URL, or restore the settings it was started with "
                f"(see {config.output}/ledger/campaign.json)"
            )
        return True
    ledger.write_campaign(
        {
            "name": config.name,
            "fingerprint": config.fingerprint(),
            "settings": settings,
            "tiles": len(tiles),
            "created": time.time(),
        }
    )
    return False


@dataclass
class _Slot:
    """One fit actor of the pool."""

    index: int
    name: str
    handle: Any
    info: WorkerInfo | None = None
    tile_id: str | None = None
    state: str = "starting"  # starting | idle | busy | dead
    replacements: int = 0
    started_at: float = field(default_factory=time.time)
    #: When to ask the actor whether it is up (after its start or a restart); None: not now.
    ping_at: float | None = None


@dataclass
class _Zone:
    """The mosaic of one UTM zone: waits for its tiles, then template → regions → finalize."""

    epsg: int
    url: str
    keys: tuple[str, ...]
    #: waiting | init | regions | finalizing | finalized | outputs | done | failed | skipped
    state: str = "waiting"
    attempts: Counter[str] = field(default_factory=Counter)
    pending: deque[tuple[str, bool]] = field(default_factory=deque)
    running: int = 0
    failed_keys: set[str] = field(default_factory=set)
    reason: str = ""


@dataclass(frozen=True)
class _Work:
    kind: str  # ingest | fit | ready | mosaic_init | mosaic_region | mosaic_finalize | mosaic_outputs
    tile_id: str | None
    submitted: float
    slot: int | None = None
    zone: int | None = None
    overwrite: bool = False
    actor: str | None = None
    warm: bool = False


class CampaignDriver:
    """Scheduling state of one run of a campaign. Use :func:`run_campaign`."""

    def __init__(
        self,
        config: CampaignConfig,
        tiles: Sequence[TileRef],
        ledger: Ledger,
        *,
        run_id: str,
        retry_failed: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.config = config
        self.tiles = {t.tile_id: t for t in tiles}
        self.ledger = ledger
        self.layout = OutputLayout(config.output)
        self.run_id = run_id
        self.retry_failed = retry_failed
        self._progress = progress
        self._queue_ingest: deque[str] = deque()
        self._queue_fit: deque[str] = deque()
        #: Tiles whose warm-started fit failed: their next attempt starts from scratch.
        self._cold: set[str] = set()
        #: Tiles queued for or running ingest or fit in this run, and how many of them per UTM zone.
        self._active: set[str] = set()
        self._active_per_zone: Counter[int] = Counter()
        self._inflight: dict[Any, _Work] = {}
        self._slots: list[_Slot] = []
        self._pool: FitPool | None = None
        self._zones: dict[int, _Zone] = {}
        self._states: dict[str, TileState] = {}
        self._counts: Counter[str] = Counter()
        self._base_attempts: dict[tuple[str, Stage], int] = {}
        self._skipped = 0
        self._fits_done = 0
        self._gpu_seconds_fits = 0.0
        self._gpu_seconds_held_before = 0.0
        self._started = time.time()
        self._ingest_config: Any = None
        self._tasks: dict[str, Any] = {}
        self._actor_class: Any = None
        self._actor_options: dict[str, Any] = {}
        self._mosaic_slots = 1
        self._wait_seconds = 0.0
        self._ledger_seconds = 0.0
        self._loop_started: float | None = None

    # ----------------------------------------------------------------- the pipeline
    def run(self, connect: Callable[[], bool]) -> CampaignReport:
        """Run to the end. ``connect`` joins or starts Ray (returns whether to shut it down after);
        it is called only if there is work left, so a finished campaign reports without Ray."""
        self._started = time.time()
        self._resume()
        if not (self._queue_ingest or self._queue_fit or self._zones_open()):
            return self._finish(interrupted=False, held=0.0)
        interrupted = False
        owns_ray = connect()
        try:
            try:
                self._start_tasks()
                if self._queue_ingest or self._queue_fit:
                    self._start_pool()
                self._loop_started = time.perf_counter()
                while self._inflight or self._queue_ingest or self._queue_fit or self._zones_open():
                    self._dispatch()
                    self._collect()
            except (KeyboardInterrupt, SystemExit):
                # Ctrl-C, or SIGTERM (`ray job stop`, a pod's eviction), which Ray's driver turns into
                # SystemExit: stop cleanly, keep the ledger, report.
                interrupted = True
                self._cancel_outstanding()
            finally:
                held = self._stop_pool()
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
        """Queue every tile the ledger does not show as done (or as failed for good)."""
        for tile_id in self.tiles:
            record = self.ledger.get(tile_id)
            if record is not None and self.retry_failed:
                for s in Stage:
                    self._base_attempts[(tile_id, s)] = record.attempts_at(s)
            stage = self._resume_stage(record)
            state = record.state if record is not None else TileState.PLANNED
            if stage == Stage.INGEST:
                state = TileState.PLANNED
                self._queue_ingest.append(tile_id)
                self._activate(tile_id)
            elif stage == Stage.FIT:
                state = TileState.INGESTED
                self._queue_fit.append(tile_id)
                self._activate(tile_id)
            elif stage == Stage.MOSAIC:
                state = TileState.FITTED
            elif state in DONE_STATES:
                self._skipped += 1
            if record is not None and record.state != state:
                # The ledger said more than the stores hold (a store was deleted by hand) or the tile is
                # retried: correct the record now, so no report counts it as done meanwhile.
                record = record.model_copy(
                    update={"state": state, "failed_stage": None, "error": None, "permanent": False}
                )
                self.ledger.put(record)
            self._set_state(tile_id, state)
            if record is not None:
                self._gpu_seconds_fits += record.gpu_seconds()
        self._gpu_seconds_held_before = sum(r.gpu_seconds_held for r in self.ledger.runs())
        self._plan_zones()
        self._emit(
            "planned",
            f"{len(self.tiles)} tiles planned, {self._skipped} already done, "
            f"{len(self._queue_ingest)} to ingest, {len(self._queue_fit)} to fit",
        )

    def _resume_stage(self, record: TileRecord | None) -> Stage | None:
        """The stage a tile resumes at, or None when it needs nothing (done, or failed for good).

        Done means the ledger says so AND the output is committed: the ledger is written after the
        store, but a store can be deleted by hand; then the tile is redone rather than counted.
        """
        if record is None:
            return Stage.INGEST
        opts = self.config.storage_options
        tile_id = record.tile_id
        fitted = lambda: tile_status(self.layout.fitted(tile_id), opts) == "complete"  # noqa: E731
        ingested = lambda: tile_status(self.layout.ingested(tile_id), opts) == "complete"  # noqa: E731
        if record.state == TileState.FAILED:
            stage = record.failed_stage or Stage.INGEST
            if not self.retry_failed and (record.permanent or not self._may_retry(record, stage)):
                return None
            if stage == Stage.MOSAIC and fitted():
                return Stage.MOSAIC
            return Stage.FIT if stage != Stage.INGEST and ingested() else Stage.INGEST
        if record.state in DONE_STATES and fitted():
            return None
        if record.state != TileState.PLANNED and ingested():
            return Stage.FIT
        return Stage.INGEST

    def _warm_source(self, tile_id: str) -> tuple[str | None, str | None]:
        """A fitted neighbour to start this tile's fit from, and its weights URL (fit.warm_start)."""
        if not self.config.fit.warm_start or tile_id in self._cold:
            return None, None
        tile = self.tiles[tile_id]
        for dc, dr in WARM_NEIGHBOURS:
            near = TileRef(tile.epsg, tile.col + dc, tile.row + dr, tile.size, tile.overlap, tile.resolution)
            record = self.ledger.get(near.tile_id)
            if record is None or self._states.get(near.tile_id) not in DONE_STATES or not record.fit:
                continue
            weights = record.fit.get("weights_url")
            if weights:
                return near.tile_id, str(weights)
        return None, None

    def _activate(self, tile_id: str) -> None:
        if tile_id not in self._active:
            self._active.add(tile_id)
            self._active_per_zone[self.tiles[tile_id].epsg] += 1

    def _deactivate(self, tile_id: str) -> None:
        if tile_id in self._active:
            self._active.remove(tile_id)
            self._active_per_zone[self.tiles[tile_id].epsg] -= 1

    def _limit(self, stage: Stage) -> int:
        return int(getattr(self.config.retries, stage.value))

    def _may_retry(self, record: TileRecord, stage: Stage) -> bool:
        used = record.attempts_at(stage) - self._base_attempts.get((record.tile_id, stage), 0)
        return used < self._limit(stage)

    # ----------------------------------------------------------------- Ray tasks and the fit actor pool
    def _start_tasks(self) -> None:
        import ray

        from campaign import workers

        resources = self.config.resources
        if self._queue_ingest:
            self._ingest_config = ingest_config(self.config)
        self._tasks = {
            "ingest": ray.remote(workers.ingest_one).options(
                num_cpus=resources.ingest_cpus,
                # Ray resubmits a task whose worker died (node lost); the stage's own errors come back
                # as values and the driver retries those, counting attempts in the ledger.
                max_retries=self.config.retries.ingest - 1,
                retry_exceptions=False,
            ),
            **{
                name: ray.remote(fn).options(
                    num_cpus=resources.mosaic_cpus, max_retries=self.config.retries.mosaic - 1
                )
                for name, fn in (
                    ("mosaic_init", workers.mosaic_init),
                    ("mosaic_region", workers.mosaic_region),
                    ("mosaic_finalize", workers.mosaic_finalize),
                    ("mosaic_outputs", workers.mosaic_outputs),
                )
            },
        }
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self._mosaic_slots = max(1, math.floor(cpus / resources.mosaic_cpus))

    def _start_pool(self) -> None:
        import ray

        from campaign.workers import FitWorker

        cfg = self.config
        self._pool = pool = fit_pool(cfg.resources, ray.cluster_resources(), cfg.fit.device)
        log.info("%s", pool.note)
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        if pool.actors * pool.num_cpus + cfg.resources.ingest_cpus > cpus:
            log.warning(
                "fit actors reserve %.2g of %.2g CPUs: ingest tasks (%.2g CPUs each) may wait for CPUs; "
                "lower resources.cpus_per_fit or resources.fit_actors",
                pool.actors * pool.num_cpus,
                cpus,
                cfg.resources.ingest_cpus,
            )
        self._fit_options = FitOptions(
            preset=cfg.fit.preset,
            input=cfg.fit.input,
            device=pool.device,
            seed=cfg.fit.seed,
            vgg_weights=cfg.fit.vgg_weights,
            storage_options=cfg.storage_options or None,
            save_weights=cfg.fit.warm_start,
        )
        self._actor_class = ray.remote(FitWorker)
        self._actor_options = {
            "num_gpus": pool.num_gpus,
            "num_cpus": pool.num_cpus,
            "max_restarts": ACTOR_MAX_RESTARTS,
            # A call lost with its actor is not retried by Ray: the driver requeues the tile on another
            # actor and counts the attempt.
            "max_task_retries": 0,
        }
        for index in range(pool.actors):
            self._slots.append(self._new_actor(index))

    def _new_actor(self, index: int, replacements: int = 0) -> _Slot:
        assert self._pool is not None
        name = f"declouder-fit-{self.run_id}-{index}-{replacements}"
        handle = self._actor_class.options(**self._actor_options, name=name).remote(
            name, self._fit_options, self._pool.num_gpus
        )
        return _Slot(index=index, name=name, handle=handle, replacements=replacements, ping_at=time.time())

    def _stop_pool(self) -> float:
        """Kill the fit actors; returns the GPU-seconds they held in this run."""
        import ray

        now = time.time()
        held = 0.0
        share = self._pool.num_gpus if self._pool else 0.0
        for slot in self._slots:
            held += (now - slot.started_at) * share
            if slot.state != "dead":
                ray.kill(slot.handle, no_restart=True)
        self._slots = []
        return held

    # ----------------------------------------------------------------- scheduling
    def _dispatch(self) -> None:
        now = time.time()
        for slot in self._slots:
            if slot.ping_at is not None and slot.ping_at <= now:
                self._inflight[slot.handle.ready.remote()] = _Work(
                    "ready", None, now, slot.index, actor=slot.name
                )
                slot.ping_at = None
        for slot in self._slots:
            if slot.state == "idle" and self._queue_fit:
                tile_id = self._queue_fit.popleft()
                source, weights = self._warm_source(tile_id)
                ref = slot.handle.fit.remote(
                    tile_id, self.layout.ingested(tile_id), self.layout.fitted(tile_id), weights
                )
                slot.state, slot.tile_id = "busy", tile_id
                self._inflight[ref] = _Work("fit", tile_id, time.time(), slot.index, warm=weights is not None)
                warm = f" (warm start from {source})" if source else ""
                self._emit("fit_started", f"fitting {tile_id} on {slot.name}{warm}", tile_id, slot.info)
        if self._queue_fit and self._slots and all(s.state == "dead" for s in self._slots):
            raise CampaignError(
                f"every fit actor died and none could be replaced; {len(self._queue_fit)} tiles wait to be "
                "fitted: check the Ray logs (`ray logs`) for why, then rerun the same command to resume"
            )
        resources = self.config.resources
        kinds = Counter(w.kind for w in self._inflight.values())
        ahead = max(resources.ingest_concurrency, INGEST_AHEAD_PER_ACTOR * len(self._slots))
        while (
            self._queue_ingest
            and kinds["ingest"] < resources.ingest_concurrency
            and kinds["ingest"] + len(self._queue_fit) < ahead
        ):
            tile_id = self._queue_ingest.popleft()
            ref = self._tasks["ingest"].remote(
                self.tiles[tile_id],
                self.layout.ingested(tile_id),
                self._ingest_config,
                self.config.storage_options or None,
            )
            self._inflight[ref] = _Work("ingest", tile_id, time.time())
            kinds["ingest"] += 1
            self._emit("ingest_started", f"ingesting {tile_id}", tile_id)
        self._dispatch_mosaics()

    def _collect(self) -> None:
        import ray

        if not self._inflight:  # e.g. only actors restarting, to be asked again later: do not spin
            time.sleep(IDLE_S)
            return
        waiting = time.perf_counter()
        ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=POLL_S)
        self._wait_seconds += time.perf_counter() - waiting
        for ref in ready:
            work = self._inflight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as err:
                self._lost(work, err)
                continue
            if work.kind == "ready":
                self._actor_ready(work, result)
            elif work.kind.startswith("mosaic"):
                self._mosaic_outcome(work, result)
            else:
                self._outcome(work, result)

    def _actor_ready(self, work: _Work, info: WorkerInfo) -> None:
        slot = self._slots[work.slot or 0]
        if slot.name != work.actor:
            return  # a ping of an actor this slot has already replaced
        slot.info, slot.state = info, "idle"
        self._emit("actor_ready", f"{slot.name} ready (GPU {','.join(info.gpu_ids) or '-'})", worker=info)

    def _lost(self, work: _Work, err: Exception) -> None:
        """A future that failed in Ray itself: its worker or actor died, or the task was cancelled."""
        import ray

        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if work.kind == "ready":
            slot = self._slots[work.slot or 0]
            if slot.name != work.actor:
                return  # a ping of an actor this slot has already replaced
            if isinstance(err, ray.exceptions.ActorUnavailableError):
                # Ray is restarting it (max_restarts): ask again shortly.
                slot.ping_at = time.time() + ACTOR_PING_RETRY_S
            elif slot.replacements < REPLACEMENTS_PER_SLOT:
                log.warning("fit actor %s is gone (%s); starting a fresh one", slot.name, reason)
                ray.kill(slot.handle, no_restart=True)
                self._slots[slot.index] = self._new_actor(slot.index, slot.replacements + 1)
            else:
                slot.state = "dead"
                log.error("fit actor %s died for good: %s", slot.name, reason)
            return
        if work.kind.startswith("mosaic"):
            self._mosaic_failed(work, f"worker died: {reason}", permanent=False)
            return
        assert work.tile_id is not None
        owner = self._slots[work.slot] if work.slot is not None else None
        worker = owner.info if owner is not None else None
        if owner is not None:
            # Wait for Ray to restart the actor (or learn it is gone) before giving it another tile.
            owner.state, owner.tile_id, owner.ping_at = "starting", None, time.time()
        stage = Stage.FIT if work.kind == "fit" else Stage.INGEST
        cancelled = isinstance(err, ray.exceptions.TaskCancelledError)
        outcome: Outcome = "interrupted" if cancelled else "worker_died"
        self._failed_attempt(
            work.tile_id, stage, work.submitted, time.time(), worker, f"worker died: {reason}", False, outcome
        )

    def _outcome(self, work: _Work, outcome: StageOutcome) -> None:
        tile_id = outcome.tile_id
        slot = self._slots[work.slot] if work.slot is not None else None
        if slot is not None and slot.state == "busy":
            slot.state, slot.tile_id = "idle", None
        if not outcome.ok:
            if work.warm:
                self._cold.add(tile_id)
            self._failed_attempt(
                tile_id,
                outcome.stage,
                outcome.started,
                outcome.ended,
                outcome.worker,
                outcome.error or "unknown error",
                outcome.permanent,
                "error",
            )
            return
        if outcome.stage == Stage.FIT and self._states.get(tile_id) in DONE_STATES:
            log.warning("tile %s was already fitted: ignoring a second result", tile_id)
            return
        record = self._record(tile_id)
        attempt = self._attempt(outcome.stage, record, outcome.started, outcome.ended, outcome.worker, "ok")
        attempt = attempt.model_copy(update={"device": outcome.device})
        if outcome.stage == Stage.FIT:
            self._put(record.record(attempt, fit=dict(outcome.summary)))
        else:
            self._put(record.record(attempt, ingest=dict(outcome.summary)))
        if outcome.stage == Stage.INGEST:
            self._queue_fit.append(tile_id)
            self._emit("ingested", f"ingested {tile_id} in {attempt.seconds:.1f} s", tile_id, outcome.worker)
        else:
            self._deactivate(tile_id)
            self._fits_done += 1
            self._gpu_seconds_fits += attempt.seconds * attempt.gpu_share
            self._emit("fitted", f"fitted {tile_id} in {attempt.seconds:.1f} s", tile_id, outcome.worker)

    def _failed_attempt(
        self,
        tile_id: str,
        stage: Stage,
        started: float,
        ended: float,
        worker: WorkerInfo | None,
        error: str,
        permanent: bool,
        outcome: Outcome,
    ) -> None:
        record = self._record(tile_id)
        attempt = self._attempt(stage, record, started, ended, worker, outcome, error, permanent)
        record = record.record(attempt)
        if stage == Stage.FIT:
            self._gpu_seconds_fits += attempt.seconds * attempt.gpu_share
        if outcome == "interrupted":
            self._put(record)
            return
        if not permanent and self._may_retry(record, stage):
            self._put(record)
            queue = {Stage.FIT: self._queue_fit, Stage.INGEST: self._queue_ingest}.get(stage)
            if queue is not None:
                queue.appendleft(tile_id)  # front of the queue: the next idle worker takes it
            kind = "worker_died" if outcome == "worker_died" else "retry"
            self._emit(kind, f"{stage} of {tile_id} failed ({error}); retrying", tile_id, worker)
            return
        tries = record.attempts_at(stage)
        reason = error if permanent else f"{error} (gave up after {tries} attempts)"
        self._put(record.failed(stage, reason, permanent=permanent))
        self._deactivate(tile_id)
        self._emit("failed", f"{tile_id} failed at {stage}: {error}", tile_id, worker)

    def _attempt(
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

    # ----------------------------------------------------------------- mosaics, one per UTM zone
    def _plan_zones(self) -> None:
        """A zone's mosaic is done when the ledger has its zone record, its store is complete, and no tile
        of the zone is fitted-but-not-mosaicked or (re)fitted in this run; otherwise it is (re)built."""
        by_zone: dict[int, list[str]] = {}
        for tile_id, tile in self.tiles.items():
            by_zone.setdefault(tile.epsg, []).append(tile_id)
        recorded = self.ledger.zones()
        for epsg, keys in sorted(by_zone.items()):
            zone = _Zone(epsg=epsg, url=self.layout.mosaic(epsg), keys=tuple(sorted(keys)))
            settled = all(
                self._states[k] in (TileState.MOSAICKED, TileState.FAILED) and k not in self._active
                for k in keys
            )
            if settled and not any(self._states[k] == TileState.MOSAICKED for k in keys):
                zone.state, zone.reason = "skipped", "no tile of the zone was fitted"
            elif (
                settled
                and epsg in recorded
                and tile_status(zone.url, self.config.storage_options) == "complete"
            ):
                zone.state = "done"
            self._zones[epsg] = zone

    def _zones_open(self) -> bool:
        return any(z.state not in ("done", "failed", "skipped") for z in self._zones.values())

    def _contributes(self, tile_id: str) -> bool:
        """Whether the tile has a committed fitted store a mosaic can read."""
        state = self._states.get(tile_id)
        if state in DONE_STATES:
            return True
        record = self.ledger.get(tile_id)
        return state == TileState.FAILED and record is not None and record.failed_stage == Stage.MOSAIC

    def _dispatch_mosaics(self) -> None:
        grid = MosaicGridSpec(self.config.grid.size, self.config.grid.overlap, self.config.grid.resolution)
        opts = self.config.storage_options or None
        running = sum(1 for w in self._inflight.values() if w.kind.startswith("mosaic"))
        for zone in self._zones.values():
            zone_label = f"EPSG:{zone.epsg}"
            if zone.state == "waiting" and not self._active_per_zone[zone.epsg]:
                fitted = {k: self.layout.fitted(k) for k in zone.keys if self._contributes(k)}
                if not fitted:
                    zone.state, zone.reason = "failed", "no tile of the zone was fitted"
                    continue
                ref = self._tasks["mosaic_init"].remote(zone.url, zone_label, fitted, zone.keys, grid, opts)
                self._inflight[ref] = _Work("mosaic_init", zone_label, time.time(), zone=zone.epsg)
                zone.state = "init"
                running += 1
                self._emit("mosaic_started", f"mosaic of {zone_label}: writing its template")
            while zone.state == "regions" and zone.pending and running < self._mosaic_slots:
                key, overwrite = zone.pending.popleft()
                ref = self._tasks["mosaic_region"].remote(zone.url, key, self._reaching(key), overwrite, opts)
                self._inflight[ref] = _Work(
                    "mosaic_region", key, time.time(), zone=zone.epsg, overwrite=overwrite
                )
                zone.running += 1
                running += 1
            if zone.state == "finalized":
                kinds = tuple(k for k in ("quicklooks", "cogs", "stac") if getattr(self.config.outputs, k))
                if kinds:
                    out_dir = self.layout.outputs(zone.epsg)
                    ref = self._tasks["mosaic_outputs"].remote(zone.url, zone_label, out_dir, kinds, opts)
                    self._inflight[ref] = _Work("mosaic_outputs", zone_label, time.time(), zone=zone.epsg)
                    zone.state = "outputs"
                    running += 1
                else:
                    self._zone_done(zone, {})
            if zone.state == "regions" and not zone.pending and zone.running == 0:
                if zone.failed_keys:
                    zone.state = "failed"
                    zone.reason = f"regions not written: {', '.join(sorted(zone.failed_keys)[:5])}"
                    continue
                ref = self._tasks["mosaic_finalize"].remote(zone.url, zone_label, opts)
                self._inflight[ref] = _Work("mosaic_finalize", zone_label, time.time(), zone=zone.epsg)
                zone.state = "finalizing"
                running += 1

    def _reaching(self, key: str) -> dict[str, str]:
        """Fitted tiles whose pixels reach into the cell of ``key``: itself and its W, S and SW neighbours
        (a tile reaches ``overlap`` px beyond its cell to the east and north, tiler.grid)."""
        cell = self.tiles[key]
        near = {
            TileRef(cell.epsg, cell.col - dc, cell.row - dr, cell.size, cell.overlap, cell.resolution).tile_id
            for dc in (0, 1)
            for dr in (0, 1)
        }
        return {t: self.layout.fitted(t) for t in sorted(near) if t in self.tiles and self._contributes(t)}

    def _reached_by(self, tile_id: str) -> set[str]:
        """Cells a tile's pixels reach into: its own and its E, N and NE neighbours'."""
        tile = self.tiles[tile_id]
        return {
            TileRef(tile.epsg, tile.col + dc, tile.row + dr, tile.size, tile.overlap, tile.resolution).tile_id
            for dc in (0, 1)
            for dr in (0, 1)
        }

    def _mosaic_outcome(self, work: _Work, outcome: StageOutcome) -> None:
        zone = self._zones[work.zone or 0]
        if not outcome.ok:
            self._mosaic_failed(work, outcome.error or "unknown error", outcome.permanent, outcome)
            return
        if work.kind == "mosaic_init":
            if outcome.summary.get("fresh"):
                keys = [(k, False) for k in zone.keys]
            else:
                # Cells of tiles fitted since the regions were last written, and the cells they reach.
                dirty = {
                    c for k in zone.keys if self._states[k] == TileState.FITTED for c in self._reached_by(k)
                }
                keys = [(k, k in dirty) for k in zone.keys]
            zone.pending, zone.state = deque(keys), "regions"
        elif work.kind == "mosaic_region":
            zone.running -= 1
            key = outcome.tile_id
            if self._contributes(key):
                record = self._record(key)
                attempt = self._attempt(
                    Stage.MOSAIC, record, outcome.started, outcome.ended, outcome.worker, "ok"
                )
                self._put(record.record(attempt))
                self._emit("mosaicked", f"mosaicked {key}", key, outcome.worker)
        elif work.kind == "mosaic_finalize":
            zone.state = "finalized"
            self._emit("mosaic_done", f"mosaic of EPSG:{zone.epsg} complete: {zone.url}")
        else:
            self._zone_done(zone, {str(k): str(v) for k, v in outcome.summary.items()})

    def _zone_done(self, zone: _Zone, outputs: Mapping[str, str]) -> None:
        self.ledger.put_zone(
            ZoneRecord(
                epsg=zone.epsg,
                mosaic_url=zone.url,
                run_id=self.run_id,
                finished=time.time(),
                outputs=dict(outputs),
            )
        )
        zone.state = "done"
        if outputs:
            self._emit("outputs_done", f"outputs of EPSG:{zone.epsg}: {', '.join(outputs.values())}")

    def _mosaic_failed(
        self, work: _Work, error: str, permanent: bool, outcome: StageOutcome | None = None
    ) -> None:
        zone = self._zones[work.zone or 0]
        step = work.kind.removeprefix("mosaic_")
        key = work.tile_id or f"EPSG:{zone.epsg}"
        zone.attempts[key] += 1
        retry = not permanent and zone.attempts[key] < self._limit(Stage.MOSAIC)
        if work.kind == "mosaic_region":
            zone.running -= 1
            if self._contributes(key):
                record = self._record(key)
                worker = outcome.worker if outcome else None
                started, ended = (
                    (outcome.started, outcome.ended) if outcome else (work.submitted, time.time())
                )
                attempt = self._attempt(
                    Stage.MOSAIC, record, started, ended, worker, "error", error, permanent
                )
                record = record.record(attempt)
                self._put(record if retry else record.failed(Stage.MOSAIC, error, permanent=permanent))
            if retry:
                zone.pending.appendleft((key, work.overwrite))
            else:
                zone.failed_keys.add(key)
        elif retry:
            zone.state = {"mosaic_init": "waiting", "mosaic_finalize": "regions"}.get(work.kind, "finalized")
        else:
            zone.state, zone.reason = "failed", f"{step} failed: {error}"
        self._emit("retry" if retry else "failed", f"mosaic {step} of {key} failed ({error})", key)

    # ----------------------------------------------------------------- ledger and progress
    def _record(self, tile_id: str) -> TileRecord:
        record = self.ledger.get(tile_id)
        if record is None:
            tile = self.tiles[tile_id]
            record = TileRecord(tile_id=tile_id, epsg=tile.epsg, area_km2=tile.area_km2)
        return record

    def _put(self, record: TileRecord) -> None:
        writing = time.perf_counter()
        self.ledger.put(record)
        self._ledger_seconds += time.perf_counter() - writing
        self._set_state(record.tile_id, record.state)

    def _set_state(self, tile_id: str, state: TileState) -> None:
        previous = self._states.get(tile_id)
        if previous is not None:
            self._counts[previous] -= 1
        self._states[tile_id] = state
        self._counts[state] += 1

    def _emit(
        self, kind: str, message: str, tile_id: str | None = None, worker: WorkerInfo | None = None
    ) -> None:
        if self._progress is None:
            return
        elapsed = time.time() - self._started
        done = sum(self._counts[s] for s in DONE_STATES)
        remaining = len(self.tiles) - done - self._counts[TileState.FAILED]
        eta = remaining * elapsed / self._fits_done if self._fits_done else None
        kinds = Counter(w.kind for w in self._inflight.values())
        share = self._pool.num_gpus if self._pool else 0.0
        held_now = sum((time.time() - s.started_at) * share for s in self._slots)
        self._progress(
            CampaignProgress(
                kind=kind,
                message=message,
                tile_id=tile_id,
                total=len(self.tiles),
                states={str(s): self._counts[s] for s in TileState},
                ingesting=kinds["ingest"],
                fitting=kinds["fit"],
                mosaicking=sum(n for kind, n in kinds.items() if kind.startswith("mosaic")),
                elapsed_s=elapsed,
                eta_s=eta,
                gpu_seconds_held=self._gpu_seconds_held_before + held_now,
                gpu_seconds_fits=self._gpu_seconds_fits,
                worker=worker,
            )
        )

    # ----------------------------------------------------------------- the end
    def _cancel_outstanding(self) -> None:
        import ray

        now = time.time()
        for ref, work in list(self._inflight.items()):
            if work.kind in ("ingest", "mosaic_init", "mosaic_region", "mosaic_finalize"):
                ray.cancel(ref, force=True)
            if work.kind in ("ingest", "fit") and work.tile_id is not None:
                slot = self._slots[work.slot] if work.slot is not None else None
                self._failed_attempt(
                    work.tile_id,
                    Stage.FIT if work.kind == "fit" else Stage.INGEST,
                    work.submitted,
                    now,
                    slot.info if slot else None,
                    "interrupted (Ctrl-C)",
                    False,
                    "interrupted",
                )
        self._inflight.clear()

    def _mosaic_states(self) -> dict[str, str]:
        states = {}
        for zone in self._zones.values():
            if zone.state == "done":
                states[zone.url] = MOSAIC_COMPLETE
            elif zone.state != "skipped":
                states[zone.url] = zone.reason or f"not finished ({zone.state})"
        return states

    def _finish(self, interrupted: bool, held: float) -> CampaignReport:
        ended = time.time()
        done = sum(self._counts[s] for s in DONE_STATES)
        self.ledger.put_run(
            RunRecord(
                run_id=self.run_id,
                started=self._started,
                ended=ended,
                interrupted=interrupted,
                fit_actors=self._pool.actors if self._pool else 0,
                gpu_share=self._pool.num_gpus if self._pool else 0.0,
                gpu_seconds_held=held,
                tiles_done=done,
                tiles_failed=self._counts[TileState.FAILED],
                driver_busy_seconds=(
                    time.perf_counter() - self._loop_started - self._wait_seconds
                    if self._loop_started
                    else 0.0
                ),
                ledger_seconds=self._ledger_seconds,
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
            mosaics=self._mosaic_states(),
            outputs={z.mosaic_url: z.outputs for z in self.ledger.zones().values()},
        )
        write_report(report, self.config.output, self.config.storage_options)
        self._emit("finished", f"{done}/{len(self.tiles)} tiles done")
        return report


def write_report(report: CampaignReport, output: str, storage_options: Mapping[str, Any] | None) -> str:
    """Write the JSON report to ``<output>/report.json`` (atomically); returns its URL."""
    FsspecLedgerStore(output, storage_options).write(REPORT_FILE, report.model_dump_json(indent=2).encode())
    return f"{output.rstrip('/')}/{REPORT_FILE}"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def campaign_status(config: CampaignConfig) -> CampaignReport:
    """The report of a campaign as its ledger stands (read-only: no Ray, nothing written)."""
    tiles = plan_campaign(config)
    ledger = Ledger.open(OutputLayout(config.output).ledger, config.storage_options)
    runs = ledger.runs()
    last = runs[-1] if runs else None
    zones = ledger.zones()
    mosaics = {}
    for epsg in sorted({t.epsg for t in tiles}):
        url = OutputLayout(config.output).mosaic(epsg)
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
) -> CampaignReport:
    """Run (or resume) a campaign to the end; returns its report.

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
        config, tiles, ledger, run_id=new_run_id(), retry_failed=retry_failed, progress=progress
    )
    return driver.run(connect=lambda: connect_ray(address))
