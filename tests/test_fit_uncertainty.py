"""The fit's per-pixel σ: calibration figures on known cases, the error model, σ through decloud and
into a fitted tile store (real WorldCereal crops)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fit.arrays import TileArrays
from fit.config import SMOKE
from fit.declouder import decloud, feather_weights
from fit.metrics import DROP_FRACTION, ONE_SIGMA, calibration
from fit.tile import fit_tile, sigma_to_stored
from fit.uncertainty import fit_error_model, predict_sigma, propagate, without_hazy_dates
from tiler.store import DECLOUDED, DECLOUDED_SIGMA, S2_NODATA, SIGMA_NODATA, open_tile, write_tile

#: 8 real dates (2018-10..11), 24×24 px of the sample: the smoke fit with a held-out share takes seconds.
CROP = {"time": slice(10, 18), "y": slice(8, 32), "x": slice(16, 40)}
HELD = SMOKE.replace(name="smoke-held", holdout_fraction=0.1, holdout_shapes="clouds")


@pytest.fixture(scope="module")
def tile(worldcereal_tile: Path) -> TileArrays:
    return TileArrays.from_dataset(open_tile(str(worldcereal_tile)).isel(CROP).load())


# -- calibration figures on constructed cases ---------------------------------------------------------


def test_calibration_of_the_true_scale_covers_68_percent_and_ranks_the_errors() -> None:
    rng = np.random.default_rng(0)
    # per pixel a lognormal scale (the same in every band, times a band factor)
    pixel = np.exp(rng.normal(np.log(0.03), 0.6, size=50_000))
    scale = np.array([[0.5], [1.0], [1.5], [2.0]]) * pixel
    errors = rng.standard_normal(scale.shape) * scale
    result = calibration(errors, scale)
    assert result.coverage == pytest.approx(ONE_SIGMA, abs=0.005)
    assert result.spearman > 0.4
    # dropping the 10 % widest pixels removes their expected squared error, nothing else
    kept = np.sort(pixel)[: int(0.9 * pixel.size)]
    expected = 1 - math.sqrt(np.mean(kept**2) / np.mean(pixel**2))
    assert result.rmse_drop == pytest.approx(expected, abs=0.02) and expected > 0.15
    assert result.samples == errors.size and result.pixels == errors.shape[1]
    # twice the scale covers ±2σ of a Gaussian; a constant σ ranks nothing
    assert calibration(errors, 2 * scale).coverage == pytest.approx(0.9545, abs=0.005)
    flat = calibration(errors, np.full_like(scale, 0.05))
    assert math.isnan(flat.spearman)


def test_calibration_rmse_drop_is_exact_on_a_hand_made_case() -> None:
    errors = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0]])
    sigma = np.array([[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9]])
    result = calibration(errors, sigma)
    total = math.sqrt((9 + 16) / 10)
    assert math.ceil(DROP_FRACTION * 10) == 1
    assert result.rmse_drop == pytest.approx(1 - 1.0 / total)
    assert result.coverage == 0.0 and result.spearman == pytest.approx(math.sqrt(1.0) * 1.0)
    assert result.rmse_drop_ceiling == pytest.approx(result.rmse_drop)  # σ ranks like the true error
    # the σ that ranks the worst pixel lowest drops a good one: RMSE goes up, the ceiling stays
    reversed_sigma = calibration(errors, sigma[:, ::-1])
    assert reversed_sigma.rmse_drop < 0 and reversed_sigma.rmse_drop_ceiling == result.rmse_drop_ceiling


def test_calibration_refuses_mismatched_shapes_and_handles_no_pixel() -> None:
    with pytest.raises(ValueError, match="band, n pixels"):
        calibration(np.zeros((2, 3)), np.zeros((3, 2)))
    assert math.isnan(calibration(np.zeros((2, 0)), np.zeros((2, 0))).coverage)


# -- the error model --------------------------------------------------------------------------------


def synthetic(n_dates: int = 12, size: int = 16, bands: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """A series whose prediction errs with a scale growing with the band index and with the date."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.05, 0.4, size=(n_dates, bands, size, size)).astype(np.float32)
    scale = 0.01 * (1 + np.arange(bands))[None, :, None, None] * (1 + np.arange(n_dates))[:, None, None, None]
    prediction = (truth + rng.standard_normal(truth.shape) * scale).astype(np.float32)
    visible = rng.random((n_dates, size, size)) < 0.7
    held = ~visible  # every sample is trusted: the untrusted share is 0 on every date
    return {"truth": truth, "prediction": prediction, "visible": visible, "held": held,
            "days": np.arange(n_dates) * 5.0, "scale": np.broadcast_to(scale, truth.shape)}  # fmt: skip


def test_error_model_is_calibrated_on_its_samples_and_follows_the_band_scale() -> None:
    s = synthetic()
    model = fit_error_model(s["truth"], s["prediction"], None, s["visible"], s["held"], s["days"])
    assert model is not None and model.kind == "regression"
    assert model.coverage == pytest.approx(ONE_SIGMA, abs=0.01)
    sigma = predict_sigma(model, s["truth"], s["prediction"], None, s["visible"], s["days"])
    assert sigma.shape == s["truth"].shape and sigma.dtype == np.float32 and (sigma > 0).all()
    # a fresh draw of the same process: σ covers about 68 % and ranks the errors
    fresh = synthetic(seed=1)
    errors = (fresh["prediction"] - fresh["truth"]).transpose(1, 0, 2, 3).reshape(3, -1)
    result = calibration(errors, sigma.transpose(1, 0, 2, 3).reshape(3, -1))
    assert 0.6 < result.coverage < 0.76
    assert result.spearman > 0.3
    assert sigma[:, 2].mean() > 2 * sigma[:, 0].mean()  # band 2 errs three times as much as band 0


def test_error_model_falls_back_to_constants_and_to_none() -> None:
    s = synthetic()
    few = np.zeros_like(s["held"])
    few[3, :2, :5] = True  # 10 pixels × 3 bands: too few for a regression
    model = fit_error_model(s["truth"], s["prediction"], None, s["visible"], few, s["days"])
    assert model is not None and model.kind == "pooled constant" and model.fill is None
    sigma = predict_sigma(model, s["truth"], s["prediction"], None, s["visible"], s["days"])
    assert np.unique(sigma).size == 1
    assert (
        fit_error_model(s["truth"], s["prediction"], None, s["visible"], np.zeros_like(few), s["days"])
        is None
    )


def guided(hard: float, seed: int = 0) -> dict[str, np.ndarray]:
    """A guided fit that halves its guide's error, two whole dates held out; the guide errs ``hard``
    times as much on the first of them as on every other date."""
    rng = np.random.default_rng(seed)
    n_dates, bands, size = 12, 3, 16
    truth = rng.uniform(0.2, 0.5, size=(n_dates, bands, size, size)).astype(np.float32)
    difficulty = np.ones(n_dates)
    difficulty[5] = hard
    scale = 0.004 * (1 + np.arange(bands))[None, :, None, None] * difficulty[:, None, None, None]
    guide = (truth + rng.standard_normal(truth.shape) * scale).astype(np.float32)
    prediction = (truth + 0.5 * (guide - truth)).astype(np.float32)
    held = np.zeros((n_dates, size, size), dtype=bool)
    held[[5, 8]] = True
    return {"truth": truth, "guide": guide, "prediction": prediction, "visible": ~held, "held": held,
            "days": np.arange(n_dates) * 5.0}  # fmt: skip


def test_sigma_reads_no_value_of_a_sample_that_is_not_visible() -> None:
    # What σ is predicted from (gaps, neighbouring observations, the guide's error around the pixel)
    # comes from the visible samples only: scrambling every other sample's value changes nothing.
    s = guided(hard=1.0)
    model = fit_error_model(s["truth"], s["prediction"], s["guide"], s["visible"], s["held"], s["days"])
    assert model is not None
    sigma = predict_sigma(model, s["truth"], s["prediction"], s["guide"], s["visible"], s["days"])
    scrambled = s["truth"].copy()
    hidden = np.broadcast_to(~s["visible"][:, None], scrambled.shape)
    scrambled[hidden] = np.random.default_rng(7).uniform(0.0, 1.0, int(hidden.sum()))
    again = predict_sigma(model, scrambled, s["prediction"], s["guide"], s["visible"], s["days"])
    assert np.array_equal(sigma, again)


def test_propagate_zero_where_kept_and_scaled_where_feathered() -> None:
    kept = np.zeros((1, 9, 9), bool)
    kept[0, :, :5] = True
    weight = feather_weights(kept, 3)[:, None]
    sigma = propagate(np.full((1, 2, 9, 9), 0.04, np.float32), weight)
    assert (sigma[:, :, :, :2] == 0).all()  # far from the fill: the observation as it is
    assert np.allclose(sigma[0, :, :, 5:], 0.04)  # filled
    assert np.allclose(sigma[0, 0, 0, 4], 0.04 * 0.75)  # beside the fill: 1/4 observed


def test_stored_sigma_rounds_clips_and_marks_no_data() -> None:
    sigma = np.array([0.0, 0.00004, 0.01234, 7.0, np.nan, 0.02], np.float32)
    declouded = np.array([5, 5, 5, 5, 5, S2_NODATA], np.uint16)
    assert sigma_to_stored(sigma, declouded).tolist() == [
        0,
        0,
        123,
        SIGMA_NODATA - 1,
        SIGMA_NODATA,
        SIGMA_NODATA,
    ]


# -- through the fit and into the store ----------------------------------------------------------------


def test_decloud_gives_sigma_zero_on_kept_pixels_and_none_without_hold_out(tile: TileArrays) -> None:
    args = (tile.reflectance, tile.mask, tile.s1)
    result = decloud(*args, HELD, bands=tile.bands, days=tile.days, device="cpu")
    assert result.sigma is not None and result.error_model is not None
    assert result.sigma.shape == result.prediction.shape and result.sigma.dtype == np.float32
    assert np.isfinite(result.sigma).all() and (result.sigma >= 0).all()
    kept = np.broadcast_to(result.clear[:, None], result.sigma.shape)
    assert (result.sigma[kept] == 0).all() and (result.sigma[~kept] > 0).all()
    assert result.sigma[~kept].max() < 1.0  # reflectance units, not ×10000
    assert decloud(*args, SMOKE, bands=tile.bands, days=tile.days, device="cpu").sigma is None


def test_fitted_store_holds_sigma_with_its_nodata(worldcereal_tile: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.zarr"
    write_tile(open_tile(str(worldcereal_tile)).isel(CROP).load(), str(source))
    out = str(tmp_path / "out.zarr")
    fit_tile(str(source), out, preset=HELD, device="cpu")
    fitted = open_tile(out, require=[DECLOUDED, DECLOUDED_SIGMA]).load()
    sigma = fitted[DECLOUDED_SIGMA]
    assert sigma.dims == fitted[DECLOUDED].dims and sigma.dtype == np.uint16
    assert sigma.attrs["nodata"] == SIGMA_NODATA and sigma.attrs["units"] == "reflectance x 10000"
    assert "docs/fit.md" in sigma.attrs["description"]
    values, declouded = sigma.values, fitted[DECLOUDED].values
    assert ((values == SIGMA_NODATA) == (declouded == S2_NODATA)).all()
    assert (values == 0).any() and ((values > 0) & (values < SIGMA_NODATA)).any()
    assert fitted.attrs["fit_sigma_model"] in ("regression", "per-band constant", "pooled constant")
    plain = str(tmp_path / "plain.zarr")
    fit_tile(str(source), plain, preset=SMOKE, device="cpu")
    assert DECLOUDED_SIGMA not in open_tile(plain)


@pytest.mark.slow
def test_demo_writes_the_uncertainty_quicklook(tmp_path: Path) -> None:
    import json

    from PIL import Image

    from fit.demo import run_demo

    result = run_demo(tmp_path / "demo", preset=HELD, dates=(10, 22), device="cpu")
    assert result.uncertainty is not None and result.uncertainty.name == "uncertainty.png"
    image = Image.open(result.uncertainty)
    assert image.size[0] > 3 * (image.size[1] - 40)  # three panels side by side, a legend below
    record = json.loads(result.metrics.read_text())["uncertainty"]
    assert record["path"] == str(result.uncertainty) and record["scale_top"] > 0
    assert record["painted_mean_sigma"] > 0 and record["painted_mean_abs_error"] > 0
    # the evaluation's fit rows carry the calibration of the same σ
    (fit_row,) = [r for r in json.loads(result.metrics.read_text())["evaluation"]["rows"]
                  if (r["method"], r["variant"]) == ("fit", "s1")]  # fmt: skip
    assert 0 <= fit_row["calibration"]["coverage"] <= 1 and fit_row["calibration"]["pixels"] > 0


def test_a_held_out_date_hazy_against_the_fill_is_left_out_of_the_error_model() -> None:
    """Five held-out dates of 10×10 px, 2 bands (blue first): their residuals scatter around 0, except on
    date 3 whose observation is 0.05 brighter than the fill in blue (haze the masks missed)."""
    rng = np.random.default_rng(0)
    prediction = np.full((5, 2, 10, 10), 0.2)
    reflectance = prediction + rng.normal(0.0, 0.01, prediction.shape)
    reflectance[3, 0] += 0.05
    held = np.ones((5, 10, 10), bool)
    kept = without_hazy_dates(reflectance, prediction, held, blue=0)
    assert not kept[3].any() and kept[[0, 1, 2, 4]].all()
    # The same date darker in blue (a shadow, a real change) is not haze: kept.
    darker = reflectance.copy()
    darker[3, 0] -= 0.1
    assert without_hazy_dates(darker, prediction, held, blue=0).all()
    # Without a blue band nothing is left out.
    assert without_hazy_dates(reflectance, prediction, held, blue=None).all()
    # A model fitted with the blue band never learns from the hazy date's samples.
    model = fit_error_model(reflectance, prediction, None, ~held, held, np.arange(5.0) * 10, blue=0)
    plain = fit_error_model(reflectance, prediction, None, ~held, held, np.arange(5.0) * 10)
    assert model is not None and plain is not None
    assert model.samples == plain.samples - 100 * 2
