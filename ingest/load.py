"""Read items onto the tile grid with stackstac: S2 days (mosaicked, BOA offset removed) and S1 passes (dB).

The grid is the tile's exactly: its EPSG, bounds and resolution, pixel centres as coordinates. Bands
coarser than the grid are resampled with ``IngestConfig.resampling`` (default nearest: every 10 m pixel
keeps the exact value of the 20 m / 60 m pixel it lies in, so reflectances stay measured values and
cloud edges are not smeared into clear pixels; SCL is always read with nearest, being a class map).

Assets already on the tile's grid (its EPSG, pixel edges on the grid's, a resolution that is a whole
multiple of the grid's: every Sentinel-2 band of an MGRS tile in its own UTM zone, RTC S1 on the same
10 m grid) are read directly: one rasterio windowed read per asset of just the COG blocks under the
tile, at native resolution, then each source pixel replicated onto the 10 m pixels it covers. That is
exactly what nearest resampling gives for such grids, without GDAL's warper and without a dask graph:
measured in ``bench/ingest.py``. Anything else (another CRS, an offset grid, bilinear of a coarser
band) goes through stackstac's warped reads.

Reads go through GDAL with its own HTTP retries (GDAL_HTTP_MAX_RETRY / GDAL_HTTP_RETRY_DELAY), and a
failed batch is retried here with exponential back-off; after that, :class:`AssetReadError` names the
asset and item. stackstac's default of turning HTTP 404 into no-data is switched off: a missing file
in a catalogue is an error to see, not a hole to fill silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pystac

from ingest.catalogs import POLARIZATIONS, CatalogProfile
from ingest.config import TileTarget, tile_shape
from ingest.errors import AssetReadError

log = logging.getLogger(__name__)

#: Threads reading assets at once. Reads are I/O-bound and GDAL releases the GIL while it waits, so
#: more threads than cores pay off on remote catalogues (one open costs ~100 ms of HTTP latency).
READ_THREADS = 16
#: Threads reading local files (no latency to hide: decoding is the work): one per core. 16 threads on
#: this 2-core machine burned 1.3–1.8× the CPU of 1–2 threads for the same reads (bench/ingest.py's
#: files, measured with time.process_time).
LOCAL_READ_THREADS = os.cpu_count() or 1
#: Items read by one dask computation: enough to keep READ_THREADS busy across dates, few enough to bound
#: memory (16 items × 13 assets × 384×768 × 2 B ≈ 120 MB).
READ_BATCH_ITEMS = 16
#: Chunk of one asset read, in pixels: a whole 384×768 tile in one request per asset and item.
READ_CHUNK = 1024
#: Chunks of these errors are never turned into no-data (stackstac turns 404s into no-data by default).
NO_ERRORS_AS_NODATA: tuple[Exception, ...] = ()
_URL_IN_MESSAGE = re.compile(r"'([^']+)'")


@dataclass(frozen=True)
class Grid:
    """The tile's pixel grid."""

    epsg: int
    bounds: tuple[float, float, float, float]
    resolution: float
    shape: tuple[int, int]

    @classmethod
    def of(cls, tile: TileTarget) -> Grid:
        return cls(int(tile.epsg), tuple(map(float, tile.bounds)), float(tile.resolution), tile_shape(tile))  # type: ignore[arg-type]

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates."""
        return self.bounds[0] + (np.arange(self.shape[1]) + 0.5) * self.resolution

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates, north to south."""
        return self.bounds[3] - (np.arange(self.shape[0]) + 0.5) * self.resolution


def gdal_env(retries: int, backoff_s: float) -> Any:
    """stackstac's GDAL settings plus GDAL's own retries of transient HTTP errors (429, 5xx), with the
    same count and first delay as ours."""
    import stackstac

    return stackstac.DEFAULT_GDAL_ENV.updated(
        always={"GDAL_HTTP_MAX_RETRY": retries, "GDAL_HTTP_RETRY_DELAY": backoff_s}
    )


#: GDAL settings for local files: no sidecar-file lookups on open, and none of the HTTP settings;
#: without stackstac's VSI_CACHE, which only copies local reads once more (~10 % of the CPU of decoding
#: bench/ingest.py's 130 S2 COGs).
LOCAL_GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def local_gdal_env() -> Any:
    """:data:`LOCAL_GDAL_OPTIONS` as a stackstac layered environment (for the same reads one by one)."""
    from stackstac.rio_env import LayeredEnv

    return LayeredEnv(always={}, open=LOCAL_GDAL_OPTIONS)


@dataclass(frozen=True)
class Retry:
    """How failed reads are retried: ``retries`` more attempts, waiting ``backoff_s``, then twice that, ..."""

    retries: int
    backoff_s: float
    sleep: Callable[[float], None] = time.sleep


def _asset_of(url: str, items: Sequence[pystac.Item]) -> str:
    for item in items:
        for key, asset in item.assets.items():
            if asset.href == url:
                return f"asset {key!r} of item {item.id!r} ({url})"
    return f"asset {url}"


#: Largest misfit, in grid pixels, of an asset's pixel edges against the grid's that still counts as
#: aligned (float rounding of transforms written as decimal metres).
ALIGN_TOLERANCE_PX = 1e-6


class _NotAlignedError(Exception):
    """An asset whose pixels do not nest in the grid's: read it through the warper instead."""


def _aligned_offset(offset_px: float) -> int | None:
    """``offset_px`` (grid pixels) as a whole number, or None if the pixel edges do not line up."""
    whole = round(offset_px)
    return whole if abs(offset_px - whole) <= ALIGN_TOLERANCE_PX else None


def _is_nodata_fill(nodata: float, fill_value: float | int | np.floating[Any]) -> bool:
    """Whether the asset's nodata value is already the fill value (then nothing needs replacing)."""
    return bool(np.isnan(nodata) and np.isnan(fill_value)) or float(nodata) == float(fill_value)


def _read_aligned(
    href: str,
    grid: Grid,
    out: np.ndarray,
    *,
    fill_value: float | int | np.floating[Any],
    resampling: str,
    env: Any,
) -> None:
    """One asset into ``out`` (the grid's shape) by a windowed read at native resolution, each source
    pixel repeated over the grid pixels it covers; raises :class:`_NotAlignedError` if it can't be.

    Pixels outside the asset and the asset's own nodata become ``fill_value`` (as stackstac does).
    ``env`` is a layered GDAL environment entered around the open and the read; None when the caller's
    thread already runs in one.
    """
    import rasterio
    from rasterio.windows import Window

    opening = env.open if env is not None else contextlib.nullcontext()
    with opening, rasterio.open(href) as src:
        t = src.transform
        res = float(t.a)
        factor = round(res / grid.resolution)
        if (
            src.crs is None
            or src.crs.to_epsg() != grid.epsg
            or src.count < 1
            or t.b != 0
            or t.d != 0
            or abs(-t.e - res) > 1e-9 * res
            or factor < 1
            or abs(res - factor * grid.resolution) > ALIGN_TOLERANCE_PX * grid.resolution
            or (factor > 1 and resampling != "nearest")
        ):
            raise _NotAlignedError(href)
        # Grid pixel j lies in source pixel (off_x + j) // factor (edges on the grid: no half pixels).
        off_x = _aligned_offset((grid.bounds[0] - t.c) / grid.resolution)
        off_y = _aligned_offset((t.f - grid.bounds[3]) / grid.resolution)
        if off_x is None or off_y is None:
            raise _NotAlignedError(href)
        height, width = grid.shape
        c0, c1 = max(off_x // factor, 0), min((off_x + width - 1) // factor + 1, src.width)
        r0, r1 = max(off_y // factor, 0), min((off_y + height - 1) // factor + 1, src.height)
        # The grid pixels that source pixels [r0, r1) x [c0, c1) cover.
        j0, j1 = max(0, c0 * factor - off_x), min(width, c1 * factor - off_x)
        i0, i1 = max(0, r0 * factor - off_y), min(height, r1 * factor - off_y)
        if (i0, i1, j0, j1) != (0, height, 0, width):
            out[...] = fill_value
        if c0 >= c1 or r0 >= r1:
            return
        window = Window(c0, r0, c1 - c0, r1 - r0)
        dy, dx = off_y - r0 * factor, off_x - c0 * factor
        whole = (dy, dx) == (0, 0) and (i1 - i0) == (r1 - r0) * factor and (j1 - j0) == (c1 - c0) * factor
        if whole and factor == 1 and src.dtypes[0] == out.dtype:
            # Straight into the tile's array: no copy of the band (``out`` is a view of the final stack).
            with env.read if env is not None else contextlib.nullcontext():
                src.read(1, window=window, out=out[i0:i1, j0:j1])
            _nodata_to_fill(out[i0:i1, j0:j1], src.nodata, fill_value)
            return
        with env.read if env is not None else contextlib.nullcontext():
            data = src.read(1, window=window)
        if data.dtype == out.dtype:
            _nodata_to_fill(data, src.nodata, fill_value)  # a fresh array of the read: in place
        elif src.nodata is not None and not _is_nodata_fill(src.nodata, fill_value):
            missing = np.isnan(data) if np.isnan(src.nodata) else data == src.nodata
            data = np.where(missing, fill_value, data).astype(out.dtype, copy=False)
        # Each source row widened once (pixels repeated along x), then copied to the ``factor`` grid
        # rows it covers: contiguous copies, ~2× faster than repeating along both axes and copying.
        wide = data.repeat(factor, axis=1) if factor > 1 else data
        wide = wide[:, dx + j0 : dx + j1]
        region = out[i0:i1, j0:j1]
        for first in range(factor):  # region rows first, first + factor, ... take consecutive source rows
            rows = region[first::factor]
            row0 = (dy + i0 + first) // factor
            rows[...] = wide[row0 : row0 + rows.shape[0]]


def _nodata_to_fill(
    data: np.ndarray, nodata: float | None, fill_value: float | int | np.floating[Any]
) -> None:
    """The asset's own nodata value as ``fill_value``, in place."""
    if nodata is None or _is_nodata_fill(nodata, fill_value):
        return
    missing = np.isnan(data) if np.isnan(nodata) else data == nodata
    data[missing] = fill_value


def _is_remote(href: str) -> bool:
    """Whether ``href`` is fetched over a network (http(s), s3, gs, az, /vsicurl/ ...), not a local file."""
    return ("://" in href and not href.startswith("file://")) or href.startswith("/vsi")


@dataclass(frozen=True)
class AssetRead:
    """One asset of one item to read onto the grid into ``out`` (a (y, x) view, e.g. one band of one
    date of the tile's final array), then ``finish(out)`` in place, in the reader thread (BOA offset,
    dB), while other reads go on."""

    item: pystac.Item
    key: str
    out: np.ndarray
    resampling: str
    finish: Callable[[np.ndarray], None] | None = None

    @property
    def href(self) -> str:
        return str(self.item.assets[self.key].href)


def _read_all(
    reads: Sequence[AssetRead], grid: Grid, *, fill_value: float | int | np.floating[Any], env: Any
) -> bool:
    """Every read by a windowed read straight into its ``out``, READ_THREADS at a time
    (LOCAL_READ_THREADS for local files); False if any asset is not aligned with the grid."""
    import rasterio

    def one(r: AssetRead, env: Any) -> None:
        try:
            _read_aligned(r.href, grid, r.out, fill_value=fill_value, resampling=r.resampling, env=env)
        except (RuntimeError, OSError) as err:  # name the file: AssetReadError maps it to its item
            raise OSError(f"reading '{r.href}': {err}") from err
        if r.finish is not None:
            r.finish(r.out)

    pending = queue.SimpleQueue[AssetRead]()
    for r in reads:
        pending.put(r)

    def local(_: int) -> None:
        # One GDAL environment per thread for all the files it takes from the queue (entering one per
        # open and per read, and rasterio's default one per open outside any, costs Python time per
        # file); files are taken one at a time, so a thread the machine holds back delays no others.
        with rasterio.Env(**LOCAL_GDAL_OPTIONS):
            while True:
                try:
                    r = pending.get_nowait()
                except queue.Empty:
                    return
                one(r, None)

    if any(_is_remote(r.href) for r in reads):
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(reads) or 1)) as pool:
            try:
                list(pool.map(lambda r: one(r, env), reads))
            except _NotAlignedError:
                return False
        return True
    threads = min(LOCAL_READ_THREADS, len(reads) or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            list(pool.map(local, range(threads)))
        except _NotAlignedError:
            return False
    return True


def _read_direct(
    items: Sequence[pystac.Item],
    assets: Sequence[str],
    grid: Grid,
    *,
    dtype: np.dtype,
    fill_value: float | int | np.floating[Any],
    resampling: str,
    env: Any,
) -> np.ndarray | None:
    """(item, asset, y, x) by windowed reads; None if any asset is not aligned."""
    out = np.empty((len(items), len(assets), *grid.shape), dtype=dtype)
    reads = [
        AssetRead(item, key, out[k, a], resampling)
        for k, item in enumerate(items)
        for a, key in enumerate(assets)
    ]
    return out if _read_all(reads, grid, fill_value=fill_value, env=env) else None


def read_into(
    reads: Sequence[AssetRead], grid: Grid, *, fill_value: float | int | np.floating[Any], retry: Retry
) -> None:
    """Every read into its ``out``: directly (windowed reads at native resolution, replicated) when every
    asset is aligned with the grid, else all of them through stackstac's warped reads (one computation
    per resampling method). A failed read is retried with exponential back-off; after the last retry,
    :class:`AssetReadError` names the asset and item."""
    items = list({id(r.item): r.item for r in reads}.values())
    env = gdal_env(retry.retries, retry.backoff_s)
    attempt = 0
    while True:
        try:
            if _read_all(reads, grid, fill_value=fill_value, env=env):
                return
            break
        except (RuntimeError, OSError) as err:
            if attempt >= retry.retries:
                raise _read_error(err, items, retry) from err
            _back_off(err, attempt, retry)
            attempt += 1
    for resampling in dict.fromkeys(r.resampling for r in reads):
        group = [r for r in reads if r.resampling == resampling]
        group_items = list({id(r.item): r.item for r in group}.values())
        row = {id(item): k for k, item in enumerate(group_items)}
        keys = list(dict.fromkeys(r.key for r in group))
        dtype = np.result_type(*{r.out.dtype for r in group})  # SCL (uint8) read with uint16 bands
        data = _read_stackstac(
            group_items,
            keys,
            grid,
            dtype=dtype,
            fill_value=dtype.type(fill_value),  # stackstac wants the fill value in the output's type
            resampling=resampling,
            retry=retry,
        )
        for r in group:
            r.out[...] = data[row[id(r.item)], keys.index(r.key)]
            if r.finish is not None:
                r.finish(r.out)


def read(
    items: Sequence[pystac.Item],
    assets: Sequence[str],
    grid: Grid,
    *,
    dtype: np.dtype,
    fill_value: float | int | np.floating[Any],
    resampling: str,
    retry: Retry,
) -> np.ndarray:
    """(item, asset, y, x) array of ``assets`` of ``items`` on ``grid`` (see :func:`read_into`)."""
    out = np.empty((len(items), len(assets), *grid.shape), dtype=dtype)
    reads = [
        AssetRead(item, key, out[k, a], resampling)
        for k, item in enumerate(items)
        for a, key in enumerate(assets)
    ]
    read_into(reads, grid, fill_value=fill_value, retry=retry)
    return out


def _read_error(err: Exception, items: Sequence[pystac.Item], retry: Retry) -> AssetReadError:
    message = str(err)
    url = _URL_IN_MESSAGE.search(message)
    what = _asset_of(url.group(1), items) if url else "an asset"
    return AssetReadError(
        f"could not read {what} after {retry.retries} retries with back-off: {message[:300]}; "
        "check that the file exists and is reachable (signed URLs expire: rerun to re-sign)"
    )


def _back_off(err: Exception, attempt: int, retry: Retry) -> None:
    delay = retry.backoff_s * 2**attempt
    log.warning("read failed (%s); retrying in %.1f s", str(err)[:200], delay)
    retry.sleep(delay)


def _read_stackstac(
    items: Sequence[pystac.Item],
    assets: Sequence[str],
    grid: Grid,
    *,
    dtype: np.dtype,
    fill_value: float | int | np.floating[Any],
    resampling: str,
    retry: Retry,
) -> np.ndarray:
    """(item, asset, y, x) through stackstac's warped reads (any CRS, any alignment, any resampling)."""
    import dask
    import stackstac
    from rasterio.enums import Resampling

    lazy = stackstac.stack(
        list(items),
        assets=list(assets),
        epsg=grid.epsg,
        resolution=grid.resolution,
        bounds=grid.bounds,
        snap_bounds=False,
        resampling=Resampling[resampling],
        chunksize=READ_CHUNK,
        dtype=dtype,
        fill_value=fill_value,
        rescale=False,  # PC has no raster:bands scales; Earth Search's are not always right (REFERENCE.md)
        sortby_date=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
        gdal_env=gdal_env(retry.retries, retry.backoff_s),
        errors_as_nodata=NO_ERRORS_AS_NODATA,
    )
    if lazy.shape[-2:] != grid.shape:
        raise AssertionError(f"stackstac grid {lazy.shape[-2:]} differs from the tile grid {grid.shape}")
    attempt = 0
    while True:
        try:
            with dask.config.set(scheduler="threads", num_workers=READ_THREADS):
                return np.asarray(lazy.compute().values)
        except (RuntimeError, OSError) as err:
            if attempt >= retry.retries:
                raise _read_error(err, items, retry) from err
            _back_off(err, attempt, retry)
            attempt += 1


def first_valid(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mosaic (k, c, y, x) along k, taking per pixel the first item whose pixel is valid.

    One source item per pixel for every band (and SCL), so the mask describes the very reflectance it
    sits on; stackstac.mosaic would pick per band, which can mix items at footprint edges.
    """
    if data.shape[0] == 1:
        return data[0]
    pick = np.argmax(valid, axis=0)[None, None]
    return np.take_along_axis(data, pick, axis=0)[0]


def remove_boa_offset(dn: np.ndarray, offset: int) -> np.ndarray:
    """Subtract the BOA offset from valid pixels; keep 0 as no data and clamp valid ones to >= 1.

    Baseline >= 04.00 lets dark surfaces (water) go below an offset DN of 1000, i.e. to a negative
    reflectance; the schema's uint16 has no room for that, so they become the smallest valid value.
    """
    out = np.array(dn, dtype=np.uint16)
    remove_boa_offset_inplace(out, offset)
    return out


def remove_boa_offset_inplace(dn: np.ndarray, offset: int) -> None:
    """:func:`remove_boa_offset` on a uint16 array in place (no int32 copy of the band)."""
    if offset == 0:
        return
    dark = (dn > 0) & (dn <= offset)  # valid pixels the offset takes to <= 0: they become 1
    np.subtract(dn, np.uint16(offset), out=dn, where=dn > offset)
    dn[dark] = 1


@dataclass(frozen=True)
class S2Stack:
    """The S2 days on the grid, one array per variable (no per-date copies)."""

    reflectance: np.ndarray  # (date, band, y, x) uint16, offset removed (0 in every band where any is 0)
    scl: np.ndarray | None  # (date, y, x) uint8, 0 = no data
    valid: np.ndarray  # (date, y, x) bool: every band has data


def _batches(groups: Sequence[Sequence[pystac.Item]], per_batch: int) -> list[list[int]]:
    """Consecutive group indices batched so each batch reads at most ``per_batch`` items (whole groups)."""
    batches: list[list[int]] = [[]] if groups else []
    count = 0
    for k, group in enumerate(groups):
        if batches[-1] and count + len(group) > per_batch:
            batches.append([])
            count = 0
        batches[-1].append(k)
        count += len(group)
    return batches


def _offset_remover(offset: int) -> Callable[[np.ndarray], None] | None:
    if offset == 0:
        return None
    return lambda dn: remove_boa_offset_inplace(dn, offset)


def load_s2_days(
    days: Sequence[Sequence[pystac.Item]],
    grid: Grid,
    bands: Sequence[str],
    profile: CatalogProfile,
    *,
    with_scl: bool,
    resampling: str,
    retry: Retry,
    on_batch: Callable[[int, int], None] | None = None,
    zero_incomplete: bool = True,
) -> S2Stack:
    """Read and mosaic S2 days (each a list of items of one date, preferred first) into one stack.

    Items are read in batches of whole days (READ_BATCH_ITEMS items at most), all assets of a batch
    at once, so reads run in parallel across dates, not only across bands. A day of one item (the usual
    case) is read straight into its place in the stack, its BOA offset removed in place by the reader
    thread; a day of several items goes through a scratch stack and is mosaicked into place. Pixels
    missing any band are set to 0 in every band (unless ``zero_incomplete`` is False: the caller does it
    after using the bands they have, as the fallback cloud test does).
    """
    keys = [profile.band_asset(b) for b in bands]
    scl_key = profile.scl_asset if with_scl else None
    shape = grid.shape
    reflectance = np.empty((len(days), len(keys), *shape), dtype=np.uint16)
    scl = np.empty((len(days), *shape), dtype=np.uint8) if scl_key is not None else None
    valid = np.empty((len(days), *shape), dtype=bool)
    batches = _batches(days, READ_BATCH_ITEMS)
    for b, batch in enumerate(batches):
        scratch: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        reads: list[AssetRead] = []
        for k in batch:
            n = len(days[k])
            if n > 1:
                scratch[k] = (
                    np.empty((n, len(keys), *shape), dtype=np.uint16),
                    np.empty((n, *shape), dtype=np.uint8) if scl is not None else None,
                )
            for i, item in enumerate(days[k]):
                refl_out, scl_out = (reflectance[k], None if scl is None else scl[k])
                if n > 1:
                    refl_out, scl_out = scratch[k][0][i], (None if scl is None else scratch[k][1][i])  # type: ignore[index]
                finish = _offset_remover(profile.boa_offset(item)[0])
                reads += [AssetRead(item, key, refl_out[a], resampling, finish) for a, key in enumerate(keys)]
                if scl_key is not None and scl_out is not None:
                    # SCL is a class map: always nearest (the bands may use another method).
                    reads.append(AssetRead(item, scl_key, scl_out, "nearest"))
        read_into(reads, grid, fill_value=0, retry=retry)
        for k in batch:
            if k in scratch:
                refl_items, scl_items = scratch[k]
                # ``all`` over an array axis is an array; numpy's stubs also allow a bare bool.
                item_valid = cast(np.ndarray, (refl_items > 0).all(axis=1))
                reflectance[k] = first_valid(refl_items, item_valid)
                if scl is not None and scl_items is not None:
                    scl[k] = first_valid(scl_items[:, None], item_valid)[0]
            # A pixel has data when every band is > 0, i.e. its smallest band is (uint16: nonzero).
            np.greater(reflectance[k].min(axis=0), 0, out=valid[k])
            if zero_incomplete and not valid[k].all():  # a date complete everywhere has nothing to zero
                np.multiply(reflectance[k], valid[k], out=reflectance[k])
        if on_batch is not None:
            on_batch(b + 1, len(batches))
    return S2Stack(reflectance=reflectance, scl=scl, valid=valid)


def to_db(linear: np.ndarray) -> np.ndarray:
    """Backscatter power to dB; non-positive values (no signal, fill) become NaN."""
    db = np.array(linear, dtype=np.float32)
    to_db_inplace(db)
    return db


def to_db_inplace(values: np.ndarray) -> None:
    """:func:`to_db` on a float32 array in place."""
    positive = values > 0
    np.log10(values, out=values, where=positive)
    values *= np.float32(10.0)
    values[~positive] = np.nan


def load_s1_passes(
    passes: Sequence[Sequence[pystac.Item]],
    grid: Grid,
    profile: CatalogProfile,
    *,
    resampling: str,
    retry: Retry,
    on_batch: Callable[[int, int], None] | None = None,
    out: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """(polarization, y, x) float32 dB of each S1 pass, its slices mosaicked (first valid).

    Converted to dB (or the profile's nodata to NaN) in place by the reader threads. ``out``: one
    (polarization, y, x) float32 array per pass to put it in (e.g. its date's place in the tile's
    ``s1``): a pass of one slice is read straight into it; the arrays returned are then these.
    """
    keys = [profile.s1_assets[p] for p in POLARIZATIONS]
    nodata = profile.s1_nodata

    def to_nan(values: np.ndarray) -> None:
        values[values == nodata] = np.nan

    finish = to_db_inplace if profile.s1_linear else to_nan
    result: list[np.ndarray] = []
    batches = _batches(passes, READ_BATCH_ITEMS)
    for b, batch in enumerate(batches):
        # Where each pass's slices are read: its ``out`` for one slice, else a scratch stack to mosaic.
        targets = {k: (out[k][None] if out is not None and len(passes[k]) == 1 else None) for k in batch}
        scratch_items = [item for k in batch if targets[k] is None for item in passes[k]]
        scratch = np.empty((len(scratch_items), len(keys), *grid.shape), dtype=np.float32)
        reads: list[AssetRead] = []
        first = 0
        for k in batch:
            target = targets[k]
            if target is None:
                target = scratch[first : first + len(passes[k])]
                first += len(passes[k])
                targets[k] = target
            reads += [
                AssetRead(item, key, target[i, a], resampling, finish)
                for i, item in enumerate(passes[k])
                for a, key in enumerate(keys)
            ]
        read_into(reads, grid, fill_value=np.float32(np.nan), retry=retry)
        for k in batch:
            part = targets[k]
            assert part is not None
            if len(part) == 1:
                result.append(part[0])
                continue
            mosaic = first_valid(part, cast(np.ndarray, np.isfinite(part).all(axis=1)))
            if out is not None:
                out[k][...] = mosaic
                mosaic = out[k]
            result.append(mosaic)
        if on_batch is not None:
            on_batch(b + 1, len(batches))
    return result
