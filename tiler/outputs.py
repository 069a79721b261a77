"""What users open besides the Zarr mosaic: COGs per date, RGB quicklooks, and a STAC collection.

All read a finished mosaic (:func:`tiler.mosaic.open_mosaic` refuses an unfinished one), write to a
local path or any fsspec URL, and refuse to replace an existing file unless ``overwrite``.

- :func:`write_cogs`: one cloud-optimised GeoTIFF per date with all bands (uint16 reflectance × 10000,
  nodata 0), written window by window into a tiled GeoTIFF and converted by rio-cogeo, so memory stays
  at one row of cells whatever the zone's size. Each file is checked with ``rio_cogeo.cog_validate``.
- :func:`write_quicklooks`: RGB PNGs (B04, B03, B02 by default), a 2–98 % percentile stretch per band
  over valid pixels, transparent where there is no data, at most ``max_size`` pixels on a side.
- :func:`write_stac`: a collection with one item per date with data, its geometry the footprint of the
  mosaic's cells in lon/lat, the projection extension's fields, and assets for the Zarr store, the COG and the
  quicklook of that date. :func:`validate_stac` checks them against the STAC core JSON schemas that
  pystac bundles, which works offline.
- σ, where the store has the fit's ``s2_declouded_sigma``: ``write_cogs(..., variable=DECLOUDED_SIGMA)``
  and :func:`write_sigma_quicklooks` (mean σ over bands on a fixed colour scale), ``*_sigma`` files beside
  the reflectance's, STAC assets ``cog_sigma`` and ``quicklook_sigma``.

Every function takes a calendar store (tiler.mosaic: ``declouder_product = "calendar"``) as it takes a
mosaic: file names start with ``calendar_EPSG``, and STAC items carry the step's bin.
:func:`write_outputs` writes all the files of one store.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any, cast

import fsspec
import numpy as np
import pystac
import rasterio
import shapely
import xarray as xr
import zarr
from PIL import Image
from pystac.extensions.projection import ProjectionExtension
from pystac.stac_io import DefaultStacIO

from tiler.errors import MosaicError, OutputExistsError
from tiler.grid import to_lonlat
from tiler.mosaic import (
    CALENDAR_SOURCE,
    DECLOUDED,
    DECLOUDED_SIGMA,
    QUALITY,
    REGION_EXPECTED,
    SIGMA_NODATA,
    TIME_BOUNDS,
    MosaicInfo,
    mosaic_info,
    open_mosaic,
)
from tiler.store import S2_NODATA, zarr_array, zarr_store

StorageOptions = Mapping[str, Any] | None
Progress = Callable[[int, int, str], None]

#: True-colour bands of Sentinel-2 (red, green, blue).
RGB_BANDS = ("B04", "B03", "B02")
#: Percentiles of the quicklook stretch: clips haze and specular glints without washing out the scene.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Largest side of a quicklook, in pixels (a 2048 px PNG of a 13 000 px zone strip stays a few MB).
QUICKLOOK_MAX_SIZE = 2048
#: Internal tiling of the COGs (rio-cogeo's default profiles use 512 px blocks).
COG_BLOCK = 512
#: Deflate with horizontal differencing: reflectance varies smoothly, so predictor 2 shrinks it further.
COG_PROFILE = {
    "driver": "GTiff",
    "interleave": "pixel",
    "tiled": True,
    "blockxsize": COG_BLOCK,
    "blockysize": COG_BLOCK,
    "compress": "DEFLATE",
    "predictor": 2,
}
#: STAC license of derived Copernicus Sentinel data (the Copernicus licence is not an SPDX identifier).
STAC_LICENSE = "other"
#: Uncertainty quicklooks: the mean σ over bands on a fixed scale from 0 to this (reflectance × 10000:
#: 0.05), so quicklooks of different dates and campaigns compare; larger σ saturates.
SIGMA_QUICKLOOK_MAX = 500.0
#: Colour ramp of the uncertainty quicklooks (a perceptually ordered dark-blue → teal → yellow ramp,
#: sampled from viridis at 0, 0.25, 0.5, 0.75, 1): dark = confident, yellow = uncertain.
SIGMA_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
#: File-name suffix of the σ outputs (COG and quicklook) beside the reflectance's.
SIGMA_SUFFIX = "_sigma"
#: Nodata of each variable written to COGs.
COG_NODATA = {DECLOUDED: S2_NODATA, DECLOUDED_SIGMA: SIGMA_NODATA}


def _day(value: np.datetime64) -> str:
    return str(np.datetime64(value, "D"))  # type: ignore[call-overload]  # numpy stubs lack (datetime64, unit)


def _select_dates(ds: xr.Dataset, dates: Sequence[str] | None, info: MosaicInfo | None = None) -> list[int]:
    """Indices of ``dates`` on the time axis; by default the days with data (all, in a version 1 store).

    On a campaign's day axis most days hold no imagery anywhere in the zone: no output is written
    for them.
    """
    available = [_day(t) for t in ds["time"].values]
    if dates is None:
        if info is not None and info.days_with_data is not None:
            with_data = {_day(t) for t in info.days_with_data}
            return [k for k, day in enumerate(available) if day in with_data]
        return list(range(len(available)))
    indices = []
    for date in dates:
        day = _day(np.datetime64(date))
        if day not in available:
            raise MosaicError(
                f"date {date!r} is not in the mosaic; its dates are {available[0]} .. {available[-1]} "
                f"({len(available)} dates: {', '.join(available[:6])}{', ...' if len(available) > 6 else ''})"
            )
        indices.append(available.index(day))
    return indices


def _refuse_existing(url: str, fs: fsspec.AbstractFileSystem, path: str, overwrite: bool) -> None:
    if fs.exists(path) and not overwrite:
        raise OutputExistsError(
            f"output {url!r} already exists; pass overwrite (CLI: --overwrite) to replace it"
        )


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _stem(info: MosaicInfo) -> str:
    """File-name stem of a store's outputs: ``mosaic_EPSG`` or ``calendar_EPSG``."""
    return f"{info.product}_{info.epsg}"


# --- COG ------------------------------------------------------------------------------------------------


def write_cogs(
    mosaic_url: str,
    out_dir: str,
    *,
    dates: Sequence[str] | None = None,
    storage_options: StorageOptions = None,
    out_storage_options: StorageOptions = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    variable: str = DECLOUDED,
) -> dict[str, str]:
    """Write one validated COG per date (all dates, or ``dates``); returns ISO date -> URL.

    ``variable``: ``s2_declouded`` (files ``STEM_DATE.tif``, nodata 0) or ``s2_declouded_sigma`` (files
    ``STEM_DATE_sigma.tif``, nodata 65535), all bands either way.
    """
    from rio_cogeo.cogeo import cog_translate, cog_validate

    if variable not in COG_NODATA:
        raise MosaicError(f"COGs: variable {variable!r} is not one of {sorted(COG_NODATA)}")
    ds = open_mosaic(mosaic_url, storage_options=storage_options)
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    if variable not in ds:
        raise MosaicError(f"COGs: {mosaic_url!r} has no {variable!r} (the fit gave no σ for it)")
    nodata = COG_NODATA[variable]
    suffix = SIGMA_SUFFIX if variable == DECLOUDED_SIGMA else ""
    fs, root = fsspec.core.url_to_fs(out_dir, **dict(out_storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    imagery = ds[variable]
    bands = [str(b) for b in ds["band"].values]
    cell_h = info.grid.cell_shape[0]
    height, width = info.grid.shape
    profile = {
        "driver": "GTiff",
        "dtype": "uint16",
        "count": len(bands),
        "height": height,
        "width": width,
        "crs": ds.rio.crs,
        "transform": ds.rio.transform(),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": COG_BLOCK,
        "blockysize": COG_BLOCK,
        "compress": "DEFLATE",
    }
    written: dict[str, str] = {}
    indices = _select_dates(ds, dates, info)
    with tempfile.TemporaryDirectory(prefix="declouder-cog-") as tmp:
        for done, t in enumerate(indices):
            day = _day(ds["time"].values[t])
            name = f"{_stem(info)}_{day}{suffix}.tif"
            url = _join(out_dir, name)
            _refuse_existing(url, fs, _join(root, name), overwrite)
            staging, cog = Path(tmp) / f"staging_{name}", Path(tmp) / name
            with rasterio.open(staging, "w", **profile) as dst:
                # One row of cells at a time: the zone's full width, one chunk high.
                for y0 in range(0, height, cell_h):
                    block = imagery.isel(time=t, y=slice(y0, y0 + cell_h)).values
                    window = rasterio.windows.Window(0, y0, width, block.shape[1])
                    dst.write(block, window=window)
                for i, band in enumerate(bands, start=1):
                    dst.set_band_description(i, band)
            with warnings.catch_warnings():  # rio-cogeo's own use of a deprecated affine operator
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                cog_translate(
                    staging,
                    cog,
                    COG_PROFILE,
                    nodata=nodata,
                    overview_resampling="average",
                    quiet=True,
                    additional_cog_metadata={"DATE": day, "SOURCE": mosaic_url},
                )
            valid, errors, _ = cog_validate(cog, quiet=True)
            if not valid:
                raise MosaicError(f"COG for {day} failed validation: {errors}")
            fs.put_file(str(cog), _join(root, name))
            staging.unlink()
            cog.unlink()
            written[day] = url
            if progress is not None:
                progress(done + 1, len(indices), f"COG {day}{suffix}")
    return written


# --- Quicklooks -----------------------------------------------------------------------------------------


def quicklook_rgba(rgb: np.ndarray, *, percentiles: tuple[float, float] = STRETCH_PERCENTILES) -> np.ndarray:
    """(3, y, x) reflectance -> (y, x, 4) uint8: per-band percentile stretch, alpha 0 where no data."""
    valid = np.all(rgb != S2_NODATA, axis=0)
    out = np.zeros((*rgb.shape[1:], 4), dtype=np.uint8)
    if not valid.any():
        return out
    for i, plane in enumerate(rgb.astype(np.float64)):
        lo, hi = np.percentile(plane[valid], percentiles)
        scaled = np.clip((plane - lo) / max(hi - lo, 1.0), 0.0, 1.0)
        out[..., i] = np.where(valid, np.rint(scaled * 255), 0).astype(np.uint8)
    out[..., 3] = np.where(valid, 255, 0)
    return out


def write_quicklooks(
    mosaic_url: str,
    out_dir: str,
    *,
    dates: Sequence[str] | None = None,
    bands: Sequence[str] = RGB_BANDS,
    max_size: int = QUICKLOOK_MAX_SIZE,
    storage_options: StorageOptions = None,
    out_storage_options: StorageOptions = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Write an RGB(A) PNG quicklook per date (all, or ``dates``); returns ISO date -> URL."""
    ds = open_mosaic(mosaic_url, storage_options=storage_options)
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    missing = [b for b in bands if b not in info.bands]
    if len(bands) != 3 or missing:
        raise MosaicError(
            f"quicklook bands {list(bands)}: need three of the mosaic's bands {list(info.bands)}"
            + (f" ({missing} are not there)" if missing else "")
        )
    return _write_pngs(
        ds,
        info,
        out_dir,
        lambda plane: quicklook_rgba(plane.sel(band=list(bands)).values),
        variable=DECLOUDED,
        suffix="",
        dates=dates,
        max_size=max_size,
        out_storage_options=out_storage_options,
        overwrite=overwrite,
        progress=progress,
    )


def sigma_rgba(sigma: np.ndarray, *, scale: float = SIGMA_QUICKLOOK_MAX) -> np.ndarray:
    """(band, y, x) σ × 10000 -> (y, x, 4) uint8: the mean σ over bands on :data:`SIGMA_RAMP` from 0 to
    ``scale`` (saturating above), transparent where σ is unknown or there is no data (65535)."""
    known = np.all(sigma != SIGMA_NODATA, axis=0)
    out = np.zeros((*sigma.shape[1:], 4), dtype=np.uint8)
    if not known.any():
        return out
    mean = np.where(known, sigma.astype(np.float64).mean(axis=0), 0.0)
    position = np.clip(mean / scale, 0.0, 1.0) * (len(SIGMA_RAMP) - 1)
    low = np.minimum(np.floor(position).astype(np.intp), len(SIGMA_RAMP) - 2)
    frac = (position - low)[..., None]
    colour = SIGMA_RAMP[low] * (1 - frac) + SIGMA_RAMP[low + 1] * frac
    out[..., :3] = np.where(known[..., None], np.rint(colour), 0).astype(np.uint8)
    out[..., 3] = np.where(known, 255, 0)
    return out


def write_sigma_quicklooks(
    mosaic_url: str,
    out_dir: str,
    *,
    dates: Sequence[str] | None = None,
    max_size: int = QUICKLOOK_MAX_SIZE,
    scale: float = SIGMA_QUICKLOOK_MAX,
    storage_options: StorageOptions = None,
    out_storage_options: StorageOptions = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Write an uncertainty PNG per date (``STEM_DATE_sigma.png``: :func:`sigma_rgba`); ISO date -> URL."""
    ds = open_mosaic(mosaic_url, storage_options=storage_options)
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    if DECLOUDED_SIGMA not in ds:
        raise MosaicError(f"uncertainty quicklooks: {mosaic_url!r} has no {DECLOUDED_SIGMA!r}")
    return _write_pngs(
        ds,
        info,
        out_dir,
        lambda plane: sigma_rgba(plane.values, scale=scale),
        variable=DECLOUDED_SIGMA,
        suffix=SIGMA_SUFFIX,
        dates=dates,
        max_size=max_size,
        out_storage_options=out_storage_options,
        overwrite=overwrite,
        progress=progress,
    )


def _write_pngs(
    ds: xr.Dataset,
    info: MosaicInfo,
    out_dir: str,
    render: Callable[[xr.DataArray], np.ndarray],
    *,
    variable: str,
    suffix: str,
    dates: Sequence[str] | None,
    max_size: int,
    out_storage_options: StorageOptions,
    overwrite: bool,
    progress: Progress | None,
) -> dict[str, str]:
    """One PNG per date of ``variable``, decimated to at most ``max_size`` px a side, drawn by ``render``."""
    step = max(1, math.ceil(max(info.grid.shape) / max_size))
    fs, root = fsspec.core.url_to_fs(out_dir, **dict(out_storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    written: dict[str, str] = {}
    indices = _select_dates(ds, dates, info)
    for done, t in enumerate(indices):
        day = _day(ds["time"].values[t])
        name = f"{_stem(info)}_{day}{suffix}.png"
        url = _join(out_dir, name)
        _refuse_existing(url, fs, _join(root, name), overwrite)
        # Decimate (every step-th pixel) rather than average: a quicklook, not a product.
        plane = ds[variable].isel(time=t, y=slice(None, None, step), x=slice(None, None, step))
        rgba = render(plane)
        with fs.open(_join(root, name), "wb") as f:
            Image.fromarray(rgba, mode="RGBA").save(f, format="PNG", optimize=True)
        written[day] = url
        if progress is not None:
            progress(done + 1, len(indices), f"quicklook {day}{suffix}")
    return written


# --- STAC -----------------------------------------------------------------------------------------------


class FsspecStacIO(DefaultStacIO):
    """pystac I/O through fsspec, so catalogues can be written to object stores as well as disks."""

    def __init__(self, storage_options: StorageOptions = None) -> None:
        super().__init__()
        self.storage_options = dict(storage_options or {})

    def read_text_from_href(self, href: str) -> str:
        with fsspec.open(href, "rt", encoding="utf-8", **self.storage_options) as f:
            return str(f.read())

    def write_text_to_href(self, href: str, txt: str) -> None:
        fs, path = fsspec.core.url_to_fs(href, **self.storage_options)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wt", encoding="utf-8") as f:
            f.write(txt)


def mosaic_footprint(mosaic_url: str, *, storage_options: StorageOptions = None) -> shapely.Geometry:
    """The lon/lat footprint of a mosaic's cells (the campaign's tiles' cells, merged)."""
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    group = zarr.open_group(zarr_store(mosaic_url, storage_options), mode="r")
    expected = cast(np.ndarray, zarr_array(group, REGION_EXPECTED)[...])
    grid = info.grid
    cells = [grid.cell_tile(int(i), int(j)).cell_bounds for i, j in np.argwhere(expected)]
    merged = shapely.union_all(shapely.box(*np.array(cells).T)) if cells else shapely.box(*grid.bounds)
    return to_lonlat(merged, grid.epsg)


def write_stac(
    mosaic_url: str,
    out_dir: str,
    *,
    cogs: Mapping[str, str] | None = None,
    quicklooks: Mapping[str, str] | None = None,
    sigma_cogs: Mapping[str, str] | None = None,
    sigma_quicklooks: Mapping[str, str] | None = None,
    collection_id: str | None = None,
    storage_options: StorageOptions = None,
    out_storage_options: StorageOptions = None,
    overwrite: bool = False,
) -> str:
    """Write a STAC collection (one item per date) describing a mosaic; returns the collection's URL.

    ``cogs`` and ``quicklooks`` map ISO dates to the files :func:`write_cogs` and
    :func:`write_quicklooks` wrote; they become the items' ``cog`` and ``quicklook`` assets;
    ``sigma_cogs`` and ``sigma_quicklooks`` (the σ files) the ``cog_sigma`` and ``quicklook_sigma``
    assets. Every item has the ``zarr`` asset (the whole store with its quality layer). A calendar's
    items also carry ``start_datetime`` / ``end_datetime``: the step's bin.
    """
    ds = open_mosaic(mosaic_url, storage_options=storage_options)
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    collection_id = collection_id or f"declouder-{_stem(info)}"
    collection_url = _join(out_dir, "collection.json")
    fs, root = fsspec.core.url_to_fs(out_dir, **dict(out_storage_options or {}))
    _refuse_existing(collection_url, fs, _join(root, "collection.json"), overwrite)
    footprint = mosaic_footprint(mosaic_url, storage_options=storage_options)
    geometry = shapely.geometry.mapping(shapely.set_precision(footprint, 1e-7))
    bbox = list(footprint.bounds)
    selected = _select_dates(ds, None, info)
    times = [np.datetime64(t, "D") for t in ds["time"].values[selected]]
    as_datetime = [_utc(t) for t in times]
    bins = ds[TIME_BOUNDS].values[selected] if TIME_BOUNDS in ds else None
    what = (
        f"on a regular calendar of {ds.attrs.get('calendar_cadence')} steps (value at the bin's centre; "
        f"'{CALENDAR_SOURCE}' says whether a step is a mean, an interpolation or a held value)"
        if info.product == "calendar"
        else "per acquisition day"
    )
    sigma_text = (
        f", the fit's predicted standard deviation '{DECLOUDED_SIGMA}' (x 10000, 65535 = unknown)"
        if info.sigma
        else ""
    )
    collection = pystac.Collection(
        id=collection_id,
        description=(
            f"Declouded Sentinel-2 {info.product} of UTM zone EPSG:{info.epsg} {what}: reflectance x 10000 "
            f"of bands {', '.join(info.bands)} (0 = no data){sigma_text} and a per-pixel quality layer "
            f"'{QUALITY}' (days to the nearest clear observation)."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[as_datetime[0], as_datetime[-1]]])
        ),
        license=STAC_LICENSE,
        title=f"declouder {info.product} EPSG:{info.epsg}",
    )
    height, width = info.grid.shape
    transform = list(ds.rio.transform())[:6]
    for n, (day, when) in enumerate(zip(times, as_datetime, strict=True)):
        iso = str(day)
        properties: dict[str, Any] = {"constellation": "sentinel-2"}
        if bins is not None:
            # STAC common metadata: the step's bin, [start, end) as inclusive instants.
            end = np.datetime64(bins[n][1], "s") - np.timedelta64(1, "s")
            properties["start_datetime"] = _utc(bins[n][0]).isoformat().replace("+00:00", "Z")
            properties["end_datetime"] = _utc(end).isoformat().replace("+00:00", "Z")
        item = pystac.Item(
            id=f"{collection_id}-{iso}",
            geometry=geometry,
            bbox=bbox,
            datetime=when,
            properties=properties,
        )
        projection = ProjectionExtension.ext(item, add_if_missing=True)
        projection.code = f"EPSG:{info.epsg}"
        projection.bbox = list(info.grid.bounds)
        projection.shape = [height, width]
        projection.transform = transform
        item.add_asset(
            "zarr",
            pystac.Asset(
                href=mosaic_url,
                media_type=pystac.MediaType.ZARR,
                roles=["data"],
                title=f"Zarr {info.product}, all dates: {DECLOUDED}"
                + (f", {DECLOUDED_SIGMA}" if info.sigma else "")
                + f" and {QUALITY}",
            ),
        )
        if cogs and iso in cogs:
            item.add_asset(
                "cog",
                pystac.Asset(href=cogs[iso], media_type=pystac.MediaType.COG, roles=["data"], title=iso),
            )
        if sigma_cogs and iso in sigma_cogs:
            item.add_asset(
                "cog_sigma",
                pystac.Asset(
                    href=sigma_cogs[iso],
                    media_type=pystac.MediaType.COG,
                    roles=["data", "uncertainty"],
                    title=f"{iso}: predicted standard deviation x 10000 (65535 = unknown)",
                ),
            )
        if quicklooks and iso in quicklooks:
            item.add_asset(
                "quicklook",
                pystac.Asset(href=quicklooks[iso], media_type=pystac.MediaType.PNG, roles=["overview"]),
            )
        if sigma_quicklooks and iso in sigma_quicklooks:
            item.add_asset(
                "quicklook_sigma",
                pystac.Asset(
                    href=sigma_quicklooks[iso],
                    media_type=pystac.MediaType.PNG,
                    roles=["overview", "uncertainty"],
                    title=f"mean sigma over bands, 0 (dark) .. {SIGMA_QUICKLOOK_MAX / 10000:g} (yellow)",
                ),
            )
        collection.add_item(item)
    collection.normalize_hrefs(out_dir)
    collection.make_all_asset_hrefs_relative()
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=FsspecStacIO(out_storage_options))
    return collection_url


def _utc(value: Any) -> Any:
    """A datetime64 as a timezone-aware UTC datetime (STAC's datetimes)."""
    return np.datetime64(value, "s").astype("datetime64[s]").item().replace(tzinfo=UTC)


def validate_stac(collection_url: str, *, storage_options: StorageOptions = None) -> int:
    """Validate a collection and its items against the STAC core schemas; returns the items checked.

    pystac bundles the core schemas, so this runs offline; extension schemas (projection) would be
    fetched from the web, so their fields are not schema-checked here. Raises
    ``pystac.errors.STACValidationError`` on the first invalid document.
    """
    from pystac.validation import validate_dict

    stac_io = FsspecStacIO(storage_options)
    collection = pystac.Collection.from_file(collection_url, stac_io=stac_io)
    validate_dict(collection.to_dict(), extensions=[])
    count = 0
    for item in collection.get_items(recursive=True):
        validate_dict(item.to_dict(), extensions=[])
        count += 1
    return count


def write_outputs(
    store_url: str,
    out_dir: str,
    *,
    cogs: bool = False,
    quicklooks: bool = True,
    stac: bool = True,
    storage_options: StorageOptions = None,
    out_storage_options: StorageOptions = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, str]:
    """The files of one finished store (a mosaic or a calendar) under ``out_dir``: ``cogs/``,
    ``quicklooks/`` (the σ files beside the reflectance's, ``*_sigma``, when the store has σ) and
    ``stac/collection.json``, validated. Returns each kind written -> its folder (``stac``: the URL)."""
    info = mosaic_info(store_url, storage_options=storage_options)
    options: dict[str, Any] = {
        "storage_options": storage_options,
        "out_storage_options": out_storage_options,
        "overwrite": overwrite,
        "progress": progress,
    }
    written: dict[str, str] = {}
    cog_files: dict[str, str] | None = None
    sigma_cogs: dict[str, str] | None = None
    looks: dict[str, str] | None = None
    sigma_looks: dict[str, str] | None = None
    if cogs:
        cog_files = write_cogs(store_url, _join(out_dir, "cogs"), **options)
        if info.sigma:
            sigma_cogs = write_cogs(store_url, _join(out_dir, "cogs"), variable=DECLOUDED_SIGMA, **options)
        written["cogs"] = _join(out_dir, "cogs")
    if quicklooks:
        looks = write_quicklooks(store_url, _join(out_dir, "quicklooks"), **options)
        if info.sigma:
            sigma_looks = write_sigma_quicklooks(store_url, _join(out_dir, "quicklooks"), **options)
        written["quicklooks"] = _join(out_dir, "quicklooks")
    if stac:
        collection = write_stac(
            store_url,
            _join(out_dir, "stac"),
            cogs=cog_files,
            quicklooks=looks,
            sigma_cogs=sigma_cogs,
            sigma_quicklooks=sigma_looks,
            storage_options=storage_options,
            out_storage_options=out_storage_options,
            overwrite=overwrite,
        )
        validate_stac(collection, storage_options=out_storage_options)
        written["stac"] = collection
    return written
