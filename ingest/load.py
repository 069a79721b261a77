"""Read items onto the tile grid with stackstac: S2 days (mosaicked, BOA offset removed) and S1 passes (dB).

The grid is the tile's exactly: its EPSG, bounds and resolution, pixel centres as coordinates. Bands
coarser than the grid are resampled with ``IngestConfig.resampling`` (default nearest: every 10 m pixel
keeps the exact value of the 20 m / 60 m pixel it lies in, so reflectances stay measured values and
cloud edges are not smeared into clear pixels; SCL is always read with nearest, being a class map).

Reads go through GDAL with its own HTTP retries (GDAL_HTTP_MAX_RETRY / GDAL_HTTP_RETRY_DELAY), and a
failed batch is retried here with exponential back-off; after that, :class:`AssetReadError` names the
asset and item. stackstac's default of turning HTTP 404 into no-data is switched off: a missing file
in a catalogue is an error to see, not a hole to fill silently.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
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
    """(item, asset, y, x) array of ``assets`` of ``items`` on ``grid``, read with stackstac.

    A failed read is retried with exponential back-off; after the last retry, :class:`AssetReadError`
    names the asset and item.
    """
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
                message = str(err)
                url = _URL_IN_MESSAGE.search(message)
                what = _asset_of(url.group(1), items) if url else "an asset"
                raise AssetReadError(
                    f"could not read {what} after {retry.retries} retries with back-off: {message[:300]}; "
                    "check that the file exists and is reachable (signed URLs expire: rerun to re-sign)"
                ) from err
            delay = retry.backoff_s * 2**attempt
            log.warning("read failed (%s); retrying in %.1f s", str(err)[:200], delay)
            retry.sleep(delay)
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
    if offset == 0:
        return dn
    valid = dn > 0
    out = np.where(valid, np.maximum(dn.astype(np.int32) - offset, 1), 0)
    return out.astype(np.uint16)


@dataclass(frozen=True)
class S2Day:
    """One mosaicked S2 date on the grid."""

    reflectance: np.ndarray  # (band, y, x) uint16, offset removed, 0 = no data
    scl: np.ndarray | None  # (y, x) uint8, 0 = no data


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
) -> list[S2Day]:
    """Read and mosaic S2 days (each a list of items of one date, preferred first).

    Items are read in batches of whole days (READ_BATCH_ITEMS items at most), each batch one dask
    computation over all its assets, so reads run in parallel across dates, not only across bands.
    """
    keys = [profile.band_asset(b) for b in bands]
    scl_key = profile.scl_asset if with_scl else None
    uint16 = {"dtype": np.dtype("uint16"), "fill_value": np.uint16(0), "retry": retry}
    # SCL is a class map: read with nearest always, in the same stack when the bands use nearest too.
    scl_apart = scl_key is not None and resampling != "nearest"
    if scl_key is not None and not scl_apart:
        keys = [*keys, scl_key]
    out: list[S2Day] = []
    batches = _batches(days, READ_BATCH_ITEMS)
    for b, batch in enumerate(batches):
        items = [item for k in batch for item in days[k]]
        data = read(items, keys, grid, resampling=resampling, **uint16)  # type: ignore[arg-type]
        scl_data = None
        if scl_apart:
            scl_data = read(items, [scl_key], grid, resampling="nearest", **uint16)  # type: ignore[arg-type, list-item]
        elif scl_key is not None:
            data, scl_data = data[:, :-1], data[:, -1:]
        first = 0
        for k in batch:
            n = len(days[k])
            offsets = [profile.boa_offset(item)[0] for item in days[k]]
            refl = np.stack([remove_boa_offset(data[first + i], offsets[i]) for i in range(n)])
            # ``all`` over an array axis is an array; numpy's stubs also allow a bare bool.
            valid = cast(np.ndarray, (refl > 0).all(axis=1))
            scl = None
            if scl_data is not None:
                scl = first_valid(scl_data[first : first + n], valid)[0].astype(np.uint8)
            out.append(S2Day(reflectance=first_valid(refl, valid), scl=scl))
            first += n
        if on_batch is not None:
            on_batch(b + 1, len(batches))
    return out


def to_db(linear: np.ndarray) -> np.ndarray:
    """Backscatter power to dB; non-positive values (no signal, fill) become NaN."""
    positive = linear > 0
    db = np.full(linear.shape, np.nan, dtype=np.float32)
    np.log10(linear, out=db, where=positive)
    db[positive] *= 10.0
    return db


def load_s1_passes(
    passes: Sequence[Sequence[pystac.Item]],
    grid: Grid,
    profile: CatalogProfile,
    *,
    resampling: str,
    retry: Retry,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """(polarization, y, x) float32 dB of each S1 pass, its slices mosaicked (first valid)."""
    keys = [profile.s1_assets[p] for p in POLARIZATIONS]
    out: list[np.ndarray] = []
    batches = _batches(passes, READ_BATCH_ITEMS)
    for b, batch in enumerate(batches):
        items = [item for k in batch for item in passes[k]]
        data = read(
            items,
            keys,
            grid,
            dtype=np.dtype("float32"),
            fill_value=np.float32(np.nan),
            resampling=resampling,
            retry=retry,
        )
        if profile.s1_linear:
            data = to_db(data)
        else:
            data = np.where(data == profile.s1_nodata, np.nan, data).astype(np.float32)
        first = 0
        for k in batch:
            part = data[first : first + len(passes[k])]
            out.append(first_valid(part, np.isfinite(part).all(axis=1)))
            first += len(passes[k])
        if on_batch is not None:
            on_batch(b + 1, len(batches))
    return out
