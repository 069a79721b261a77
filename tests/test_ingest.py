"""Ingest end to end: a real STAC API (rustac) on loopback serving items made from real recorded
Planetary Computer / Earth Search items, whose assets are COGs of real Sentinel-2 / Sentinel-1 rasters
(tests/data/stac, see SOURCE.txt). Outputs are compared with the source rasters themselves."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from stac_server import Fault, faulty_proxy, file_server, rustac_server, serve_items

from ingest import (
    AssetReadError,
    CatalogError,
    CatalogMismatchError,
    IngestConfig,
    IngestConfigError,
    IngestSummary,
    NoS2ItemsError,
    ProgressEvent,
    ingest_tile,
)
from ingest.catalogs import PLANETARY_COMPUTER
from ingest.masks import scl_to_mask
from ingest.sample import SAMPLE_DIR, build_item_dict, load_site, sample_items, write_sample_catalog
from tiler.errors import OutputExistsError, TileIncompleteError
from tiler.grid import TileRef
from tiler.store import MaskClass, open_tile, tile_status

SITE = load_site()
TILE = SITE.tile()
S2_TIMES = np.array([r["datetime"].rstrip("Z") for r in SITE.s2], dtype="datetime64[ns]")
S1_TIMES = np.array([r["datetime"].rstrip("Z") for r in SITE.s1], dtype="datetime64[ns]")


def config(**overrides: Any) -> IngestConfig:
    """The sample's period and bands; raw SCL masks (no dilation, no refinement) unless overridden;
    quick back-off so failure tests stay fast."""
    settings: dict[str, Any] = {
        "start": "2019-03-20",
        "end": "2019-07-31",
        "bands": SITE.bands,
        "mask_dilation_px": 0,
        "refine_bright": False,
        "retries": 2,
        "backoff_s": 0.01,
        "timeout_s": 5.0,
    }
    settings.update(overrides)
    return IngestConfig(**settings)


def source(
    record: dict[str, Any], asset: str, root: Path = SAMPLE_DIR, factor: int | None = None
) -> np.ndarray:
    """A source COG's pixels on the 10 m grid (coarser pixels replicated: they cover whole 10 m pixels)."""
    with rasterio.open(root / record["assets"][asset]["file"]) as src:
        data = src.read(1)
        scale = factor or round(src.transform.a / 10)
    return np.repeat(np.repeat(data, scale, 0), scale, 1)


def load(url: str | Path, **kwargs: Any) -> xr.Dataset:
    return open_tile(str(url), **kwargs).load()


@dataclass(frozen=True)
class SampleCatalog:
    """The committed sample as an ItemCollection file and the collections it needs."""

    items: Path
    collections: tuple[Path, ...]


@pytest.fixture(scope="module")
def sample_catalog(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    out = tmp_path_factory.mktemp("sample-catalog")
    items = write_sample_catalog(out, copy_rasters=False)
    return SampleCatalog(items=items, collections=tuple(sorted(out.glob("collection-*.json"))))


@pytest.fixture(scope="module")
def stac_api(sample_catalog: SampleCatalog) -> Iterator[str]:
    """A real STAC API (rustac) on loopback serving the sample's S2 and S1 items."""
    with rustac_server([*sample_catalog.collections, sample_catalog.items]) as url:
        yield url


@pytest.fixture(scope="module")
def api_tile(stac_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[IngestSummary, xr.Dataset]:
    out = tmp_path_factory.mktemp("api") / "tile.zarr"
    summary = ingest_tile(TILE, str(out), config(catalog=stac_api))
    return summary, load(out)


# --- the tile is the source data ------------------------------------------------------------------------


def test_api_tile_pixels_equal_the_source_rasters(api_tile: tuple[IngestSummary, xr.Dataset]) -> None:
    _, ds = api_tile
    assert ds.attrs["declouder_status"] == "complete"
    assert list(ds["band"].values) == list(SITE.bands)
    np.testing.assert_array_equal(ds["time"].values, S2_TIMES)
    assert ds["x"].values[0] == TILE.bounds[0] + 5 and ds["y"].values[0] == TILE.bounds[3] - 5
    assert ds.rio.crs.to_epsg() == 32631
    for t, record in enumerate(SITE.s2):
        for b, band in enumerate(SITE.bands):
            np.testing.assert_array_equal(
                ds["s2"].values[t, b], source(record, band), err_msg=f"{record['id']} {band}"
            )
        np.testing.assert_array_equal(ds["mask"].values[t], scl_to_mask(source(record, "SCL")))


def test_api_tile_s1_is_db_of_the_paired_acquisition(api_tile: tuple[IngestSummary, xr.Dataset]) -> None:
    _, ds = api_tile
    by_time = {np.datetime64(r["datetime"].rstrip("Z"), "ns"): r for r in SITE.s1}
    for t in range(ds.sizes["time"]):
        record = by_time[ds["s1_time"].values[t]]
        for p, pol in enumerate(("vv", "vh")):
            expected = 10 * np.log10(source(record, pol).astype(np.float64))
            np.testing.assert_allclose(ds["s1"].values[t, p], expected, atol=1e-4)


def test_pairing_picks_the_nearest_s1_within_the_window(api_tile: tuple[IngestSummary, xr.Dataset]) -> None:
    summary, ds = api_tile
    window = np.timedelta64(6, "D")
    for t, s2_time in enumerate(S2_TIMES):
        gaps = np.abs(S1_TIMES - s2_time)
        nearest = S1_TIMES[np.argmin(gaps)]
        assert gaps.min() <= window
        assert ds["s1_time"].values[t] == nearest
        assert summary.dates[t].s1_gap_days == pytest.approx((nearest - s2_time) / np.timedelta64(1, "D"))
    assert summary.s1_orbit == "ascending" and summary.n_paired == len(S2_TIMES)


def test_a_narrow_window_leaves_dates_unpaired(stac_api: str, tmp_path: Path) -> None:
    summary = ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=stac_api, s1_window_days=0.5))
    ds = load(tmp_path / "t.zarr")
    for t, s2_time in enumerate(S2_TIMES):
        paired = np.abs(S1_TIMES - s2_time).min() <= np.timedelta64(12, "h")
        assert paired == (not np.isnat(ds["s1_time"].values[t]))
        assert paired == bool(np.isfinite(ds["s1"].values[t]).all())
    assert 0 < summary.n_paired < len(S2_TIMES)


def test_item_collection_gives_the_same_tile_as_the_api(
    api_tile: tuple[IngestSummary, xr.Dataset], sample_catalog: SampleCatalog, tmp_path: Path
) -> None:
    _, from_api = api_tile
    ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=str(sample_catalog.items)))
    from_file = load(tmp_path / "t.zarr")
    for var in ("s2", "s1", "mask", "s1_time"):
        np.testing.assert_array_equal(from_file[var].values, from_api[var].values)


def test_summary_reports_dates_pairing_and_cloud_cover(api_tile: tuple[IngestSummary, xr.Dataset]) -> None:
    summary, ds = api_tile
    text = summary.table()
    assert "2019-05-01T10:57:03" in text and "S1 orbit ascending" in text
    by_id = {r["id"]: r for r in SITE.s2}
    for day, t in zip(summary.dates, range(ds.sizes["time"]), strict=True):
        assert day.item_cloud_cover == pytest.approx(by_id[day.items[0]]["properties"]["eo:cloud_cover"])
        cloudy = np.isin(ds["mask"].values[t], (MaskClass.CLOUD, MaskClass.SHADOW)).mean() * 100
        assert day.tile_cloud_pct == pytest.approx(cloudy)


def test_masks_dilate_and_refine_when_asked(
    stac_api: str, tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    _, raw = api_tile
    ingest_tile(
        TILE, str(tmp_path / "t.zarr"), config(catalog=stac_api, mask_dilation_px=2, refine_bright=True)
    )
    ds = load(tmp_path / "t.zarr")
    grown = ds["mask"].values != MaskClass.CLEAR
    before = raw["mask"].values != MaskClass.CLEAR
    assert (grown >= before).all() and grown.sum() > before.sum()
    np.testing.assert_array_equal(ds["s2"].values, raw["s2"].values)


# --- grid, footprints and same-day granules -------------------------------------------------------------


def test_grid_tile_holds_the_site_where_it_lies_and_nodata_elsewhere(
    stac_api: str, tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    _, site_ds = api_tile
    tile = TileRef(32631, 78, 1597)  # 384×768 px containing the 64×64 px site
    ingest_tile(
        tile, str(tmp_path / "t.zarr"), config(catalog=stac_api, start="2019-04-01", end="2019-04-21")
    )
    ds = load(tmp_path / "t.zarr")
    assert ds.sizes["y"] == 384 and ds.sizes["x"] == 768 and ds.attrs["tile_id"] == "32631_c0078_r1597"
    row = round((tile.bounds[3] - TILE.bounds[3]) / 10)
    col = round((TILE.bounds[0] - tile.bounds[0]) / 10)
    inside = (slice(None), slice(row, row + 64), slice(col, col + 64))
    expected = site_ds.sel(time=ds["time"].values)
    np.testing.assert_array_equal(
        ds["s2"].values[:, :, row : row + 64, col : col + 64], expected["s2"].values
    )
    np.testing.assert_array_equal(ds["mask"].values[inside], expected["mask"].values)
    outside = np.ones(ds["mask"].shape[1:], dtype=bool)
    outside[row : row + 64, col : col + 64] = False
    assert (ds["mask"].values[:, outside] == MaskClass.NODATA).all()
    assert (ds["s2"].values[:, :, outside] == 0).all()
    assert np.isnan(ds["s1"].values[:, :, outside]).all()


def test_full_size_tile_chunks_use_large_blosc_blocks_and_read_back(
    stac_api: str, tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    """A 384×768 tile's dates (s2 5.9 MB, s1 2.4 MB a chunk) are compressed in 1 MiB blosc blocks, the
    mask (0.3 MB) in blosc's own; plain xarray reads the store back to the pixels ingested."""
    import zarr

    from tiler.store import TILE_BLOCK_BYTES

    tile = TileRef(32631, 78, 1597)
    ingest_tile(
        tile, str(tmp_path / "t.zarr"), config(catalog=stac_api, start="2019-04-01", end="2019-04-21")
    )
    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")

    def blocksize(var: str) -> int:
        (codec,) = group[var].compressors
        return int(codec.blocksize)

    assert blocksize("s2") == blocksize("s1") == TILE_BLOCK_BYTES
    assert blocksize("mask") == 0  # 0: blosc chooses
    plain = xr.open_zarr(tmp_path / "t.zarr").load()
    row = round((tile.bounds[3] - TILE.bounds[3]) / 10)
    col = round((TILE.bounds[0] - tile.bounds[0]) / 10)
    _, site_ds = api_tile
    expected = site_ds.sel(time=plain["time"].values)
    np.testing.assert_array_equal(
        plain["s2"].values[:, :, row : row + 64, col : col + 64], expected["s2"].values
    )
    np.testing.assert_array_equal(
        plain["s1"].values[:, :, row : row + 64, col : col + 64], expected["s1"].values
    )


def _write_cogs(
    record: dict[str, Any],
    out: Path,
    item_id: str,
    edit: Callable[[str, np.ndarray], np.ndarray],
    rows: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """A copy of a sample record with edited (and optionally cropped, in 10 m rows) rasters under ``out``."""
    new = copy.deepcopy(record)
    new["id"] = item_id
    for name, raster in record["assets"].items():
        with rasterio.open(SAMPLE_DIR / raster["file"]) as src:
            profile, data = src.profile, src.read(1)
        transform = src.transform
        if rows is not None:
            scale = round(transform.a / 10)
            first, last = rows[0] // scale, rows[1] // scale
            data = data[first:last]
            transform = transform @ Affine.translation(0, first)
        data = edit(name, data)
        path = out / item_id / f"{name}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile.update(driver="COG", height=data.shape[0], transform=transform)
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        new["assets"][name] = {
            **raster,
            "file": f"{item_id}/{name}.tif",
            "shape": list(data.shape),
            "transform": list(transform)[:6],
        }
    return new


def _items(
    records: list[dict[str, Any]], root: Path, collection: str = "sentinel-2-l2a"
) -> list[dict[str, Any]]:
    return [build_item_dict(r, root, collection=collection, profile=PLANETARY_COMPUTER) for r in records]


def test_same_day_granules_become_one_date(
    stac_api: str, tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    _, whole = api_tile
    k = 6  # 2019-04-26: partly cloudy, so SCL and reflectance both vary across the split
    keep = lambda name, data: data  # noqa: E731
    north = _write_cogs(SITE.s2[k], tmp_path, "T31UES_north", keep, rows=(0, 40))
    south = _write_cogs(SITE.s2[k], tmp_path, "T31UFS_south", keep, rows=(24, 64))
    s2, s1 = sample_items()
    items = [*s2[:k], *s2[k + 1 :], *_items([north, south], tmp_path), *s1]
    with serve_items(items, tmp_path / "api") as url:
        summary = ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=url))
    ds = load(tmp_path / "t.zarr")
    np.testing.assert_array_equal(ds["time"].values, S2_TIMES)
    assert set(summary.dates[k].items) == {"T31UES_north", "T31UFS_south"}
    for var in ("s2", "mask", "s1"):
        np.testing.assert_array_equal(ds[var].values, whole[var].values)


def test_a_date_without_data_over_the_tile_is_dropped_with_its_reason(
    stac_api: str, tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    _, whole = api_tile
    k = 4
    empty = _write_cogs(SITE.s2[k], tmp_path, "T31UES_empty", lambda name, data: np.zeros_like(data))
    s2, s1 = sample_items()
    items = [*s2[:k], *_items([empty], tmp_path), *s2[k + 1 :], *s1]
    with serve_items(items, tmp_path / "api") as url:
        summary = ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=url))
    ds = load(tmp_path / "t.zarr")
    assert [(s.item_id, s.reason) for s in summary.skipped] == [
        ("T31UES_empty", "no valid pixel over the tile (its footprint misses the tile)")
    ]
    kept = np.delete(np.arange(len(S2_TIMES)), k)
    np.testing.assert_array_equal(ds["time"].values, S2_TIMES[kept])
    for var in ("s2", "mask", "s1", "s1_time"):
        np.testing.assert_array_equal(ds[var].values, whole[var].values[kept])


def test_bilinear_bands_go_through_the_warper_and_scl_stays_nearest(
    stac_api: str, tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    """20 m bands resampled bilinearly make the S2 reads go through stackstac; SCL (a class map) is still
    read with nearest, so the mask is the nearest one; 10 m bands keep their values."""
    _, nearest = api_tile
    ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=stac_api, resampling="bilinear"))
    ds = load(tmp_path / "t.zarr")
    np.testing.assert_array_equal(ds["mask"].values, nearest["mask"].values)
    ten_m = [b for b in SITE.bands if b in ("B02", "B03", "B04", "B08")]
    np.testing.assert_array_equal(ds["s2"].sel(band=ten_m).values, nearest["s2"].sel(band=ten_m).values)
    assert (ds["s2"].sel(band="B05").values != nearest["s2"].sel(band="B05").values).mean() > 0.3


def test_progress_reports_every_step_one_event_at_a_time(stac_api: str, tmp_path: Path) -> None:
    """S1 is read while the masks are computed; its events come from the reader thread, but callbacks
    never run two at a time, and every step ends with done == total."""
    import threading
    import time

    events: list[ProgressEvent] = []
    running = threading.Event()
    overlaps = 0

    def progress(event: ProgressEvent) -> None:
        nonlocal overlaps
        if running.is_set():
            overlaps += 1
        running.set()
        time.sleep(0.005)  # long enough for a concurrent call to be seen
        events.append(event)
        running.clear()

    ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=stac_api), progress=progress)
    assert overlaps == 0
    last = {e.step: e for e in events}
    assert set(last) == {"search", "s2", "masks", "s1", "write"}
    assert all(e.done == e.total for e in last.values())


@dataclass(frozen=True)
class OffsetCase:
    baseline: str | None
    added: int
    removed: int


@pytest.mark.parametrize(
    "case",
    [
        OffsetCase("05.10", 1000, 1000),  # baseline >= 04.00: DN carry +1000, removed
        OffsetCase("04.00", 1000, 1000),
        OffsetCase("02.14", 0, 0),  # older baselines: untouched
        OffsetCase(None, 0, 0),  # no property, 2019 acquisition: untouched
    ],
)
def test_boa_offset_is_removed_only_for_baseline_04_and_later(case: OffsetCase, tmp_path: Path) -> None:
    k = 2  # 2019-04-01, clear
    record = _write_cogs(
        SITE.s2[k],
        tmp_path,
        "offset-item",
        lambda name, data: (
            data if name == "SCL" else np.where(data > 0, data + case.added, 0).astype(data.dtype)
        ),
    )
    if case.baseline:
        record["properties"]["s2:processing_baseline"] = case.baseline
    s1 = sample_items()[1]
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [*_items([record], tmp_path), *s1]}))
    summary = ingest_tile(
        TILE, str(tmp_path / "t.zarr"), config(catalog=str(path), start="2019-04-01", end="2019-04-01")
    )
    ds = load(tmp_path / "t.zarr")
    assert summary.dates[0].boa_offset == case.removed
    for b, band in enumerate(SITE.bands):
        np.testing.assert_array_equal(
            ds["s2"].values[0, b], source(SITE.s2[k], band) + case.added - case.removed
        )


# --- catalogues: Earth Search names, filters, missing data ----------------------------------------------


def test_earth_search_items_give_the_same_tile(
    tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    _, pc_tile = api_tile
    s2, s1 = sample_items(profile="earth-search")
    assert "blue" in s2[0]["assets"] and "B02" not in s2[0]["assets"]
    with serve_items([*s2, *s1], tmp_path / "api", profile="earth-search") as url:
        summary = ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=url))
        with pytest.raises(
            CatalogMismatchError, match=r"carry earth-search asset names.*--profile earth-search"
        ):
            ingest_tile(TILE, str(tmp_path / "u.zarr"), config(catalog=url, profile="planetary-computer"))
    assert summary.profile == "earth-search"
    ds = load(tmp_path / "t.zarr")
    for var in ("s2", "s1", "mask"):
        np.testing.assert_array_equal(ds[var].values, pc_tile[var].values)
    assert not (tmp_path / "u.zarr").exists()


def test_max_cloud_skips_items_client_side(stac_api: str, tmp_path: Path) -> None:
    summary = ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=stac_api, max_cloud=50))
    covers = {r["id"]: r["properties"]["eo:cloud_cover"] for r in SITE.s2}
    assert {d.items[0] for d in summary.dates} == {i for i, c in covers.items() if c <= 50}
    skipped = {s.item_id: s.reason for s in summary.skipped}
    assert set(skipped) == {i for i, c in covers.items() if c > 50}
    assert all(
        reason.startswith("eo:cloud_cover") and "> max_cloud 50" in reason for reason in skipped.values()
    )


def test_all_items_too_cloudy_writes_nothing(stac_api: str, tmp_path: Path) -> None:
    out = tmp_path / "t.zarr"
    with pytest.raises(
        NoS2ItemsError, match=r"all 1 sentinel-2-l2a items were skipped.*eo:cloud_cover 100.0"
    ):
        ingest_tile(
            TILE, str(out), config(catalog=stac_api, start="2019-03-27", end="2019-03-27", max_cloud=50)
        )
    assert not out.exists()


def test_no_s2_items_is_an_error_and_an_existing_store_survives(
    stac_api: str, tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    out = tmp_path / "t.zarr"
    ingest_tile(TILE, str(out), config(catalog=stac_api, start="2019-04-01", end="2019-04-01"))
    before = load(out)
    with pytest.raises(
        NoS2ItemsError, match=r"no sentinel-2-l2a items .* between 2018-01-01 and 2018-01-31.*nothing"
    ):
        ingest_tile(
            TILE, str(out), config(catalog=stac_api, start="2018-01-01", end="2018-01-31"), overwrite=True
        )
    assert tile_status(str(out)) == "complete"
    xr.testing.assert_identical(load(out), before)


def test_no_s1_at_all_writes_nan_s1_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s2, _ = sample_items()
    with serve_items(s2, tmp_path / "api") as url:
        summary = ingest_tile(
            TILE, str(tmp_path / "t.zarr"), config(catalog=url, start="2019-04-01", end="2019-04-30")
        )
    ds = load(tmp_path / "t.zarr")
    assert np.isnan(ds["s1"].values).all() and np.isnat(ds["s1_time"].values).all()
    assert ds.sizes["time"] == 5
    assert any("no Sentinel-1 item" in w and "noise input" in w for w in summary.warnings)
    assert "no Sentinel-1 item" in caplog.text


def test_item_without_an_expected_asset_is_skipped(tmp_path: Path) -> None:
    s2, s1 = sample_items()
    broken = copy.deepcopy(s2[2])
    del broken["assets"]["B05"]
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [*s2[:2], broken, *s1]}))
    summary = ingest_tile(
        TILE, str(tmp_path / "t.zarr"), config(catalog=str(path), start="2019-03-20", end="2019-04-05")
    )
    assert [s.item_id for s in summary.skipped] == [broken["id"]]
    assert summary.skipped[0].reason == "missing asset(s) B05"
    np.testing.assert_array_equal(load(tmp_path / "t.zarr")["time"].values, S2_TIMES[:2])


# --- failures: retried, then clear errors; bad input refused before any request --------------------------


def test_catalogue_500s_are_retried(stac_api: str, tmp_path: Path) -> None:
    with faulty_proxy(stac_api, Fault(fail=lambda n, method, path: n <= 2)) as (url, seen):
        summary = ingest_tile(
            TILE, str(tmp_path / "t.zarr"), config(catalog=url, start="2019-04-01", end="2019-04-30")
        )
    assert len(summary.dates) == 5 and len(seen) > 2


def test_catalogue_answering_500_fails_clearly(stac_api: str, tmp_path: Path) -> None:
    expected = r"STAC API http://127.0.0.1:\d+: could not open the catalogue after 2 retries.* \(HTTP 500"
    with (
        faulty_proxy(stac_api, Fault(fail=lambda n, method, path: True)) as (url, seen),
        pytest.raises(CatalogError, match=expected),
    ):
        ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=url))
    assert len(seen) == 3  # one request and two retries
    assert not (tmp_path / "t.zarr").exists()


def test_catalogue_timing_out_fails_clearly(stac_api: str, tmp_path: Path) -> None:
    fault = Fault(fail=lambda n, method, path: method == "POST", delay_s=1.5)
    with (
        faulty_proxy(stac_api, fault) as (url, seen),
        pytest.raises(
            CatalogError,
            match=r"could not search collection 'sentinel-2-l2a' after 1 retries.*Read timed out",
        ),
    ):
        ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=url, timeout_s=0.5, retries=1))
    assert sum(method == "POST" for method, _ in seen) == 2


def _over_http(items: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    text = json.dumps(items).replace(SAMPLE_DIR.resolve().as_uri(), base)
    return json.loads(text)


def test_transient_asset_errors_are_retried(
    tmp_path: Path, api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    _, local = api_tile
    s2, s1 = sample_items()
    with file_server(SAMPLE_DIR, fail=lambda n, path: n <= 3) as (base, seen):
        path = tmp_path / "items.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": _over_http([s2[2], *s1], base)}))
        ingest_tile(
            TILE, str(tmp_path / "t.zarr"), config(catalog=str(path), start="2019-04-01", end="2019-04-01")
        )
    ds = load(tmp_path / "t.zarr")
    np.testing.assert_array_equal(ds["s2"].values[0], local["s2"].values[2])
    assert len(seen) > 3


def test_asset_failing_for_good_names_the_asset(tmp_path: Path) -> None:
    s2, s1 = sample_items()
    waits: list[float] = []
    with file_server(SAMPLE_DIR, fail=lambda n, path: path.endswith("/B04.tif")) as (base, _):
        path = tmp_path / "items.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": _over_http([s2[2], *s1], base)}))
        with pytest.raises(
            AssetReadError, match=f"could not read asset 'B04' of item '{s2[2]['id']}'.*after 2 retries"
        ):
            ingest_tile(
                TILE,
                str(tmp_path / "t.zarr"),
                config(catalog=str(path), start="2019-04-01", end="2019-04-01"),
                sleep=waits.append,
            )
    assert waits == [0.01, 0.02]  # exponential back-off between our own attempts
    assert not (tmp_path / "t.zarr").exists()


@dataclass(frozen=True)
class DegreesTile:
    """A tile target whose bounds were (wrongly) given in lon/lat."""

    epsg: int = 32631
    bounds: tuple[float, float, float, float] = (4.05, 50.74, 4.08, 50.76)
    resolution: float = 10.0
    tile_id: str = "degrees"


def test_bad_bounds_and_existing_output_are_refused_before_any_request(stac_api: str, tmp_path: Path) -> None:
    with faulty_proxy(stac_api, Fault(fail=lambda n, method, path: False)) as (url, seen):
        with pytest.raises(IngestConfigError, match=r"tile 'degrees'.*outside EPSG:32631's area of use"):
            ingest_tile(DegreesTile(), str(tmp_path / "t.zarr"), config(catalog=url))
        (tmp_path / "done.zarr").mkdir()
        (tmp_path / "done.zarr" / "zarr.json").write_text(
            json.dumps({"attributes": {"declouder_status": "complete"}})
        )
        with pytest.raises(OutputExistsError, match=r"already exists \(complete\); pass overwrite=True"):
            ingest_tile(TILE, str(tmp_path / "done.zarr"), config(catalog=url))
    assert seen == []


# --- object storage and interrupted writes --------------------------------------------------------------


def test_s3_output_and_an_interrupted_write_never_look_complete(
    stac_api: str, s3_endpoint: dict[str, Any], api_tile: tuple[IngestSummary, xr.Dataset]
) -> None:
    _, local = api_tile
    april = config(catalog=stac_api, start="2019-04-01", end="2019-04-30")  # 5 dates: moto is slow
    url = "s3://declouder-test/ingest/tile.zarr"
    endpoint = s3_endpoint["client_kwargs"]["endpoint_url"]  # type: ignore[index]
    # The object store starts refusing writes part-way through the store (after its first 4 PUTs).
    puts = {"n": 0}

    def fail_after_four_puts(n: int, method: str, path: str) -> bool:
        puts["n"] += method == "PUT"
        return method == "PUT" and puts["n"] > 4

    with faulty_proxy(endpoint, Fault(fail=fail_after_four_puts, status=403)) as (proxy, _):
        options = {**s3_endpoint, "client_kwargs": {**s3_endpoint["client_kwargs"], "endpoint_url": proxy}}  # type: ignore[dict-item]
        with pytest.raises(PermissionError):  # s3fs raises it for the refused (403) PUT
            ingest_tile(TILE, url, april, storage_options=options)
    assert tile_status(url, s3_endpoint) == "writing"
    with pytest.raises(TileIncompleteError, match=r"incomplete"):
        open_tile(url, storage_options=s3_endpoint)
    # A rerun replaces it and marks it complete.
    ingest_tile(TILE, url, april, storage_options=s3_endpoint, overwrite=True)
    ds = load(url, storage_options=s3_endpoint)
    expected = local.sel(time=ds["time"].values)
    assert ds.sizes["time"] == 5
    for var in ("s2", "s1", "mask"):
        np.testing.assert_array_equal(ds[var].values, expected[var].values)


# --- all 12 bands, 60 m bands, no SCL: the BigEarthNet patch --------------------------------------------


def test_all_bands_and_fallback_masks_without_scl(tmp_path: Path) -> None:
    patch = load_site("bigearthnet_33uup")
    assert len(patch.bands) == 12 and "SCL" not in patch.s2[0]["assets"]
    path = tmp_path / "items.json"
    s2, s1 = sample_items(patch)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [*s2, *s1]}))
    settings = {"catalog": str(path), "start": "2017-06-13", "end": "2017-06-13", "bands": patch.bands}
    with pytest.raises(NoS2ItemsError, match=r"missing asset\(s\) SCL"):
        ingest_tile(patch.tile(), str(tmp_path / "scl.zarr"), config(**settings))
    summary = ingest_tile(patch.tile(), str(tmp_path / "t.zarr"), config(**settings, cloud_mask="fallback"))
    ds = load(tmp_path / "t.zarr")
    assert ds.sizes["y"] == ds.sizes["x"] == 120
    for b, band in enumerate(patch.bands):  # 10 m as is, 20 m and 60 m replicated (nearest)
        np.testing.assert_array_equal(ds["s2"].values[0, b], source(patch.s2[0], band))
    original_db = {"vv": "VV", "vh": "VH"}
    ben = Path(__file__).parent / "data" / "stac"
    for p, pol in enumerate(original_db):
        np.testing.assert_allclose(
            ds["s1"].values[0, p], 10 * np.log10(source(patch.s1[0], pol, ben).astype(np.float64)), atol=1e-4
        )
    assert summary.dates[0].s1_gap_days == pytest.approx(6 / 24 + 40 / 1440 + 12 / 86400, abs=1e-3)
    assert set(np.unique(ds["mask"].values)) <= {MaskClass.CLEAR, MaskClass.CLOUD, MaskClass.SHADOW}


def test_fallback_mask_sees_the_bands_a_pixel_has_before_it_is_zeroed(tmp_path: Path) -> None:
    """Pixels missing one band (B04 blanked over a cloud edge of a real cloudy date) are zeroed in every
    band of the tile, but the fallback cloud test, whose filters reach across pixels, sees the bands
    they have, as on the rasters (zeroed first, 122 of its pixels would differ)."""
    from ingest.masks import fallback_mask

    k = 17  # 2019-07-05: three quarters cloud by the fallback test
    blank = (slice(16, 48), slice(0, 32))  # 10 m pixels (B04 is a 10 m band)

    def blank_b04(name: str, data: np.ndarray) -> np.ndarray:
        if name != "B04":
            return data
        out = data.copy()
        out[blank] = 0
        return out

    record = _write_cogs(SITE.s2[k], tmp_path, "S2_blanked", blank_b04)
    _, s1 = sample_items()
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [*_items([record], tmp_path), *s1]}))
    ingest_tile(TILE, str(tmp_path / "t.zarr"), config(catalog=str(path), cloud_mask="fallback"))
    ds = load(tmp_path / "t.zarr")
    rasters = np.stack([source(record, band, tmp_path) for band in SITE.bands])[None]
    np.testing.assert_array_equal(ds["mask"].values, fallback_mask(rasters, SITE.bands))
    assert (ds["s2"].values[0][:, blank[0], blank[1]] == 0).all()
    assert (ds["mask"].values[0][blank] == MaskClass.NODATA).all()


# --- the command line -----------------------------------------------------------------------------------


def test_cli_ingest_prints_the_summary_and_errors_in_one_line(
    sample_catalog: SampleCatalog, tmp_path: Path
) -> None:
    base = [
        sys.executable,
        "-m",
        "campaign.cli",
        "ingest",
        "--catalog",
        str(sample_catalog.items),
        "--bands",
        ",".join(SITE.bands),
        "--start",
        "2019-04-01",
        "--end",
        "2019-04-21",
    ]
    ok = subprocess.run(
        [
            *base,
            "--bounds",
            ",".join(str(int(b)) for b in TILE.bounds),
            "--epsg",
            "32631",
            "--out",
            str(tmp_path / "t.zarr"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "4 dates, 4 paired with S1" in ok.stdout and "2019-04-21T10:57:02" in ok.stdout
    assert tile_status(str(tmp_path / "t.zarr")) == "complete"
    bad = subprocess.run(
        [*base, "--bounds", "4.05,50.74,4.08,50.76", "--epsg", "32631", "--out", str(tmp_path / "u.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "outside EPSG:32631's area of use" in bad.stderr and "Traceback" not in bad.stderr
