"""Ingest building blocks on real recorded items and real rasters: config checks, catalogue profiles,
S1 pairing, masks, the item sources and the read helpers."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio

from ingest.catalogs import (
    EARTH_SEARCH,
    PLANETARY_COMPUTER,
    check_profile,
    detect_profile,
    profile_for_url,
)
from ingest.config import IngestConfig, TileBox, lonlat_bounds
from ingest.errors import CatalogError, CatalogMismatchError, IngestConfigError
from ingest.load import first_valid, remove_boa_offset, remove_boa_offset_inplace, to_db
from ingest.masks import (
    SCL_TO_MASK,
    _sort_planes,
    clear_median,
    dilate,
    fallback_mask,
    refine_bright,
    scl_to_mask,
)
from ingest.pairing import group_acquisitions, pair_s1
from ingest.sample import SAMPLE_DIR, build_item, load_site, sample_items
from ingest.search import ItemCollectionSource
from tiler.grid import TileRef
from tiler.store import MaskClass

TEMPLATES = SAMPLE_DIR / "templates"
SITE_BOUNDS = (574680.0, 5621800.0, 575320.0, 5622440.0)


def template(name: str) -> pystac.Item:
    return pystac.Item.from_dict(json.loads((TEMPLATES / name).read_text()))


# --- configuration: rejected before any request -------------------------------------------------------


def test_config_rejects_reversed_dates() -> None:
    with pytest.raises(IngestConfigError, match=r"end: 2019-01-01 is before start 2019-02-01"):
        IngestConfig(start="2019-02-01", end="2019-01-01")


def test_config_rejects_bad_date_text() -> None:
    with pytest.raises(IngestConfigError, match=r"option start: '2019-13-01' is not a date; use YYYY-MM-DD"):
        IngestConfig(start="2019-13-01", end="2019-12-01")


def test_config_refuses_earth_search_band_names() -> None:
    with pytest.raises(IngestConfigError, match=r"band 'blue' is an asset name of earth-search.*'B02'"):
        IngestConfig(start="2019-01-01", end="2019-02-01", bands=("blue", "green"))


def test_config_refuses_l1c_band() -> None:
    with pytest.raises(IngestConfigError, match=r"band 'B10' is not a Sentinel-2 L2A band"):
        IngestConfig(start="2019-01-01", end="2019-02-01", bands=("B02", "B10"))


def test_config_refuses_earth_search_without_an_s1_catalogue() -> None:
    with pytest.raises(
        IngestConfigError, match=r"earth-search catalogue has no terrain-corrected Sentinel-1"
    ):
        IngestConfig(
            start="2019-01-01", end="2019-02-01", catalog="https://earth-search.aws.element84.com/v1"
        )
    # ... and accepts it with PC as the S1 catalogue.
    config = IngestConfig(
        start="2019-01-01",
        end="2019-02-01",
        catalog="https://earth-search.aws.element84.com/v1",
        s1_catalog="https://planetarycomputer.microsoft.com/api/stac/v1",
    )
    assert config.resolved_profile() is EARTH_SEARCH
    assert config.resolved_profile(s1=True) is PLANETARY_COMPUTER


def test_config_refuses_missing_item_collection_file(tmp_path: Path) -> None:
    with pytest.raises(IngestConfigError, match=r"neither an http"):
        IngestConfig(start="2019-01-01", end="2019-02-01", catalog=str(tmp_path / "nope.json"))


def test_config_fallback_mask_needs_its_bands() -> None:
    with pytest.raises(IngestConfigError, match=r"fallback cloud/shadow test needs bands \['B11'\]"):
        IngestConfig(
            start="2019-01-01", end="2019-02-01", bands=("B02", "B03", "B04", "B08"), cloud_mask="fallback"
        )


def test_bounds_in_degrees_are_refused_for_a_utm_zone() -> None:
    with pytest.raises(IngestConfigError, match=r"outside EPSG:32631's area of use.*lon/lat degrees"):
        TileBox(32631, (4.5, 50.7, 4.6, 50.8))


def test_metres_far_outside_the_zone_are_refused() -> None:
    # Web-Mercator metres of Istanbul given as UTM 31N: 2,700 km east of the zone's central meridian.
    with pytest.raises(IngestConfigError, match=r"outside EPSG:32631's area of use"):
        TileBox(32631, (3_220_000.0, 5_010_000.0, 3_227_680.0, 5_013_840.0))


def test_geographic_crs_is_refused() -> None:
    with pytest.raises(IngestConfigError, match=r"EPSG:4326 is not a projected CRS in metres"):
        TileBox(4326, (4.0, 50.0, 5.0, 51.0), resolution=0.5)


def test_bounds_must_cover_whole_pixels() -> None:
    with pytest.raises(IngestConfigError, match=r"whole number of 10.0 m pixels"):
        TileBox(32631, (574680.0, 5621800.0, 575325.0, 5622440.0))


def test_bounds_must_not_be_empty() -> None:
    with pytest.raises(IngestConfigError, match=r"max > min"):
        TileBox(32631, (575320.0, 5621800.0, 574680.0, 5622440.0))


def test_tilebox_and_tileref_give_lonlat_search_boxes_around_the_site() -> None:
    lon_min, lat_min, lon_max, lat_max = lonlat_bounds(TileBox(32631, SITE_BOUNDS))
    assert 4.05 < lon_min < lon_max < 4.08 and 50.74 < lat_min < lat_max < 50.76
    big = lonlat_bounds(TileRef(32631, 78, 1597))
    assert big[0] < lon_min and big[2] > lon_max and big[1] < lat_min and big[3] > lat_max


# --- catalogue profiles ---------------------------------------------------------------------------------


def test_profiles_from_urls() -> None:
    assert profile_for_url("https://planetarycomputer.microsoft.com/api/stac/v1") is PLANETARY_COMPUTER
    assert profile_for_url("https://earth-search.aws.element84.com/v1") is EARTH_SEARCH
    assert profile_for_url("http://127.0.0.1:8080") is None


def test_profiles_detected_from_recorded_items() -> None:
    bands = ("B02", "B03", "B04")
    assert detect_profile([template("pc_sentinel-2-l2a_item.json")], bands) is PLANETARY_COMPUTER
    assert detect_profile([template("es_sentinel-2-l2a_item.json")], bands) is EARTH_SEARCH


def test_mixed_up_profile_is_a_clear_error() -> None:
    es_item = template("es_sentinel-2-l2a_item.json")
    with pytest.raises(CatalogMismatchError, match=r"carry earth-search asset names \(blue, green, red"):
        check_profile(PLANETARY_COMPUTER, [es_item], ("B02", "B03", "B04"))
    with pytest.raises(CatalogMismatchError, match=r"--profile planetary-computer"):
        check_profile(EARTH_SEARCH, [template("pc_sentinel-2-l2a_item.json")], ("B02", "B03", "B04"))


def test_boa_offset_follows_the_processing_baseline_property() -> None:
    item = template("pc_sentinel-2-l2a_item.json")  # recorded with baseline 02.12 (2020)
    assert PLANETARY_COMPUTER.boa_offset(item) == (0, "processing baseline 02.12 < 04.00")
    item.properties["s2:processing_baseline"] = "04.00"
    assert PLANETARY_COMPUTER.boa_offset(item)[0] == 1000
    item.properties["s2:processing_baseline"] = "05.10"
    assert PLANETARY_COMPUTER.boa_offset(item)[0] == 1000
    # Keyed on the property, not the date: a 2020 acquisition reprocessed at 05.00 has the offset.
    assert item.datetime.year == 2020


def test_boa_offset_without_baseline_falls_back_to_the_date() -> None:
    item = template("pc_sentinel-2-l2a_item.json")
    del item.properties["s2:processing_baseline"]
    assert PLANETARY_COMPUTER.boa_offset(item)[0] == 0
    item.datetime = dt.datetime(2022, 3, 1, tzinfo=dt.UTC)
    assert PLANETARY_COMPUTER.boa_offset(item)[0] == 1000


def test_earth_search_harmonised_items_keep_their_values() -> None:
    item = template("es_sentinel-2-l2a_item.json")  # baseline 05.11, offset applied by Earth Search
    assert item.properties["earthsearch:boa_offset_applied"] is True
    assert EARTH_SEARCH.boa_offset(item)[0] == 0
    item.properties["earthsearch:boa_offset_applied"] = False
    assert EARTH_SEARCH.boa_offset(item)[0] == 1000


# --- item sources ---------------------------------------------------------------------------------------


def test_item_collection_source_filters_collection_time_and_place(tmp_path: Path) -> None:
    s2, s1 = sample_items()
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [*s2, *s1]}))
    source = ItemCollectionSource(path)
    bbox = lonlat_bounds(TileBox(32631, SITE_BOUNDS))
    april = source.search("sentinel-2-l2a", bbox, dt.date(2019, 4, 1), dt.date(2019, 4, 30))
    assert [i.datetime.date().isoformat() for i in april] == [
        "2019-04-01",
        "2019-04-11",
        "2019-04-16",
        "2019-04-21",
        "2019-04-26",
    ]
    assert all(i.collection_id == "sentinel-2-l2a" for i in april)
    # The end day is included; the start of the next day is not.
    assert len(source.search("sentinel-2-l2a", bbox, dt.date(2019, 4, 1), dt.date(2019, 4, 1))) == 1
    elsewhere = lonlat_bounds(TileBox(32631, (600000.0, 5621800.0, 600640.0, 5622440.0)))
    assert source.search("sentinel-2-l2a", elsewhere, dt.date(2019, 1, 1), dt.date(2019, 12, 31)) == []
    assert len(source.search("sentinel-1-rtc", bbox, dt.date(2019, 4, 1), dt.date(2019, 4, 30))) == 5


def test_item_collection_source_rejects_other_json(tmp_path: Path) -> None:
    path = tmp_path / "not-items.json"
    path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(CatalogError, match=r"cannot read it as a STAC ItemCollection"):
        ItemCollectionSource(path)


def test_sample_items_keep_the_recorded_properties_and_extensions() -> None:
    s2, s1 = sample_items()
    recorded = json.loads((TEMPLATES / "pc_sentinel-2-l2a_item.json").read_text())
    item = s2[0]
    assert item["stac_extensions"] == recorded["stac_extensions"]
    assert item["stac_version"] == recorded["stac_version"]
    assert set(item["assets"]) <= set(recorded["assets"])
    assert {"eo:cloud_cover", "s2:mgrs_tile", "sat:orbit_state", "proj:epsg"} <= set(item["properties"])
    assert item["assets"]["B02"]["href"].startswith("file://")
    assert s1[0]["assets"]["vv"]["raster:bands"][0]["nodata"] == -32768


# --- pairing --------------------------------------------------------------------------------------------


def _s1(when: str, orbit: str, relative: int = 1, ident: str | None = None) -> pystac.Item:
    item = template("pc_sentinel-1-rtc_item.json").clone()
    item.id = ident or f"s1-{when}-{orbit}"
    item.datetime = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC)
    item.properties["sat:orbit_state"] = orbit
    item.properties["sat:relative_orbit"] = relative
    return item


def test_pairing_takes_the_nearest_pass_within_the_window() -> None:
    acquisitions = group_acquisitions(
        [
            _s1("2019-04-09T17:30:00", "ascending"),
            _s1("2019-04-15T17:30:00", "ascending"),
            _s1("2019-04-30T17:30:00", "ascending"),
        ]
    )
    s2 = np.array(["2019-04-11T10:57", "2019-04-21T10:57", "2019-05-10T10:57"], dtype="datetime64[ns]")
    pairing = pair_s1(s2, acquisitions, window_days=6)
    assert pairing.index.tolist() == [0, 1, -1]
    assert pairing.s1_time[0] == np.datetime64("2019-04-09T17:30")
    assert np.isnat(pairing.s1_time[2]) and np.isnan(pairing.gap_days[2])
    assert pairing.gap_days[0] == pytest.approx(
        -(1 + 17.5 / 24 - 0.5 / 24 + (57 - 30) / 1440 - 0.5 / 24), abs=0.05
    )


def test_pairing_keeps_one_orbit_direction() -> None:
    # Descending passes are nearer to two of three dates, but ascending pairs all three: ascending wins
    # and no descending pass is used, even where it would be nearer.
    acquisitions = group_acquisitions(
        [
            _s1("2019-04-11T05:50:00", "descending"),
            _s1("2019-04-21T05:50:00", "descending"),
            _s1("2019-04-09T17:30:00", "ascending"),
            _s1("2019-04-19T17:30:00", "ascending"),
            _s1("2019-04-29T17:30:00", "ascending"),
        ]
    )
    s2 = np.array(["2019-04-11T10:57", "2019-04-21T10:57", "2019-04-30T10:57"], dtype="datetime64[ns]")
    pairing = pair_s1(s2, acquisitions, window_days=3)
    assert pairing.orbit == "ascending"
    assert {acquisitions[j].orbit for j in pairing.index} == {"ascending"}
    forced = pair_s1(s2, acquisitions, window_days=3, orbit="descending")
    assert forced.orbit == "descending" and forced.n_paired == 2


def test_pairing_groups_slices_of_one_pass() -> None:
    acquisitions = group_acquisitions(
        [
            _s1("2019-04-09T17:30:00", "ascending", ident="slice-a"),
            _s1("2019-04-09T17:30:25", "ascending", ident="slice-b"),
            _s1("2019-04-09T17:40:00", "ascending", relative=88, ident="other-track"),
        ]
    )
    assert [a.item_ids for a in acquisitions] == [("slice-a", "slice-b"), ("other-track",)]


def test_pairing_without_s1() -> None:
    pairing = pair_s1(np.array(["2019-04-11"], dtype="datetime64[ns]"), [], window_days=6)
    assert pairing.n_paired == 0 and pairing.orbit is None


# --- masks ----------------------------------------------------------------------------------------------


def test_scl_classes_map_to_mask_classes() -> None:
    scl = np.arange(12, dtype=np.uint8)
    assert scl_to_mask(scl).tolist() == [3, 3, 0, 2, 0, 0, 0, 0, 1, 1, 1, 0]


def test_dilation_grows_cloud_over_shadow_and_clear_but_not_nodata() -> None:
    mask = np.zeros((1, 7, 7), dtype=np.uint8)
    mask[0, 3, 3] = MaskClass.CLOUD
    mask[0, 3, 5] = MaskClass.SHADOW
    mask[0, 0, :] = MaskClass.NODATA
    grown = dilate(mask, 2)
    assert (grown[0, 1:6, 1:6] == MaskClass.CLOUD).all()  # a 5×5 square around the cloud
    assert grown[0, 3, 6] == MaskClass.SHADOW  # shadow grows where cloud does not reach
    assert (grown[0, 0] == MaskClass.NODATA).all()
    assert (dilate(mask, 0) == mask).all()


def _dilate_class_by_class(mask: np.ndarray, px: int) -> np.ndarray:
    """The rule written out: shadow grows into clear, then cloud into clear and shadow (binary dilation
    of each class by a (2 px + 1)² square, one date at a time)."""
    from scipy import ndimage

    out = mask.copy()
    square = np.ones((2 * px + 1, 2 * px + 1), dtype=bool)
    for t in range(mask.shape[0]):
        for cls in (MaskClass.SHADOW, MaskClass.CLOUD):
            grown = ndimage.binary_dilation(mask[t] == cls, structure=square)
            target = (out[t] == MaskClass.CLEAR) | ((out[t] == MaskClass.SHADOW) & (cls == MaskClass.CLOUD))
            out[t][grown & target] = cls
    return out


@pytest.mark.parametrize("px", [1, 2, 3])
def test_dilation_equals_growing_each_class_in_turn(px: int) -> None:
    rng = np.random.default_rng(px)
    for share in ([0.97, 0.01, 0.01, 0.01], [0.4, 0.2, 0.2, 0.2]):  # sparse specks, crowded classes
        mask = rng.choice(4, size=(3, 40, 70), p=share).astype(np.uint8)
        np.testing.assert_array_equal(dilate(mask, px), _dilate_class_by_class(mask, px))
        np.testing.assert_array_equal(dilate(mask[0], px), _dilate_class_by_class(mask[:1], px)[0])


def test_scl_lookup_equals_class_by_class_for_any_integer_type() -> None:
    scl = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = np.zeros(scl.shape, dtype=np.uint8)  # classes not listed are clear
    for scl_class, mask_class in SCL_TO_MASK.items():
        expected[scl == scl_class] = mask_class
    np.testing.assert_array_equal(scl_to_mask(scl), expected)
    np.testing.assert_array_equal(scl_to_mask(scl.astype(np.uint16)), expected)


def _site_rasters(band: str, date_index: int) -> np.ndarray:
    site = load_site()
    record = site.s2[date_index]
    with rasterio.open(SAMPLE_DIR / record["assets"][band]["file"]) as src:
        data = src.read(1)
    return np.repeat(np.repeat(data, 2, 0), 2, 1) if data.shape[0] == 32 else data


def _site_stack(bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    n = len(load_site().s2)
    s2 = np.stack([np.stack([_site_rasters(b, t) for b in bands]) for t in range(n)])
    scl = np.stack([_site_rasters("SCL", t) for t in range(n)])
    return s2, scl


def test_refine_bright_remarks_hazy_clear_pixels_on_real_data() -> None:
    bands = load_site().bands
    s2, scl = _site_stack(bands)
    mask = scl_to_mask(scl)
    refined = refine_bright(mask, s2, bands)
    changed = refined != mask
    assert changed.any()
    assert (mask[changed] == MaskClass.CLEAR).all() and (refined[changed] == MaskClass.CLOUD).all()
    blue = s2[:, bands.index("B02")] / 10_000
    # The rule: blue above 0.2, or 0.06 above the pixel's median blue over its clear dates (where it has
    # at least 3 of them). Re-marked pixels break it, pixels left clear keep it.
    clear = mask == MaskClass.CLEAR
    median = np.nanmedian(np.where(clear, blue, np.nan), axis=0)
    median[clear.sum(axis=0) < 3] = np.nan
    bright = (blue > 0.2 + 1e-6) | (blue > median + 0.06 + 1e-6)
    dim = (blue < 0.2 - 1e-6) & ~(blue > median + 0.06 - 1e-6)
    assert not dim[changed].any()
    assert not bright[refined == MaskClass.CLEAR].any()
    assert changed.sum() > 1000  # this site's hazy spring dates: the refinement matters here


def test_fallback_mask_agrees_with_scl_on_clear_and_overcast_dates() -> None:
    bands = load_site().bands
    s2, scl = _site_stack(bands)
    scl_mask = scl_to_mask(scl)
    fallback = fallback_mask(s2, bands)
    cloud_share_scl = (scl_mask == MaskClass.CLOUD).mean(axis=(1, 2))
    cloud_share_fb = (fallback == MaskClass.CLOUD).mean(axis=(1, 2))
    overcast = cloud_share_scl > 0.95
    clear = cloud_share_scl == 0
    assert overcast.sum() >= 4 and clear.sum() >= 6
    # Dates SCL calls overcast are mostly cloud for the spectral test too; clear dates mostly not.
    assert np.median(cloud_share_fb[overcast]) > 0.8
    assert np.median(cloud_share_fb[clear]) < 0.1


# --- read helpers ---------------------------------------------------------------------------------------


def test_first_valid_takes_one_item_per_pixel_for_all_bands() -> None:
    data = np.array([[[[0, 5]], [[0, 6]]], [[[7, 8]], [[9, 10]]]], dtype=np.uint16)  # (k=2, c=2, 1, 2)
    valid = (data > 0).all(axis=1)
    assert first_valid(data, valid).tolist() == [[[7, 5]], [[9, 6]]]


def test_boa_offset_removal_keeps_nodata_and_clamps_dark_pixels() -> None:
    dn = np.array([0, 1000, 1001, 3500], dtype=np.uint16)
    assert remove_boa_offset(dn, 1000).tolist() == [0, 1, 1, 2500]
    assert remove_boa_offset(dn, 0).tolist() == dn.tolist()
    in_place = dn.copy()
    remove_boa_offset_inplace(in_place, 1000)
    assert in_place.tolist() == [0, 1, 1, 2500]


def test_linear_to_db() -> None:
    db = to_db(np.array([1.0, 0.1, 0.0, -32768.0], dtype=np.float32))
    assert db[:2].tolist() == pytest.approx([0.0, -10.0])
    assert np.isnan(db[2:]).all()


def test_build_item_sets_grid_of_each_asset() -> None:
    site = load_site()
    item = build_item(site.s2[0], SAMPLE_DIR, collection="sentinel-2-l2a", profile=PLANETARY_COMPUTER)
    assert item.assets["B02"].extra_fields["proj:shape"] == [64, 64]
    assert item.assets["B05"].extra_fields["proj:shape"] == [32, 32]
    assert item.assets["B05"].extra_fields["proj:transform"][0] == 20.0


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_clear_median_equals_nanmedian() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(1, 10_000, size=(9, 20, 30)).astype(np.uint16)
    clear = rng.random((9, 20, 30)) < 0.5
    clear[:, 0, 0] = False  # a pixel never clear
    expected = np.nanmedian(np.where(clear, values.astype(np.float64), np.nan), axis=0)
    np.testing.assert_array_equal(clear_median(values, clear), expected)


def test_plane_sort_equals_numpy_sort_for_any_number_of_dates() -> None:
    """The sorting network behind clear_median orders every pixel's series as np.sort does, for 1 to
    80 dates, and sorts every 0/1 series of up to 12 dates (the 0-1 principle: then it sorts any)."""
    rng = np.random.default_rng(4)
    for n in range(1, 81):
        values = rng.integers(0, 6, size=(n, 5, 7)).astype(np.uint16)  # few values: many ties
        ordered = values.copy()
        _sort_planes(ordered)
        np.testing.assert_array_equal(ordered, np.sort(values, axis=0))
    for n in range(1, 13):
        bits = (np.arange(2**n)[None, :] >> np.arange(n)[:, None]) & 1  # every 0/1 series, one per column
        ordered = bits.astype(np.uint16)[:, None, :]
        _sort_planes(ordered)
        np.testing.assert_array_equal(ordered[:, 0], np.sort(bits, axis=0))


# --- reads: the direct windowed read gives stackstac's pixels exactly ----------------------------------


def _read_inputs(grid_bounds: tuple[float, float, float, float]) -> tuple[list[pystac.Item], Any, Any]:
    from ingest.load import Grid, Retry

    s2 = [pystac.Item.from_dict(d) for d in sample_items()[0][:3]]
    site = load_site()
    box = TileBox(site.epsg, grid_bounds, 10.0)
    return s2, Grid.of(box), Retry(retries=0, backoff_s=0.0)


@pytest.mark.parametrize(
    "bounds",
    [
        SITE_BOUNDS,  # the rasters' own extent
        (574400.0, 5621600.0, 575600.0, 5622800.0),  # wider: no data around, 20 m edges on the grid
        (574700.0, 5621820.0, 575100.0, 5622240.0),  # inside, 20 m pixels cut in the middle at the edges
    ],
)
def test_direct_read_equals_stackstac(bounds: tuple[float, float, float, float]) -> None:
    """10 m, 20 m and SCL assets on the grid: the direct read is pixel for pixel stackstac's nearest read,
    nodata and outside-footprint pixels included."""
    from ingest.load import _read_direct, _read_stackstac, gdal_env

    items, grid, retry = _read_inputs(bounds)
    assets = ["B02", "B8A", "B11", "SCL"]
    kw: dict[str, Any] = {"dtype": np.dtype("uint16"), "fill_value": np.uint16(0), "resampling": "nearest"}
    direct = _read_direct(items, assets, grid, env=gdal_env(0, 0.0), **kw)
    assert direct is not None
    warped = _read_stackstac(items, assets, grid, retry=retry, **kw)
    assert direct.shape == warped.shape == (len(items), len(assets), *grid.shape)
    assert (direct > 0).any()
    np.testing.assert_array_equal(direct, warped)


@pytest.mark.parametrize(
    "bounds",
    [
        (574680.0, 5621780.0, 575340.0, 5622440.0),  # on the 60 m pixel edges
        (574710.0, 5621830.0, 575090.0, 5622400.0),  # cutting 60 m pixels at every edge
        (574500.0, 5621600.0, 575200.0, 5622700.0),  # reaching past the raster: no data around
    ],
)
def test_direct_read_of_a_60_m_band_equals_stackstac(tmp_path: Path, bounds: tuple[float, ...]) -> None:
    """A 60 m COG (every 6th pixel of the real WorldCereal B02) on 10 m grids cutting its pixels at
    every offset: each grid pixel takes the 60 m pixel it lies in, as stackstac's nearest read does."""
    from rasterio.transform import from_origin

    from ingest.load import Grid, Retry, _read_direct, _read_stackstac, gdal_env

    site = load_site()
    record = site.s2[0]
    with rasterio.open(SAMPLE_DIR / record["assets"]["B02"]["file"]) as src:
        coarse = np.ascontiguousarray(src.read(1)[::6, ::6])  # 11×11 px of 60 m
        transform = from_origin(src.bounds.left, src.bounds.top, 60.0, 60.0)
        crs = src.crs
    path = tmp_path / "B01.tif"
    with rasterio.open(
        path,
        "w",
        driver="COG",
        height=coarse.shape[0],
        width=coarse.shape[1],
        count=1,
        dtype=coarse.dtype,
        crs=crs,
        transform=transform,
        nodata=0,
    ) as dst:
        dst.write(coarse, 1)
    item = pystac.Item.from_dict(sample_items()[0][0])
    item.assets["B01"] = pystac.Asset(href=str(path), media_type=pystac.MediaType.COG)
    grid = Grid.of(TileBox(site.epsg, bounds, 10.0))
    kw: dict[str, Any] = {"dtype": np.dtype("uint16"), "fill_value": np.uint16(0), "resampling": "nearest"}
    direct = _read_direct([item], ["B01"], grid, env=gdal_env(0, 0.0), **kw)
    assert direct is not None and (direct > 0).any()
    warped = _read_stackstac([item], ["B01"], grid, retry=Retry(0, 0.0), **kw)
    np.testing.assert_array_equal(direct, warped)


def test_unaligned_grid_falls_back_to_stackstac() -> None:
    """A grid whose pixel edges miss the rasters' (5 m off) is read through the warper, as before."""
    from ingest.load import _read_direct, _read_stackstac, gdal_env, read

    bounds = (574685.0, 5621805.0, 575285.0, 5622405.0)
    items, grid, retry = _read_inputs(bounds)
    kw: dict[str, Any] = {"dtype": np.dtype("uint16"), "fill_value": np.uint16(0), "resampling": "nearest"}
    assert _read_direct(items, ["B02"], grid, env=gdal_env(0, 0.0), **kw) is None
    np.testing.assert_array_equal(
        read(items, ["B02", "B11"], grid, retry=retry, **kw),
        _read_stackstac(items, ["B02", "B11"], grid, retry=retry, **kw),
    )


def test_bilinear_of_coarser_band_goes_through_the_warper() -> None:
    from ingest.load import _read_direct, gdal_env

    items, grid, _ = _read_inputs(SITE_BOUNDS)
    kw: dict[str, Any] = {"dtype": np.dtype("uint16"), "fill_value": np.uint16(0)}
    assert _read_direct(items, ["B02"], grid, env=gdal_env(0, 0.0), resampling="bilinear", **kw) is not None
    assert _read_direct(items, ["B11"], grid, env=gdal_env(0, 0.0), resampling="bilinear", **kw) is None
