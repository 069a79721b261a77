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
    DECLOUDED,
    QUALITY,
    REGION_EXPECTED,
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
    return f"mosaic_{info.epsg}"


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
) -> dict[str, str]:
    """Write one validated COG per date (all dates, or ``dates``); returns ISO date -> URL."""
    from rio_cogeo.cogeo import cog_translate, cog_validate

    ds = open_mosaic(mosaic_url, storage_options=storage_options)
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    fs, root = fsspec.core.url_to_fs(out_dir, **dict(out_storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    imagery = ds[DECLOUDED]
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
        "nodata": S2_NODATA,
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
            name = f"{_stem(info)}_{day}.tif"
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
                    nodata=S2_NODATA,
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
                progress(done + 1, len(indices), f"COG {day}")
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
    step = max(1, math.ceil(max(info.grid.shape) / max_size))
    fs, root = fsspec.core.url_to_fs(out_dir, **dict(out_storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    written: dict[str, str] = {}
    indices = _select_dates(ds, dates, info)
    for done, t in enumerate(indices):
        day = _day(ds["time"].values[t])
        name = f"{_stem(info)}_{day}.png"
        url = _join(out_dir, name)
        _refuse_existing(url, fs, _join(root, name), overwrite)
        # Decimate (every step-th pixel) rather than average: a quicklook, not a product.
        rgb = ds[DECLOUDED].isel(time=t, y=slice(None, None, step), x=slice(None, None, step))
        rgba = quicklook_rgba(rgb.sel(band=list(bands)).values)
        with fs.open(_join(root, name), "wb") as f:
            Image.fromarray(rgba, mode="RGBA").save(f, format="PNG", optimize=True)
        written[day] = url
        if progress is not None:
            progress(done + 1, len(indices), f"quicklook {day}")
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
    collection_id: str | None = None,
    storage_options: StorageOptions = None,
    out_storage_options: StorageOptions = None,
    overwrite: bool = False,
) -> str:
    """Write a STAC collection (one item per date) describing a mosaic; returns the collection's URL.

    ``cogs`` and ``quicklooks`` map ISO dates to the files :func:`write_cogs` and
    :func:`write_quicklooks` wrote; they become the items' ``cog`` and ``quicklook`` assets. Every item
    has the ``zarr`` asset (the whole mosaic with its quality layer).
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
    times = [np.datetime64(t, "D") for t in ds["time"].values[_select_dates(ds, None, info)]]
    as_datetime = [t.astype("datetime64[s]").item().replace(tzinfo=UTC) for t in times]
    collection = pystac.Collection(
        id=collection_id,
        description=(
            f"Declouded Sentinel-2 mosaic of UTM zone EPSG:{info.epsg}: reflectance x 10000 of bands "
            f"{', '.join(info.bands)} (0 = no data) and a per-pixel quality layer '{QUALITY}' "
            "(days to the nearest clear observation)."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[as_datetime[0], as_datetime[-1]]])
        ),
        license=STAC_LICENSE,
        title=f"declouder mosaic EPSG:{info.epsg}",
    )
    height, width = info.grid.shape
    transform = list(ds.rio.transform())[:6]
    for day, when in zip(times, as_datetime, strict=True):
        iso = str(day)
        item = pystac.Item(
            id=f"{collection_id}-{iso}",
            geometry=geometry,
            bbox=bbox,
            datetime=when,
            properties={"constellation": "sentinel-2"},
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
                title=f"Zarr mosaic, all dates: {DECLOUDED} and {QUALITY}",
            ),
        )
        if cogs and iso in cogs:
            item.add_asset(
                "cog",
                pystac.Asset(href=cogs[iso], media_type=pystac.MediaType.COG, roles=["data"], title=iso),
            )
        if quicklooks and iso in quicklooks:
            item.add_asset(
                "quicklook",
                pystac.Asset(href=quicklooks[iso], media_type=pystac.MediaType.PNG, roles=["overview"]),
            )
        collection.add_item(item)
    collection.normalize_hrefs(out_dir)
    collection.make_all_asset_hrefs_relative()
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=FsspecStacIO(out_storage_options))
    return collection_url


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
