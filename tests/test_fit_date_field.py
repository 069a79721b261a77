"""The same-date field (``fit.date_field``): what it recovers, what it never sees, where it stays out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fit.arrays import TileArrays
from fit.baselines import temporal_linear
from fit.config import FAST, SMOKE, FitConfig
from fit.date_field import DATE_FIELD_PRIOR, _blur_torch, blur, date_residual_field
from fit.declouder import decloud, guide_series, trusted_clear
from fit.errors import FitConfigError
from fit.evaluate import paint
from fit.metrics import psnr
from tiler.store import open_tile


@pytest.fixture(scope="module")
def real_crop(worldcereal_tile: Path) -> TileArrays:
    """12 real dates (2018-09..2018-12, clear, partly and fully cloudy ones), 24×24 px."""
    ds = open_tile(str(worldcereal_tile)).isel(time=slice(8, 20), y=slice(20, 44), x=slice(20, 44)).load()
    return TileArrays.from_dataset(ds)


def _flat_series(offset: float, hole: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 dates of 20×20 px, 2 bands; the middle date is its neighbours' mean + ``offset`` everywhere, and
    ``hole`` (rows and columns) of it is hidden."""
    rng = np.random.default_rng(0)
    values = np.full((3, 2, 20, 20), 0.3) + rng.normal(0, 0.01, (3, 2, 20, 20))
    values[1] = 0.5 * (values[0] + values[2]) + offset
    visible = np.ones((3, 20, 20), bool)
    visible[1, hole, hole] = False
    guide = temporal_linear(values, visible, np.array([0.0, 10.0, 20.0]), leave_one_out=True)
    return values, guide, visible


def test_a_date_wide_change_is_carried_into_a_small_hole() -> None:
    values, guide, visible = _flat_series(0.05, slice(8, 12))
    field = date_residual_field(values, guide, visible)
    hidden = ~visible[1]
    # The hole's pixels take the date's offset from their visible neighbours (the guide alone misses it).
    np.testing.assert_allclose(field[1][:, hidden], 0.05, atol=0.01)
    assert np.abs(guide[1][:, hidden] + field[1][:, hidden] - values[1][:, hidden]).max() < 0.01
    # Where the guide is right on the visible pixels, the field adds nothing.
    assert not date_residual_field(values, values, visible).any()


def test_deep_in_a_large_hole_the_field_falls_back_to_the_shrunk_date_mean() -> None:
    values, guide, visible = _flat_series(0.05, slice(2, 18))
    field = date_residual_field(values, guide, visible)
    shown = int(visible[1].sum())
    expected = 0.05 * shown / (shown + DATE_FIELD_PRIOR)
    assert field[1, 0, 10, 10] == pytest.approx(expected, abs=0.005)
    assert field[1, 0, 10, 10] < field[1, 0, 2, 2]  # the hole's edge has visible neighbours


def test_a_pixel_never_sees_its_own_observation_nor_any_hidden_one() -> None:
    values, guide, visible = _flat_series(0.05, slice(8, 12))
    field = date_residual_field(values, guide, visible)
    changed = values.copy()
    changed[1, :, 5, 5] += 0.3  # a visible pixel's own value
    changed[1, :, 9, 9] = 0.9  # a hidden pixel's value
    other = date_residual_field(changed, guide, visible)
    assert other[1, 0, 5, 5] == pytest.approx(field[1, 0, 5, 5], abs=1e-6)
    assert other[1, 0, 9, 9] != pytest.approx(field[1, 0, 9, 9], abs=1e-4)  # a visible neighbour moved
    hidden_only = values.copy()
    hidden_only[1][:, ~visible[1]] = 0.9
    np.testing.assert_array_equal(date_residual_field(hidden_only, guide, visible), field)


def test_a_date_with_nothing_visible_gets_no_field() -> None:
    values, guide, visible = _flat_series(0.05, slice(0, 20))
    assert not visible[1].any()
    assert not date_residual_field(values, guide, visible)[1].any()


def test_the_field_fills_real_painted_clouds_better_than_the_interpolation(real_crop: TileArrays) -> None:
    case = paint(real_crop, FAST, k=1, mode="partial", protocol="oracle")
    series = case.tile
    _, visible = trusted_clear(series.reflectance, series.mask, series.bands, FAST)
    observed = np.nan_to_num(series.reflectance)
    truth = np.nan_to_num(real_crop.reflectance)
    guide = guide_series(observed, visible, series.days)
    corrected = np.clip(guide + date_residual_field(observed, guide, visible), 0, 1)
    (target,) = case.targets
    region = case.region & case.truth_clear[target]
    assert region.sum() > 20 and visible[target].any()
    assert psnr(truth[target], corrected[target], region) > psnr(truth[target], guide[target], region) + 0.5


def test_a_fit_with_the_field_reports_its_share_and_needs_the_guide(real_crop: TileArrays) -> None:
    with pytest.raises(FitConfigError, match="date_field only with guide"):
        FitConfig(date_field=True)
    config = SMOKE.replace(
        guide=True, start_at_guide=True, keep_clear=True, holdout_fraction=0.1, holdout_shapes="clouds",
        shrink="band", date_field=True, passes=1, iterations_per_window=1,
    )  # fmt: skip
    result = decloud(
        real_crop.reflectance, real_crop.mask, real_crop.s1, config,
        bands=real_crop.bands, days=real_crop.days, device="cpu",
    )  # fmt: skip
    assert result.date_field_shrinkage is not None
    assert len(result.date_field_shrinkage) == len(real_crop.bands)
    assert all(0.0 <= f <= 1.0 for f in result.date_field_shrinkage)
    plain = decloud(
        real_crop.reflectance, real_crop.mask, real_crop.s1, config.replace(date_field=False),
        bands=real_crop.bands, days=real_crop.days, device="cpu",
    )  # fmt: skip
    assert plain.date_field_shrinkage is None


def test_the_accelerator_path_blurs_as_scipy_does() -> None:
    planes = np.random.default_rng(3).random((3, 17, 29)).astype(np.float32)
    np.testing.assert_allclose(_blur_torch(planes, 1.5, torch.device("cpu")), blur(planes, 1.5), atol=1e-6)


def test_bright_blue_outliers_stay_out_of_the_field() -> None:
    """A visible pixel much brighter in blue than its date's other residuals (haze the masks missed)
    moves no field; without ``blue`` it does."""
    values, guide, visible = _flat_series(0.0, slice(8, 12))
    hazy = values.copy()
    hazy[1, :, 7, 7] += 0.2  # next to the hole, both bands (band 0 is blue here)
    plain = date_residual_field(values, guide, visible, blue=0)
    np.testing.assert_allclose(date_residual_field(hazy, guide, visible, blue=0), plain, atol=1e-6)
    assert np.abs(date_residual_field(hazy, guide, visible) - plain)[1, :, 8, 8].min() > 0.01
