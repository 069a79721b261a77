"""fit_tile on real tiles: output in the schema, and every kind of bad input refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from fit.config import SMOKE, FitConfig
from fit.errors import AllCloudyError, FitConfigError, FitInputError, WeightsMissingError
from fit.tile import fit_tile
from fit.vgg import VGG16_URL
from tiler.errors import OutputExistsError, TileSchemaError
from tiler.store import DECLOUDED, MaskClass, open_tile, tile_status, write_tile

#: Small and quick: 8 real dates (2018-10..11, clear and cloudy ones), 24×24 px of the WorldCereal sample.
CROP = {"time": slice(10, 18), "y": slice(8, 32), "x": slice(16, 40)}
TINY = SMOKE.replace(name="tiny", iterations_per_window=2)


def crop_store(worldcereal_tile: Path, out: Path, **changes: xr.DataArray) -> str:
    ds = open_tile(str(worldcereal_tile)).isel(CROP).load()
    ds = ds.assign(**changes) if changes else ds
    write_tile(ds, str(out))
    return str(out)


@pytest.fixture
def crop(worldcereal_tile: Path, tmp_path: Path) -> str:
    return crop_store(worldcereal_tile, tmp_path / "in.zarr")


def test_fit_writes_s2_declouded_in_the_schema(crop: str, tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    events = []
    result = fit_tile(crop, out, preset=TINY, device="cpu", progress=events.append)
    assert tile_status(out) == "complete"
    fitted = open_tile(out, require=["s2", "s1", "mask", "s1_time", DECLOUDED]).load()
    source = open_tile(crop).load()
    declouded = fitted[DECLOUDED]
    assert declouded.dims == source.s2.dims and declouded.dtype == np.uint16
    assert declouded.shape == source.s2.shape
    for coord in ("time", "band", "y", "x"):
        assert np.array_equal(declouded[coord].values, source.s2[coord].values)
    for var in ("s2", "s1", "mask", "s1_time"):
        xr.testing.assert_identical(fitted[var].reset_coords(drop=True), source[var].reset_coords(drop=True))
    assert declouded.min() >= 1 and declouded.max() <= 10_000  # never the no-data value 0
    # keep_clear: where the fit trusted the observation, it is kept as it was
    refined_clear = (source.mask.values == MaskClass.CLEAR) & (source.s2.values > 0).all(axis=1)
    assert refined_clear.any()
    kept = np.equal(declouded.values, source.s2.values).all(axis=1)
    assert kept.sum() >= 0.5 * refined_clear.sum()
    # settings, loss curve, timing and device in the attributes
    attrs = fitted.attrs
    assert FitConfig.from_dict(json.loads(attrs["fit_settings"])) == TINY
    curve = json.loads(attrs["fit_loss_curve"])
    assert len(curve) == result.iterations == 1 * 4 * 2 and np.isfinite([v for _, v in curve]).all()
    assert attrs["fit_device"] == "cpu" and attrs["fit_seconds"] > 0 and attrs["fit_input"] == "s1"
    assert result.tile_id == source.attrs["tile_id"] and result.windows == 4
    assert len(events) == result.iterations
    assert fitted.rio.crs.to_epsg() == 32631


def test_existing_output_is_refused_before_fitting(crop: str, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    fit_tile(crop, str(out), preset=TINY, device="cpu")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match=r"already exists.*--overwrite"):
        fit_tile(crop, str(out), preset=TINY, device="cpu")
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    fit_tile(crop, str(out), preset=TINY, device="cpu", seed=1, overwrite=True)
    assert open_tile(str(out)).attrs["fit_seed"] == 1


def test_all_cloudy_tile_is_refused_and_nothing_written(worldcereal_tile: Path, tmp_path: Path) -> None:
    ds = open_tile(str(worldcereal_tile)).isel(CROP)
    cloudy = xr.full_like(ds["mask"], MaskClass.CLOUD).load()
    tile = crop_store(worldcereal_tile, tmp_path / "cloudy.zarr", mask=cloudy)
    out = str(tmp_path / "out.zarr")
    with pytest.raises(AllCloudyError, match=r"worldcereal_31UES.*no clear pixel.*nothing was written"):
        fit_tile(tile, out, preset=TINY, device="cpu")
    assert tile_status(out) == "missing"


def test_nan_in_s1_does_not_poison_the_fit(worldcereal_tile: Path, tmp_path: Path) -> None:
    ds = open_tile(str(worldcereal_tile)).isel(CROP).load()
    s1 = ds["s1"].copy()
    s1[2] = np.nan  # a whole date without radar
    s1[:, :, :5, :5] = np.nan  # a corner without radar on every date
    tile = crop_store(worldcereal_tile, tmp_path / "gaps.zarr", s1=s1)
    out = str(tmp_path / "out.zarr")
    result = fit_tile(tile, out, preset=TINY, device="cpu")
    assert np.isfinite(result.final_loss)
    fitted = open_tile(out).load()
    assert (fitted[DECLOUDED] > 0).all()
    curve = json.loads(fitted.attrs["fit_loss_curve"])
    assert np.isfinite([v for _, v in curve]).all()


def test_no_radar_needs_noise_input(worldcereal_tile: Path, tmp_path: Path) -> None:
    ds = open_tile(str(worldcereal_tile)).isel(CROP).load()
    tile = crop_store(worldcereal_tile, tmp_path / "nos1.zarr", s1=xr.full_like(ds["s1"], np.nan))
    with pytest.raises(FitInputError, match=r"no radar.*--input noise"):
        fit_tile(tile, str(tmp_path / "a.zarr"), preset=TINY, device="cpu")
    result = fit_tile(tile, str(tmp_path / "b.zarr"), preset=TINY, input="noise", device="cpu")
    assert result.input == "noise"


def test_s2_nodata_is_not_learned_and_gets_filled(worldcereal_tile: Path, tmp_path: Path) -> None:
    """No data on some dates is filled; a strip with no data on any date stays no data (nothing invented)."""
    ds = open_tile(str(worldcereal_tile)).isel(CROP).load()
    s2 = ds["s2"].copy()
    s2[:, :, 10:14, :] = 0  # a strip without data on every date (outside the imagery's footprint)
    s2[::2, :, 16:20, :] = 0  # a strip without data on every other date (a swath edge)
    tile = crop_store(worldcereal_tile, tmp_path / "nodata.zarr", s2=s2)
    out = str(tmp_path / "out.zarr")
    result = fit_tile(tile, out, preset=TINY, device="cpu")
    declouded = open_tile(out)[DECLOUDED].values
    assert (declouded[:, :, 10:14, :] == 0).all()  # the schema's no data
    assert (declouded[:, :, 16:20, :] > 0).all()  # seen on some dates: declouded on all
    outside = np.ones(declouded.shape[2], dtype=bool)
    outside[10:14] = False
    assert (declouded[:, :, outside, :] > 0).all()
    assert result.clear_fraction < 1 - 4 / 24  # neither strip is trusted where it has no data


def test_fewer_than_five_dates(worldcereal_tile: Path, tmp_path: Path) -> None:
    ds = open_tile(str(worldcereal_tile)).isel(CROP).isel(time=slice(0, 3)).load()
    write_tile(ds, str(tmp_path / "short.zarr"))
    result = fit_tile(str(tmp_path / "short.zarr"), str(tmp_path / "out.zarr"), preset=TINY, device="cpu")
    assert result.windows == 1 and result.iterations == 2


def test_perceptual_preset_without_weights_fails_before_reading(
    crop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    out = str(tmp_path / "out.zarr")
    with pytest.raises(WeightsMissingError, match=VGG16_URL.replace(".", r"\.")):
        fit_tile(crop, out, preset="paper", device="cpu")
    assert tile_status(out) == "missing"


def test_perceptual_fit_with_weights_file(crop: str, tmp_path: Path) -> None:
    from test_fit_vgg import write_random_vgg_weights  # SEEDED RANDOM weights, not ImageNet's

    weights = tmp_path / "vgg16-random.pth"
    write_random_vgg_weights(weights)
    config = TINY.replace(perceptual_weight=0.01)
    result = fit_tile(crop, str(tmp_path / "out.zarr"), preset=config, device="cpu", vgg_weights=str(weights))
    assert np.isfinite(result.final_loss)


def test_bad_options(crop: str, tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    with pytest.raises(FitConfigError, match=r"unknown preset 'fastest'.*fast, paper, smoke"):
        fit_tile(crop, out, preset="fastest")
    with pytest.raises(FitConfigError, match="unknown input 'sar'"):
        fit_tile(crop, out, preset=TINY, input="sar")
    with pytest.raises(FitConfigError, match="unknown device 'gpu7'"):
        fit_tile(crop, out, preset=TINY, device="gpu7")
    with pytest.raises(FitConfigError, match="passes >= 1"):
        SMOKE.replace(passes=0)
    assert tile_status(out) == "missing"


def test_tile_breaking_the_schema(worldcereal_tile: Path, tmp_path: Path) -> None:
    ds = open_tile(str(worldcereal_tile)).isel(CROP).load()
    bad = tmp_path / "bad.zarr"
    ds.drop_vars("mask").to_zarr(bad, zarr_format=3)
    with pytest.raises(TileSchemaError, match="'mask' is missing"):
        fit_tile(str(bad), str(tmp_path / "out.zarr"), preset=TINY, device="cpu")


def test_fit_between_object_store_urls(worldcereal_tile: Path, s3_endpoint: dict[str, object]) -> None:
    ds = open_tile(str(worldcereal_tile)).isel(CROP).isel(time=slice(0, 5)).load()
    src, dst = "s3://declouder-test/fit/in.zarr", "s3://declouder-test/fit/out.zarr"
    write_tile(ds, src, storage_options=s3_endpoint, overwrite=True)
    fit_tile(src, dst, preset=TINY, device="cpu", storage_options=s3_endpoint, overwrite=True)
    assert tile_status(dst, s3_endpoint) == "complete"
    fitted = open_tile(dst, storage_options=s3_endpoint, require=[DECLOUDED])
    assert fitted[DECLOUDED].shape == ds["s2"].shape


def test_four_band_tile_at_20_m_without_radar(tmp_path: Path) -> None:
    """The GreenEarthNet sample: 4 bands, 20 m pixels, real clouds, no S1: fitted with noise input."""
    sample = Path(__file__).resolve().parent / "data" / "greenearthnet_34tet.zarr"
    ds = open_tile(str(sample)).isel(time=slice(6, 14), y=slice(0, 20), x=slice(0, 28)).load()
    assert ds.rio.transform().a == 20.0 and ds.sizes["band"] == 4
    write_tile(ds, str(tmp_path / "gen.zarr"))
    with pytest.raises(FitInputError, match="no radar"):
        fit_tile(str(tmp_path / "gen.zarr"), str(tmp_path / "a.zarr"), preset=TINY, device="cpu")
    result = fit_tile(str(tmp_path / "gen.zarr"), str(tmp_path / "b.zarr"), preset=TINY, input="noise",
                      device="cpu")  # fmt: skip
    fitted = open_tile(str(tmp_path / "b.zarr"), require=[DECLOUDED]).load()
    assert fitted[DECLOUDED].shape == ds["s2"].shape and result.windows == 4
    assert fitted.rio.crs.to_epsg() == 32634
