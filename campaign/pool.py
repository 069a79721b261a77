"""The fit actor pool: sizing it from the cluster, starting, replacing and stopping its actors, and
feeding them the fit queue.

Each fit actor holds its share of one GPU (Ray's fractional GPUs pin it through CUDA_VISIBLE_DEVICES)
and fits one tile at a time. An actor that dies mid-fit (killed, OOM, node lost) loses its call
(``max_task_retries=0``): the attempt is recorded as ``worker_died`` and the tile requeued on whichever
actor is idle next, while Ray restarts the dead actor (``max_restarts``) or the pool replaces it. A fit
that finds its input store corrupt (:class:`tiler.errors.CorruptChunkError`) sends the tile back to
ingest, within the fit's retry budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from campaign.book import Emit, TileBook
from campaign.config import CampaignConfig, ResourcesConfig
from campaign.errors import CampaignError
from campaign.inflight import Inflight, Work
from campaign.layout import OutputLayout
from campaign.ledger import Outcome, Stage
from campaign.report import DONE_STATES
from campaign.workers import FitOptions, StageOutcome, WorkerInfo
from tiler.grid import TileRef

log = logging.getLogger(__name__)

#: Ray restarts a dead fit actor this many times; beyond that the pool starts a fresh one.
ACTOR_MAX_RESTARTS = 4
#: Seconds between asking a restarting actor whether it is up again.
ACTOR_PING_RETRY_S = 1.0
#: Fresh actors the pool may start in place of actors that died for good, per pool slot.
REPLACEMENTS_PER_SLOT = 2
#: Neighbours a warm start may take its weights from, in order of preference (col, row offsets): the
#: four sharing an edge, then the diagonals.
WARM_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1))


@dataclass(frozen=True)
class FitPool:
    """How many fit actors to start and what each holds, from the config and the cluster's resources."""

    actors: int
    num_gpus: float
    num_cpus: float
    device: str
    note: str


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


class FitActorPool:
    """The fit queue of a run and the actors that work it off."""

    def __init__(
        self,
        config: CampaignConfig,
        book: TileBook,
        layout: OutputLayout,
        emit: Emit,
        *,
        reingest: Callable[[str], None],
    ) -> None:
        self.config = config
        self.book = book
        self.layout = layout
        self.emit = emit
        self.queue: deque[str] = deque()
        self.pool: FitPool | None = None
        self.slots: list[_Slot] = []
        #: Sends a tile back to ingest (its input store is corrupt).
        self._reingest = reingest
        #: Tiles whose warm-started fit failed: their next attempt starts from scratch.
        self._cold: set[str] = set()
        self._actor_class: Any = None
        self._actor_options: dict[str, Any] = {}
        self._fit_options: FitOptions | None = None
        self._run_id = book.run_id

    @property
    def share(self) -> float:
        return self.pool.num_gpus if self.pool else 0.0

    def held_seconds(self, now: float) -> float:
        """GPU-seconds the live actors have held so far in this run."""
        return sum((now - s.started_at) * self.share for s in self.slots)

    # ------------------------------------------------------------------ actors
    def start(self, actor_class: Any) -> None:
        """Ray is up: size the pool and start its actors (``actor_class``: the fit actor, as a class)."""
        import ray

        cfg = self.config
        self.pool = pool = fit_pool(cfg.resources, ray.cluster_resources(), cfg.fit.device)
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
        self._actor_class = ray.remote(actor_class)
        self._actor_options = {
            "num_gpus": pool.num_gpus,
            "num_cpus": pool.num_cpus,
            "max_restarts": ACTOR_MAX_RESTARTS,
            # A call lost with its actor is not retried by Ray: the pool requeues the tile on another
            # actor and counts the attempt.
            "max_task_retries": 0,
        }
        for index in range(pool.actors):
            self.slots.append(self._new_actor(index))

    def _new_actor(self, index: int, replacements: int = 0) -> _Slot:
        assert self.pool is not None
        name = f"declouder-fit-{self._run_id}-{index}-{replacements}"
        handle = self._actor_class.options(**self._actor_options, name=name).remote(
            name, self._fit_options, self.pool.num_gpus
        )
        return _Slot(index=index, name=name, handle=handle, replacements=replacements, ping_at=time.time())

    def stop(self) -> float:
        """Kill the fit actors; returns the GPU-seconds they held in this run."""
        import ray

        held = self.held_seconds(time.time())
        for slot in self.slots:
            if slot.state != "dead":
                ray.kill(slot.handle, no_restart=True)
        self.slots = []
        return held

    # ------------------------------------------------------------------ scheduling
    def dispatch(self, inflight: Inflight) -> None:
        now = time.time()
        for slot in self.slots:
            if slot.ping_at is not None and slot.ping_at <= now:
                inflight.add(
                    slot.handle.ready.remote(), Work("ready", None, now, slot.index, actor=slot.name)
                )
                slot.ping_at = None
        for slot in self.slots:
            if slot.state == "idle" and self.queue:
                tile_id = self.queue.popleft()
                source, weights = self._warm_source(tile_id)
                ref = slot.handle.fit.remote(
                    tile_id, self.layout.ingested(tile_id), self.layout.fitted(tile_id), weights
                )
                slot.state, slot.tile_id = "busy", tile_id
                inflight.add(ref, Work("fit", tile_id, time.time(), slot.index, warm=weights is not None))
                warm = f" (warm start from {source})" if source else ""
                self.emit("fit_started", f"fitting {tile_id} on {slot.name}{warm}", tile_id, slot.info)
        if self.queue and self.slots and all(s.state == "dead" for s in self.slots):
            raise CampaignError(
                f"every fit actor died and none could be replaced; {len(self.queue)} tiles wait to be "
                "fitted: check the Ray logs (`ray logs`) for why, then rerun the same command to resume"
            )

    def _warm_source(self, tile_id: str) -> tuple[str | None, str | None]:
        """A fitted neighbour to start this tile's fit from, and its weights URL (fit.warm_start)."""
        if not self.config.fit.warm_start or tile_id in self._cold:
            return None, None
        tile = self.book.tiles[tile_id]
        for dc, dr in WARM_NEIGHBOURS:
            near = TileRef(tile.epsg, tile.col + dc, tile.row + dr, tile.size, tile.overlap, tile.resolution)
            record = self.book.get(near.tile_id)
            if record is None or self.book.state(near.tile_id) not in DONE_STATES or not record.fit:
                continue
            weights = record.fit.get("weights_url")
            if weights:
                return near.tile_id, str(weights)
        return None, None

    # ------------------------------------------------------------------ results
    def ready(self, work: Work, info: WorkerInfo) -> None:
        slot = self.slots[work.slot or 0]
        if slot.name != work.actor:
            return  # a ping of an actor this slot has already replaced
        slot.info, slot.state = info, "idle"
        self.emit("actor_ready", f"{slot.name} ready (GPU {','.join(info.gpu_ids) or '-'})", None, info)

    def outcome(self, work: Work, outcome: StageOutcome) -> None:
        tile_id = outcome.tile_id
        slot = self.slots[work.slot] if work.slot is not None else None
        if slot is not None and slot.state == "busy":
            slot.state, slot.tile_id = "idle", None
        if not outcome.ok:
            if work.warm:
                self._cold.add(tile_id)
            self.failed(
                tile_id,
                outcome.started,
                outcome.ended,
                outcome.worker,
                outcome.error or "unknown error",
                outcome.permanent,
                "error",
                reingest=outcome.reingest,
            )
            return
        if self.book.state(tile_id) in DONE_STATES:
            log.warning("tile %s was already fitted: ignoring a second result", tile_id)
            return
        attempt = self.book.succeeded(outcome)
        self.emit("fitted", f"fitted {tile_id} in {attempt.seconds:.1f} s", tile_id, outcome.worker)

    def failed(
        self,
        tile_id: str,
        started: float,
        ended: float,
        worker: WorkerInfo | None,
        error: str,
        permanent: bool,
        kind: Outcome,
        *,
        reingest: bool = False,
    ) -> None:
        verdict = self.book.failed_attempt(tile_id, Stage.FIT, started, ended, worker, error, permanent, kind)
        if verdict == "retry":
            if reingest:
                self._reingest(tile_id)
                self.emit(
                    "reingest", f"fit of {tile_id} failed ({error}); ingesting it again", tile_id, worker
                )
                return
            self.queue.appendleft(tile_id)  # front of the queue: the next idle actor takes it
            what = "worker_died" if kind == "worker_died" else "retry"
            self.emit(what, f"fit of {tile_id} failed ({error}); retrying", tile_id, worker)
        elif verdict == "failed":
            self.emit("failed", f"{tile_id} failed at fit: {error}", tile_id, worker)

    def lost(self, work: Work, err: Exception) -> None:
        """A fit call or ping whose actor died (or was cancelled) in Ray itself."""
        import ray

        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if work.kind == "ready":
            slot = self.slots[work.slot or 0]
            if slot.name != work.actor:
                return  # a ping of an actor this slot has already replaced
            if isinstance(err, ray.exceptions.ActorUnavailableError):
                # Ray is restarting it (max_restarts): ask again shortly.
                slot.ping_at = time.time() + ACTOR_PING_RETRY_S
            elif slot.replacements < REPLACEMENTS_PER_SLOT:
                log.warning("fit actor %s is gone (%s); starting a fresh one", slot.name, reason)
                ray.kill(slot.handle, no_restart=True)
                self.slots[slot.index] = self._new_actor(slot.index, slot.replacements + 1)
            else:
                slot.state = "dead"
                log.error("fit actor %s died for good: %s", slot.name, reason)
            return
        assert work.tile_id is not None
        owner = self.slots[work.slot] if work.slot is not None else None
        worker = owner.info if owner is not None else None
        if owner is not None:
            # Wait for Ray to restart the actor (or learn it is gone) before giving it another tile.
            owner.state, owner.tile_id, owner.ping_at = "starting", None, time.time()
        cancelled = isinstance(err, ray.exceptions.TaskCancelledError)
        kind: Outcome = "interrupted" if cancelled else "worker_died"
        self.failed(work.tile_id, work.submitted, time.time(), worker, f"worker died: {reason}", False, kind)

    def slot_info(self, index: int | None) -> WorkerInfo | None:
        return self.slots[index].info if index is not None and index < len(self.slots) else None
