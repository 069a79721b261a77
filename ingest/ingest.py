"""Ingest one tile: search -> filter -> pair S1 -> read S2 days and S1 passes -> masks -> tile store.

Nothing is written unless at least one Sentinel-2 date has valid pixels over the tile; the store is
written through :func:`tiler.store.write_tile`, which marks it complete only after its last chunk.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pystac

from ingest.catalogs import PLANETARY_COMPUTER, CatalogProfile, check_profile, detect_profile
from ingest.config import IngestConfig, TileTarget, lonlat_bounds, validate_target
from ingest.errors import NoS2ItemsError
from ingest.load import Grid, Retry, S2Stack, load_s1_passes, load_s2_days
from ingest.masks import SCL_SNOW, dilate, fallback_mask, refine_bright, scl_to_mask
from ingest.pairing import Pairing, S1Acquisition, group_acquisitions, pair_s1, solar_day
from ingest.search import ItemSource, item_time, open_source
from ingest.write import TileWriter
from tiler.errors import OutputExistsError
from tiler.store import MASK, POLARIZATIONS, S1, S2, MaskClass, make_tile, tile_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """One step of an ingest: ``step`` is search, s2, masks, s1 or write; ``done`` of ``total`` units."""

    step: str
    done: int
    total: int
    info: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class SkippedItem:
    """An item found by the search but not used, and why."""

    item_id: str
    collection: str
    reason: str


@dataclass(frozen=True)
class DateSummary:
    """One date of the tile."""

    time: np.datetime64
    items: tuple[str, ...]
    item_cloud_cover: float | None  # the items' own eo:cloud_cover (whole granule), mean
    tile_cloud_pct: float  # cloud + shadow share of the tile's valid pixels, after masking
    valid_pct: float  # share of the tile with data
    boa_offset: int  # DN removed from this date's reflectances
    s1_time: np.datetime64  # NaT where unpaired
    s1_gap_days: float  # S1 minus S2 time in days; NaN where unpaired
    s1_items: tuple[str, ...]


@dataclass(frozen=True)
class IngestSummary:
    """What an ingest wrote and why; ``table()`` prints it."""

    tile_id: str
    out_url: str
    catalog: str
    profile: str
    s1_orbit: str | None
    dates: tuple[DateSummary, ...]
    skipped: tuple[SkippedItem, ...]
    warnings: tuple[str, ...]
    seconds: float

    @property
    def n_paired(self) -> int:
        return sum(1 for d in self.dates if not np.isnat(d.s1_time))

    def table(self) -> str:
        """Plain-text report: one line per date (cloud cover, S1 pairing gap), then skipped items."""
        lines = [
            f"tile {self.tile_id} -> {self.out_url}",
            f"catalogue {self.catalog} ({self.profile}); S1 orbit {self.s1_orbit or 'none'}; "
            f"{len(self.dates)} dates, {self.n_paired} paired with S1; {self.seconds:.1f} s",
            f"{'date':<20} {'items':>5} {'item cc%':>8} {'tile cloud%':>11} {'valid%':>6} "
            f"{'offset':>6} {'S1 time':<20} {'gap d':>6}",
        ]
        for d in self.dates:
            cc = "-" if d.item_cloud_cover is None else f"{d.item_cloud_cover:.1f}"
            s1 = "-" if np.isnat(d.s1_time) else str(d.s1_time.astype("datetime64[s]"))
            gap = "-" if math.isnan(d.s1_gap_days) else f"{d.s1_gap_days:+.2f}"
            lines.append(
                f"{d.time.astype('datetime64[s]')!s:<20} {len(d.items):>5} {cc:>8} "
                f"{d.tile_cloud_pct:>11.1f} {d.valid_pct:>6.1f} {d.boa_offset:>6} {s1:<20} {gap:>6}"
            )
        for s in self.skipped:
            lines.append(f"skipped {s.collection} item {s.item_id}: {s.reason}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


@dataclass
class _Report:
    """Mutable notes collected while one ingest runs (local to the call)."""

    skipped: list[SkippedItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def skip(self, item: pystac.Item, reason: str) -> None:
        self.skipped.append(SkippedItem(item.id, item.collection_id or "?", reason))
        log.info("skipping item %s: %s", item.id, reason)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)


def ingest_tile(
    tile: TileTarget,
    out_url: str,
    config: IngestConfig,
    *,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    searcher: ItemSource | None = None,
    s1_searcher: ItemSource | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> IngestSummary:
    """Search, pair, read and mask one tile's S1/S2 time series and write it to ``out_url``.

    ``searcher`` / ``s1_searcher`` replace the catalogue named in ``config`` (e.g. an ItemCollection
    searched once per region); ``s1_searcher`` defaults to ``searcher`` when ``config.s1_catalog`` is
    unset. Raises :class:`NoS2ItemsError` (nothing written) when no S2 date has data over the tile.
    """
    started = time.perf_counter()
    notify = _serialized(progress)
    status = _refuse_early(tile, out_url, storage_options, overwrite)
    report = _Report()
    grid = Grid.of(tile)
    bbox = lonlat_bounds(tile)
    longitude = (bbox[0] + bbox[2]) / 2
    reads = Retry(config.retries, config.backoff_s, sleep)
    s2_source = searcher or open_source(
        config.catalog, retries=config.retries, backoff_s=config.backoff_s, timeout_s=config.timeout_s
    )
    s1_source = s1_searcher or (
        s2_source
        if config.s1_catalog is None
        else open_source(
            config.s1_source, retries=config.retries, backoff_s=config.backoff_s, timeout_s=config.timeout_s
        )
    )

    profile, days = _search_s2(tile, s2_source, bbox, longitude, config, report, notify)
    s1_profile, s1_collection, acquisitions = _search_s1(s1_source, bbox, longitude, config, report, notify)
    days, stack = _read_s2(tile, days, grid, profile, config, reads, report, notify)
    times = np.array([_day_time(day) for day in days], dtype="datetime64[ns]")
    pairing = pair_s1(times, acquisitions, window_days=config.s1_window_days, orbit=config.s1_orbit)
    writer = TileWriter(out_url, storage_options=storage_options, existing=status, name=tile.tile_id)
    # The store is written while the rest runs (one writer thread, calls in order), but a store that is
    # complete (or built outside declouder) is replaced only once the whole tile is in memory, so an
    # ingest that fails leaves it as it was.
    early = status in ("missing", "writing")
    skeleton = make_tile(
        s2=stack.reflectance,
        # Placeholders (views, no memory): only their shapes and dtypes are used by begin().
        s1=np.broadcast_to(np.float32(np.nan), (times.size, len(POLARIZATIONS), *grid.shape)),
        mask=np.broadcast_to(np.uint8(MaskClass.NODATA), (times.size, *grid.shape)),
        time=times,
        s1_time=pairing.s1_time,
        bands=config.bands,
        x=grid.x,
        y=grid.y,
        epsg=grid.epsg,
        tile_id=tile.tile_id,
        item_ids=[",".join(i.id for i in day) for day in days],
    )
    writes: list[Future[Any]] = []
    with (
        ThreadPoolExecutor(max_workers=1) as s1_reader,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-writer") as write_thread,
    ):

        def start_writing() -> None:
            notify(ProgressEvent("write", 0, 1, out_url))
            writes.append(write_thread.submit(writer.begin, skeleton))
            writes.append(write_thread.submit(writer.write, S2, stack.reflectance))

        try:
            # S1 is read (its own reader threads) while the masks are computed here: neither needs the
            # other.
            s1_future = s1_reader.submit(
                _read_s1, pairing, acquisitions, grid, s1_profile, config, report, notify, reads
            )
            # With SCL masks, s2 is final as read (the fallback mask zeroes incomplete pixels later).
            if early and config.cloud_mask == "scl":
                start_writing()
            mask = _masks(stack, config)
            notify(ProgressEvent("masks", 1, 1, f"{len(days)} dates"))
            if early and config.cloud_mask != "scl":
                start_writing()
            if early:
                writes.append(write_thread.submit(writer.write, MASK, mask))
            s1, pairing = s1_future.result()
            if not early:
                start_writing()
                writes.append(write_thread.submit(writer.write, MASK, mask))
            writes.append(write_thread.submit(writer.write, S1, s1))
            _warn_without_s1(tile, pairing, acquisitions, s1_source, s1_collection, config, report)
            attrs = {
                **skeleton.attrs,
                **_attrs(config, profile, s1_collection, pairing, acquisitions, days),
            }
            writes.append(write_thread.submit(writer.complete, pairing.s1_time, attrs))
            for done in writes:
                done.result()
        except BaseException:
            for pending in writes:
                pending.cancel()
            wait(writes)
            # A read or mask that failed after the write started: remove what was started (nothing is
            # written, as when it fails before). A failed write leaves its store as write_tile's does:
            # marked writing, so it never reads as complete.
            if not any(f.done() and not f.cancelled() and f.exception() is not None for f in writes):
                writer.abandon()
            raise
    notify(ProgressEvent("write", 1, 1, out_url))
    return IngestSummary(
        tile_id=tile.tile_id,
        out_url=out_url,
        catalog=s2_source.description,
        profile=profile.name,
        s1_orbit=pairing.orbit,
        dates=_date_summaries(days, times, mask, profile, pairing, acquisitions),
        skipped=tuple(report.skipped),
        warnings=tuple(report.warnings),
        seconds=time.perf_counter() - started,
    )


def _serialized(progress: ProgressCallback | None) -> ProgressCallback:
    """``progress`` behind a lock: the S1 step reports from its reader thread while the masks run, and
    callbacks never run two at a time."""
    if progress is None:
        return lambda event: None
    lock = threading.Lock()

    def notify(event: ProgressEvent) -> None:
        with lock:
            progress(event)

    return notify


def _refuse_early(
    tile: TileTarget, out_url: str, storage_options: Mapping[str, Any] | None, overwrite: bool
) -> str:
    """Bad bounds and an existing output are refused before any request; the output's status."""
    validate_target(tile)
    status = tile_status(out_url, storage_options)
    if status != "missing" and not overwrite:
        raise OutputExistsError(
            f"tile {tile.tile_id!r}: output {out_url!r} already exists ({status}); pass overwrite=True "
            "(CLI: --overwrite) to replace it"
        )
    return status


def _search_s2(
    tile: TileTarget,
    source: ItemSource,
    bbox: tuple[float, float, float, float],
    longitude: float,
    config: IngestConfig,
    report: _Report,
    notify: ProgressCallback,
) -> tuple[CatalogProfile, list[list[pystac.Item]]]:
    """S2 items of the tile and period, the catalogue's profile, usable items grouped into days."""
    named = config.resolved_profile()
    collection = config.s2_collection_for(named)
    notify(ProgressEvent("search", 0, 2, f"{collection} in {source.description}"))
    found = source.search(collection, bbox, config.start, config.end)
    if not found:
        raise NoS2ItemsError(
            f"tile {tile.tile_id!r}: no {collection} items in {source.description} between "
            f"{config.start} and {config.end}; widen the period or check the collection and bounds "
            "(nothing was written)"
        )
    profile = named or detect_profile(found, config.bands)
    check_profile(profile, found, config.bands)
    items = _usable_s2(found, profile, config, report)
    if not items:
        raise NoS2ItemsError(
            f"tile {tile.tile_id!r}: all {len(found)} {collection} items were skipped ("
            + "; ".join(f"{s.item_id}: {s.reason}" for s in report.skipped[:5])
            + "); raise --max-cloud or widen the period (nothing was written)"
        )
    return profile, _group_days(items, profile, longitude)


def _search_s1(
    source: ItemSource,
    bbox: tuple[float, float, float, float],
    longitude: float,
    config: IngestConfig,
    report: _Report,
    notify: ProgressCallback,
) -> tuple[CatalogProfile, str, list[S1Acquisition]]:
    """S1 passes around the period (widened by the pairing window), in the S1 catalogue's conventions."""
    named = config.resolved_profile(s1=True)
    profile = named or PLANETARY_COMPUTER
    collection = config.s1_collection_for(named)
    notify(ProgressEvent("search", 1, 2, f"{collection} in {source.description}"))
    margin = dt.timedelta(days=math.ceil(config.s1_window_days))
    found = source.search(collection, bbox, config.start - margin, config.end + margin)
    items = [profile.sign(i) for i in _usable_s1(found, profile, report)]
    notify(ProgressEvent("search", 2, 2, f"{len(items)} S1 items"))
    return profile, collection, group_acquisitions(items, longitude=longitude)


def _read_s2(
    tile: TileTarget,
    days: list[list[pystac.Item]],
    grid: Grid,
    profile: CatalogProfile,
    config: IngestConfig,
    reads: Retry,
    report: _Report,
    notify: ProgressCallback,
) -> tuple[list[list[pystac.Item]], S2Stack]:
    """Read the days (mosaicked, offset removed); drop days without data over the tile."""
    stack = load_s2_days(
        days,
        grid,
        config.bands,
        profile,
        with_scl=config.cloud_mask == "scl",
        resampling=config.resampling,
        retry=reads,
        on_batch=lambda done, total: notify(ProgressEvent("s2", done, total, f"{len(days)} dates")),
        # The fallback cloud test sees the bands a pixel has before incomplete pixels are zeroed.
        zero_incomplete=config.cloud_mask == "scl",
    )
    has_data = stack.valid.any(axis=(1, 2))
    for k in np.flatnonzero(~has_data):
        for item in days[k]:
            report.skip(item, "no valid pixel over the tile (its footprint misses the tile)")
    if not has_data.any():
        raise NoS2ItemsError(
            f"tile {tile.tile_id!r}: {sum(map(len, days))} S2 items were found but none has valid pixels "
            "over the tile; check the bounds and their EPSG (nothing was written)"
        )
    if has_data.all():  # the usual case: no copy
        return days, stack
    keep = np.flatnonzero(has_data)
    kept = S2Stack(
        reflectance=stack.reflectance[keep],
        scl=None if stack.scl is None else stack.scl[keep],
        valid=stack.valid[keep],
    )
    return [days[k] for k in keep], kept


def _warn_without_s1(
    tile: TileTarget,
    pairing: Pairing,
    acquisitions: Sequence[S1Acquisition],
    source: ItemSource,
    collection: str,
    config: IngestConfig,
    report: _Report,
) -> None:
    if not acquisitions:
        report.warn(
            f"tile {tile.tile_id!r}: no Sentinel-1 item in {source.description} ({collection}); "
            "s1 is all NaN: fit this tile with noise input (declouder fit --input noise)"
        )
    elif pairing.n_paired == 0:
        report.warn(
            f"tile {tile.tile_id!r}: no Sentinel-1 pass within ±{config.s1_window_days:g} days of any "
            "S2 date; s1 is all NaN (widen --s1-window or fit with noise input)"
        )


def _usable_s2(
    found: Sequence[pystac.Item], profile: CatalogProfile, config: IngestConfig, report: _Report
) -> list[pystac.Item]:
    """Items with every needed asset and cloud cover within ``max_cloud``, signed for reading."""
    needed = profile.s2_asset_keys(config.bands, with_scl=config.cloud_mask == "scl")
    usable = []
    for item in found:
        missing = [key for key in needed if key not in item.assets]
        if missing:
            report.skip(item, f"missing asset(s) {', '.join(missing)}")
            continue
        cover = item.properties.get(profile.cloud_cover_property)
        if cover is not None and float(cover) > config.max_cloud:
            report.skip(
                item, f"{profile.cloud_cover_property} {float(cover):.1f} > max_cloud {config.max_cloud:g}"
            )
            continue
        usable.append(profile.sign(item))
    return usable


def _usable_s1(found: Sequence[pystac.Item], profile: CatalogProfile, report: _Report) -> list[pystac.Item]:
    usable = []
    for item in found:
        missing = [profile.s1_assets[p] for p in POLARIZATIONS if profile.s1_assets[p] not in item.assets]
        if missing:
            report.skip(item, f"missing asset(s) {', '.join(missing)} (dual-pol VV+VH needed)")
        else:
            usable.append(item)
    return usable


def _group_days(
    items: Sequence[pystac.Item], profile: CatalogProfile, longitude: float
) -> list[list[pystac.Item]]:
    """Items grouped by solar day at the tile, by time; within a day the least cloudy first (it wins
    where granules overlap)."""
    days: dict[dt.date, list[pystac.Item]] = {}
    for item in items:
        days.setdefault(solar_day(item_time(item), longitude), []).append(item)

    def preference(item: pystac.Item) -> tuple[float, str]:
        cover = item.properties.get(profile.cloud_cover_property)
        return (float(cover) if cover is not None else math.inf, item.id)

    return [sorted(days[d], key=preference) for d in sorted(days)]


def _day_time(day: Sequence[pystac.Item]) -> np.datetime64:
    return np.datetime64(min(item_time(i) for i in day).replace(tzinfo=None), "ns")


def _masks(stack: S2Stack, config: IngestConfig) -> np.ndarray:
    """The (time, y, x) mask of the stack; its reflectance ends 0 in every band where ``valid`` is False."""
    snow = None
    if config.cloud_mask == "scl" and stack.scl is not None:
        mask = scl_to_mask(stack.scl)
        snow = stack.scl == SCL_SNOW
    else:
        mask = fallback_mask(stack.reflectance, config.bands)
        # Pixels without a complete set of bands carry no data in any band.
        np.multiply(stack.reflectance, stack.valid[:, None], out=stack.reflectance)
    mask[~stack.valid] = MaskClass.NODATA
    if config.refine_bright:
        mask = refine_bright(mask, stack.reflectance, config.bands, snow=snow)
    return dilate(mask, config.mask_dilation_px)


def _read_s1(
    pairing: Pairing,
    acquisitions: Sequence[S1Acquisition],
    grid: Grid,
    profile: CatalogProfile,
    config: IngestConfig,
    report: _Report,
    notify: ProgressCallback,
    reads: Retry,
) -> tuple[np.ndarray, Pairing]:
    """(time, polarization, y, x) dB for the paired passes; a pass with no data over the tile is unpaired."""
    n = pairing.index.size
    s1 = np.empty((n, len(POLARIZATIONS), *grid.shape), dtype=np.float32)
    wanted = sorted({int(j) for j in pairing.index if j >= 0})
    # Each pass is read straight into the first date it is paired with, then copied to the others.
    first_date = {j: int(np.flatnonzero(pairing.index == j)[0]) for j in wanted}
    passes = load_s1_passes(
        [acquisitions[j].items for j in wanted],
        grid,
        profile,
        resampling=config.resampling,
        retry=reads,
        on_batch=lambda done, total: notify(ProgressEvent("s1", done, total, f"{len(wanted)} passes")),
        out=[s1[first_date[j]] for j in wanted],
    )
    loaded = dict(zip(wanted, passes, strict=True))
    index = pairing.index.copy()
    for j, data in loaded.items():
        if not np.isfinite(data).any():
            report.warn(
                f"S1 pass {acquisitions[j].item_ids} has no data over the tile; its dates stay unpaired"
            )
            index[index == j] = -1
    for i, j in enumerate(index):
        if j < 0:
            s1[i] = np.nan
        elif i != first_date[int(j)]:
            s1[i] = loaded[int(j)]
    s1_time = np.where(index >= 0, pairing.s1_time, np.datetime64("NaT", "ns"))
    gap = np.where(index >= 0, pairing.gap_days, np.nan)
    return s1, Pairing(orbit=pairing.orbit, index=index, s1_time=s1_time, gap_days=gap)


def _attrs(
    config: IngestConfig,
    profile: CatalogProfile,
    s1_collection: str,
    pairing: Pairing,
    acquisitions: Sequence[S1Acquisition],
    days: Sequence[Sequence[pystac.Item]],
) -> dict[str, Any]:
    settings = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in asdict(config).items()}
    return {
        "source": "declouder ingest",
        "catalog_profile": profile.name,
        "s2_collection": config.s2_collection_for(profile),
        "s1_collection": s1_collection,
        "s1_orbit": pairing.orbit or "none",
        "s1_item_ids": json.dumps([list(acquisitions[j].item_ids) if j >= 0 else [] for j in pairing.index]),
        "boa_offsets": json.dumps([[profile.boa_offset(i)[0] for i in day] for day in days]),
        "ingest_config": json.dumps(settings, default=list),
    }


def _date_summaries(
    days: Sequence[Sequence[pystac.Item]],
    times: np.ndarray,
    mask: np.ndarray,
    profile: CatalogProfile,
    pairing: Pairing,
    acquisitions: Sequence[S1Acquisition],
) -> tuple[DateSummary, ...]:
    out = []
    for k, day in enumerate(days):
        valid = mask[k] != MaskClass.NODATA
        cloudy = (mask[k] == MaskClass.CLOUD) | (mask[k] == MaskClass.SHADOW)
        covers = [float(c) for i in day if (c := i.properties.get(profile.cloud_cover_property)) is not None]
        j = int(pairing.index[k])
        out.append(
            DateSummary(
                time=times[k],
                items=tuple(i.id for i in day),
                item_cloud_cover=float(np.mean(covers)) if covers else None,
                tile_cloud_pct=float(cloudy[valid].mean() * 100) if valid.any() else 0.0,
                valid_pct=float(valid.mean() * 100),
                boa_offset=max(profile.boa_offset(i)[0] for i in day),
                s1_time=pairing.s1_time[k],
                s1_gap_days=float(pairing.gap_days[k]),
                s1_items=acquisitions[j].item_ids if j >= 0 else (),
            )
        )
    return tuple(out)
