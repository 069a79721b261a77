"""The tile store: schema round trip, each validation error, completeness, object stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from tiler.errors import OutputExistsError, TileIncompleteError, TileSchemaError, TileStoreError
from tiler.store import (
    STATUS_ATTR,
    MaskClass,
    make_tile,
    open_tile,
    open_tile_group,
    tile_group_epsg,
    tile_status,
    tile_times,
    validate_tile,
    write_tile,
)


def small_tile(n_time: int = 3) -> xr.Dataset:
    rng = np.random.default_rng(0)
    return make_tile(
        s2=rng.integers(1, 10_000, (n_time, 2, 4, 5), dtype=np.uint16),
        mask=np.zeros((n_time, 4, 5), np.uint8),
        time=np.datetime64("2020-01-01") + np.arange(n_time) * np.timedelta64(5, "D"),
        bands=["B02", "B04"],
        x=500_005.0 + 10 * np.arange(5),
        y=5_000_035.0 - 10 * np.arange(4),
        epsg=32631,
        tile_id="hand_made",
    )


def test_round_trip_real_sample(worldcereal_tile: Path, tmp_path: Path) -> None:
    ds = open_tile(str(worldcereal_tile)).load()
    info = validate_tile(ds)
    assert (info.n_time, info.height, info.width, info.epsg) == (72, 64, 64, 32631)
    assert info.resolution == 10.0
    out = tmp_path / "copy.zarr"
    write_tile(ds, str(out))
    back = open_tile(str(out)).load()
    for var in ("s2", "s1", "mask", "s1_time"):
        xr.testing.assert_identical(back[var].reset_coords(drop=True), ds[var].reset_coords(drop=True))
    assert tile_status(str(out)) == "complete"
    # Plain xarray + rioxarray see the CRS and the grid.
    import rioxarray  # noqa: F401

    plain = xr.open_zarr(out)
    assert plain.rio.crs.to_epsg() == 32631
    assert plain.rio.transform().a == 10.0


def test_hand_built_tile_is_accepted(tmp_path: Path) -> None:
    ds = small_tile()
    ds.to_zarr(tmp_path / "hand.zarr", zarr_format=3)
    assert tile_status(str(tmp_path / "hand.zarr")) == "external"
    assert open_tile(str(tmp_path / "hand.zarr")).sizes["time"] == 3
    # no S1 given: all NaN, dates NaT
    assert np.isnan(ds.s1.values).all() and np.isnat(ds.s1_time.values).all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ds: ds.drop_vars("mask"), "variable 'mask' is missing"),
        (lambda ds: ds.assign(s2=ds.s2.astype("float32")), "'s2' has dtype float32, expected uint16"),
        (lambda ds: ds.assign(mask=ds.mask.transpose("y", "time", "x")), "'mask' has dims"),
        (lambda ds: ds.isel(time=slice(0, 0)), "no dates"),
        (lambda ds: ds.isel(time=[0, 0, 1]), "not strictly increasing"),
        (lambda ds: ds.isel(x=slice(0, 0)), "empty spatial extent"),
        (lambda ds: ds.drop_vars("spatial_ref").drop_attrs(deep=False), "no CRS"),
    ],
)
def test_validation_errors_name_the_problem(mutate, message: str) -> None:
    with pytest.raises(TileSchemaError, match=message) as err:
        validate_tile(mutate(small_tile()), name="t1")
    assert "tile 't1'" in str(err.value)


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "t.zarr")
    write_tile(small_tile(), url)
    zarr.open_group(url, mode="r+").attrs[STATUS_ATTR] = "writing"  # a writer that died
    with pytest.raises(TileIncompleteError, match="incomplete"):
        open_tile(url)


def test_existing_output_refused_unless_overwrite(tmp_path: Path) -> None:
    url = str(tmp_path / "t.zarr")
    write_tile(small_tile(3), url)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_tile(small_tile(4), url)
    assert open_tile(url).sizes["time"] == 3  # untouched
    write_tile(small_tile(4), url, overwrite=True)
    assert open_tile(url).sizes["time"] == 4


def test_missing_store_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TileStoreError, match="declouder ingest"):
        open_tile(str(tmp_path / "nope.zarr"))


def test_tile_group_reads_what_the_dataset_reads(worldcereal_tile: Path) -> None:
    ds = open_tile(str(worldcereal_tile))
    group = open_tile_group(str(worldcereal_tile), require=["s2", "mask"])
    np.testing.assert_array_equal(tile_times(group), ds["time"].values)
    np.testing.assert_array_equal(group["x"][:], ds["x"].values)
    np.testing.assert_array_equal(group["s2"][2], ds["s2"].values[2])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ds: ds.drop_vars("mask"), "variable 'mask' is missing"),
        (
            lambda ds: ds.assign(s2=ds.s2.astype("float32")),
            "expected \\('time', 'band', 'y', 'x'\\) and uint16",
        ),
        (lambda ds: ds.assign(mask=ds.mask.transpose("y", "time", "x")), "variable 'mask' has dims \\('y'"),
    ],
)
def test_tile_group_refuses_what_open_tile_refuses(mutate, message: str, tmp_path: Path) -> None:
    url = str(tmp_path / "bad.zarr")
    mutate(small_tile()).to_zarr(url, zarr_format=3)
    with pytest.raises(TileSchemaError, match=message) as err:
        open_tile_group(url, require=["s2", "mask"], name="t1")
    assert "tile 't1'" in str(err.value)
    with pytest.raises(TileSchemaError):
        open_tile(url, require=["s2", "mask"], name="t1")


def test_tile_group_epsg_from_the_attribute_or_the_crs_and_refused_without(tmp_path: Path) -> None:
    tile = small_tile()
    for label, ds in (("attr", tile), ("crs", tile.drop_attrs(deep=False))):
        ds.to_zarr(tmp_path / f"{label}.zarr", zarr_format=3)
        assert tile_group_epsg(open_tile_group(str(tmp_path / f"{label}.zarr")), name=label) == 32631
    tile.drop_vars("spatial_ref").drop_attrs(deep=False).to_zarr(tmp_path / "none.zarr", zarr_format=3)
    with pytest.raises(TileSchemaError, match="tile 't1': no CRS"):
        tile_group_epsg(open_tile_group(str(tmp_path / "none.zarr")), name="t1")


def test_tile_group_refuses_unfinished_and_missing_stores(tmp_path: Path) -> None:
    url = str(tmp_path / "t.zarr")
    write_tile(small_tile(), url)
    zarr.open_group(url, mode="r+").attrs[STATUS_ATTR] = "writing"
    with pytest.raises(TileIncompleteError, match="incomplete"):
        open_tile_group(url)
    with pytest.raises(TileStoreError, match="declouder ingest"):
        open_tile_group(str(tmp_path / "nope.zarr"))


def test_mask_classes_follow_design() -> None:
    assert [int(m) for m in MaskClass] == [0, 1, 2, 3]


def test_s3_round_trip(s3_endpoint: dict[str, object]) -> None:
    url = "s3://declouder-test/tiles/t.zarr"
    ds = small_tile()
    write_tile(ds, url, storage_options=s3_endpoint)
    assert tile_status(url, s3_endpoint) == "complete"
    back = open_tile(url, storage_options=s3_endpoint).load()
    np.testing.assert_array_equal(back.s2.values, ds.s2.values)
