"""What runs on the Ray workers: the ingest task, the fit actor, the mosaic tasks.

Only store URLs, tile references and small frozen dataclasses go in and come out: a tile's arrays
(hundreds of MB) are read and written by the worker straight from and to the store. A stage's own error
on bad input (a :class:`DeclouderError`) comes back as a *permanent* failure, since retrying the same input
fails the same way; anything else comes back as a transient failure the driver may retry. A worker that
dies (OOM kill, preemption, node loss) comes back as a Ray error the driver sees on the future.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from pydantic_core import to_jsonable_python

from campaign.ledger import Stage
from tiler.errors import CorruptChunkError, DeclouderError
from tiler.grid import TileRef

#: Longest error text kept in the ledger: enough for the message and the frame that raised it.
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class WorkerInfo:
    """Who ran a piece of work: enough to audit GPU pinning and to find the process again."""

    name: str
    node_id: str
    pid: int
    host: str
    gpu_ids: tuple[str, ...] = ()
    cuda_visible_devices: str | None = None
    gpu_share: float = 0.0


@dataclass(frozen=True)
class StageOutcome:
    """The result of one stage on one tile, as the worker saw it (times are the worker's clock)."""

    tile_id: str
    stage: Stage
    started: float
    ended: float
    worker: WorkerInfo
    error: str | None = None
    permanent: bool = False
    summary: Mapping[str, Any] = field(default_factory=dict)
    device: str | None = None
    #: The search found no Sentinel-2 data over the tile (sea, outside every footprint): not a failure.
    empty: bool = False
    #: The stage's input store is corrupt (tiler.errors.CorruptChunkError): ingest the tile again.
    reingest: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class FitOptions:
    """The options every fit of a campaign shares (fit.fit_tile's keyword arguments)."""

    preset: str
    input: str
    device: str
    seed: int
    vgg_weights: str | None
    storage_options: Mapping[str, Any] | None = None
    #: Save every fit's weights beside its store, so that its neighbours can start from them.
    save_weights: bool = False


def current_worker(name: str, gpu_share: float = 0.0) -> WorkerInfo:
    import ray

    context = ray.get_runtime_context()
    gpu_ids = tuple(str(g) for g in context.get_accelerator_ids().get("GPU", []))
    return WorkerInfo(
        name=name,
        node_id=context.get_node_id(),
        pid=os.getpid(),
        host=socket.gethostname(),
        gpu_ids=gpu_ids,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        gpu_share=gpu_share,
    )


def summarize(result: Any) -> dict[str, Any]:
    """A stage's small result dataclass as a JSON-able dict for the ledger: its scalars, and the length
    of its lists (an ingest's per-date table belongs in the tile store, not in every ledger record)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    if not isinstance(result, Mapping):
        return {}
    summary: dict[str, Any] = {}
    for key, value in to_jsonable_python(result, fallback=str).items():
        if isinstance(value, list | tuple):
            summary[f"n_{key}"] = len(value)
        elif not isinstance(value, dict):
            summary[key] = value
    return summary


def is_permanent(err: BaseException) -> bool:
    """Bad input (retrying the same input fails the same way), as opposed to I/O trouble that may pass.

    Every stage raises a :class:`DeclouderError` on bad input; the ingest stage's catalogue and asset
    read errors are DeclouderErrors too, but they come from the network, after its own retries: a later
    attempt may well succeed.
    """
    from fit.errors import WarmStartError
    from ingest.errors import AssetReadError, CatalogError

    # A neighbour's unusable weights are not this tile's fault: the driver retries it from scratch.
    # A corrupt input store is not the tile's fault either: ingesting it again mends it.
    passing = (CatalogError, AssetReadError, WarmStartError, CorruptChunkError)
    return isinstance(err, DeclouderError) and not isinstance(err, passing)


def _in_chain(err: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``err`` or the first exception it was raised from (or while handling) that is a ``kind``."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _describe(err: BaseException) -> str:
    if isinstance(err, DeclouderError):
        return str(err)[:MAX_ERROR_CHARS]
    frame = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" (at {frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{type(err).__name__}: {err}{where}"[:MAX_ERROR_CHARS]


def run_stage(tile_id: str, stage: Stage, worker: WorkerInfo, work: Callable[[], Any]) -> StageOutcome:
    """Run one stage's function and turn what happens into a :class:`StageOutcome`."""
    started = time.time()
    try:
        result = work()
    except Exception as err:  # noqa: BLE001  (the worker boundary: every failure becomes a ledger entry)
        from ingest.errors import NoS2ItemsError

        corrupt = _in_chain(err, CorruptChunkError)
        return StageOutcome(
            tile_id=tile_id,
            stage=stage,
            started=started,
            ended=time.time(),
            worker=worker,
            error=_describe(corrupt or err),
            permanent=corrupt is None and is_permanent(err),
            empty=stage == Stage.INGEST and isinstance(err, NoS2ItemsError),
            reingest=corrupt is not None and stage == Stage.FIT,
        )
    summary = summarize(result)
    return StageOutcome(
        tile_id=tile_id,
        stage=stage,
        started=started,
        ended=time.time(),
        worker=worker,
        summary=summary,
        device=str(summary["device"]) if "device" in summary else None,
    )


def ingest_one(
    tile: TileRef, out_url: str, ingest_config: Any, storage_options: Mapping[str, Any] | None
) -> StageOutcome:
    """Ray task: ingest one tile into ``out_url`` (replacing any partial store a dead attempt left)."""
    from ingest import ingest_tile

    worker = current_worker(f"ingest-{os.getpid()}")
    outcome = run_stage(
        tile.tile_id,
        Stage.INGEST,
        worker,
        lambda: ingest_tile(tile, out_url, ingest_config, storage_options=storage_options, overwrite=True),
    )
    freeze_import_garbage()
    return outcome


@functools.cache
def freeze_import_garbage() -> None:
    """Once per worker process, after its first ingest (when the ingest's lazy imports are done): move
    every object alive now (modules, classes, functions of xarray, zarr, pandas, dask, rasterio ...) out
    of reach of Python's full garbage collections, which otherwise walk them all again and again: ~40 ms
    an ingest of bench/ingest.py's tile, ~1 ms after this (docs/ingest.md). A setting of the process,
    so it is made here, by the worker that owns it, and never by the ingest library."""
    gc.collect()
    gc.freeze()


class FitWorker:
    """Ray actor: holds its share of one GPU (Ray sets CUDA_VISIBLE_DEVICES) and fits one tile at a time."""

    def __init__(self, name: str, options: FitOptions, gpu_share: float) -> None:
        # Import the fit stage (torch) once per actor, not once per tile.
        import fit

        self._fit_tile = fit.fit_tile
        self._name = name
        self._options = options
        self._gpu_share = gpu_share

    def ready(self) -> WorkerInfo:
        """Returns once the actor is up (also after a restart): who and where it is."""
        return current_worker(self._name, self._gpu_share)

    def fit(self, tile_id: str, in_url: str, out_url: str, init_weights: str | None = None) -> StageOutcome:
        """Fit one tile; ``init_weights``: a fitted neighbour's weights to start from (warm start)."""
        opts = self._options
        worker = current_worker(self._name, self._gpu_share)
        return run_stage(
            tile_id,
            Stage.FIT,
            worker,
            lambda: self._fit_tile(
                in_url,
                out_url,
                preset=opts.preset,
                input=opts.input,
                device=opts.device,
                seed=opts.seed,
                overwrite=True,
                storage_options=opts.storage_options,
                vgg_weights=opts.vgg_weights,
                init_weights=init_weights,
                save_weights=opts.save_weights,
            ),
        )


@dataclass(frozen=True)
class MosaicGridSpec:
    """The tile grid a campaign's mosaics are built on (tiler.grid geometry)."""

    size: tuple[int, int]
    overlap: int
    resolution: float


def mosaic_template(
    mosaic_url: str,
    zone: str,
    keys: tuple[str, ...],
    times: tuple[Any, ...],
    bands: tuple[str, ...],
    grid: MosaicGridSpec,
    storage_options: Mapping[str, Any] | None,
    sigma: bool = False,
    cadence: str | None = None,
) -> StageOutcome:
    """Ray task: write (or keep) a zone's mosaic template from the plan, reading no fitted tile; with
    ``sigma`` a σ variable, with ``cadence`` a calendar store beside it (tiler.mosaic.init_mosaic_template).

    ``summary['fresh']``: no region of an earlier run is kept, so every region must be written. A template
    that matches (same cells, dates and bands: a rerun of the same campaign) is kept with its regions; one
    that does not is replaced.
    """
    from tiler.errors import OutputExistsError
    from tiler.mosaic import init_mosaic_template
    from tiler.store import tile_status

    def work() -> dict[str, Any]:
        missing = tile_status(mosaic_url, storage_options) == "missing"
        init = functools.partial(
            init_mosaic_template,
            mosaic_url,
            keys,
            times,
            bands,
            size=grid.size,
            overlap=grid.overlap,
            resolution=grid.resolution,
            storage_options=storage_options,
            sigma=sigma,
            cadence=cadence,
        )
        try:
            init(resume=True)
            return {"fresh": missing}
        except OutputExistsError:
            init(overwrite=True)
            return {"fresh": True}

    return run_stage(zone, Stage.MOSAIC, current_worker(f"mosaic-{os.getpid()}"), work)


def mosaic_region(
    mosaic_url: str,
    key: str,
    contributors: Mapping[str, str],
    overwrite: bool,
    storage_options: Mapping[str, Any] | None,
) -> StageOutcome:
    """Ray task: blend and write the cell of tile ``key`` from the (up to four) fitted tiles reaching it."""
    from tiler.mosaic import write_mosaic_region

    return run_stage(
        key,
        Stage.MOSAIC,
        current_worker(f"mosaic-{os.getpid()}"),
        lambda: write_mosaic_region(
            mosaic_url,
            key,
            contributors,
            storage_options=storage_options,
            resume=not overwrite,
            overwrite=overwrite,
        ),
    )


def mosaic_finalize(mosaic_url: str, zone: str, storage_options: Mapping[str, Any] | None) -> StageOutcome:
    """Ray task: check every region of a zone's mosaic is written and mark it complete."""
    from tiler.mosaic import finalize_mosaic

    return run_stage(
        zone,
        Stage.MOSAIC,
        current_worker(f"mosaic-{os.getpid()}"),
        lambda: {"url": finalize_mosaic(mosaic_url, storage_options=storage_options).url},
    )


class _OutputOptions(TypedDict):
    """Where the outputs read and write, the same for every kind (keyword arguments of tiler.outputs)."""

    storage_options: Mapping[str, Any] | None
    out_storage_options: Mapping[str, Any] | None
    overwrite: bool


def mosaic_outputs(
    mosaic_url: str,
    zone: str,
    out_dir: str,
    kinds: tuple[str, ...],
    storage_options: Mapping[str, Any] | None,
) -> StageOutcome:
    """Ray task: write a finished mosaic's quicklooks, COGs and STAC collection under ``out_dir`` (the
    σ files too when it has σ), and the same for its calendar, if any, under ``out_dir/calendar``.

    ``summary`` maps each kind written to its folder (``stac``: the collection's URL); a calendar adds
    ``calendar`` (its store) and ``calendar_<kind>``.
    """
    from tiler import outputs
    from tiler.mosaic import mosaic_info

    def work() -> dict[str, str]:
        options: _OutputOptions = {
            "storage_options": storage_options,
            "out_storage_options": storage_options,
            "overwrite": True,
        }
        cogs, looks, stac = "cogs" in kinds, "quicklooks" in kinds, "stac" in kinds
        written = outputs.write_outputs(
            mosaic_url, out_dir, cogs=cogs, quicklooks=looks, stac=stac, **options
        )
        calendar = mosaic_info(mosaic_url, storage_options=storage_options).calendar_url
        if calendar is not None:
            written["calendar"] = calendar
            extra = outputs.write_outputs(
                calendar, f"{out_dir}/calendar", cogs=cogs, quicklooks=looks, stac=stac, **options
            )
            written.update({f"calendar_{kind}": where for kind, where in extra.items()})
        return written

    return run_stage(zone, Stage.MOSAIC, current_worker(f"outputs-{os.getpid()}"), work)


@dataclass(frozen=True)
class StageWorkers:
    """What a campaign runs on Ray: the task functions and the fit actor class (a benchmark may swap in
    labelled stand-ins; a campaign always runs these)."""

    ingest: Callable[..., StageOutcome] = ingest_one
    fit_actor: type = FitWorker
    mosaic_template: Callable[..., StageOutcome] = mosaic_template
    mosaic_region: Callable[..., StageOutcome] = mosaic_region
    mosaic_finalize: Callable[..., StageOutcome] = mosaic_finalize
    mosaic_outputs: Callable[..., StageOutcome] = mosaic_outputs
