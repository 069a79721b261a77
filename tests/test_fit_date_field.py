"""The same-date field (``fit.date_field``): what it recovers, what it never sees, where it stays out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fit.arrays import TileArrays
from fit.baselines import temporal_linear
from fit.config import FAST, SMOKE, FitConfig
from fit.date_field import (
    DATE_FIELD_PRIOR,
    SIMILAR_MIN_PER_NEIGHBOUR,
    SIMILAR_PRIOR,
    _blur_torch,
    _nearest,
    _nearest_brute,
    blur,
    date_residual_field,
    similar_mean,
)
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


def _two_crops(hole: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """3 dates of 24×24 px, 2 bands, two "crops" in alternating 3-px columns with different courses
    over the window; on the middle date crop A is 0.04 above its interpolation and crop B 0.04 below.
    ``hole`` (rows and columns) of the middle date is hidden. Returns values, guide, visible, crop A."""
    rng = np.random.default_rng(1)
    crop_a = (np.arange(24) // 3 % 2 == 0)[None, :].repeat(24, axis=0)
    values = np.empty((3, 2, 24, 24))
    values[0] = np.where(crop_a, 0.2, 0.3)
    values[2] = np.where(crop_a, 0.4, 0.25)
    values[1] = 0.5 * (values[0] + values[2]) + np.where(crop_a, 0.04, -0.04)
    values += rng.normal(0, 0.002, values.shape)
    visible = np.ones((3, 24, 24), bool)
    visible[1, hole, hole] = False
    guide = temporal_linear(values, visible, np.array([0.0, 10.0, 20.0]), leave_one_out=True)
    return values, guide, visible, crop_a


def test_deep_in_a_hole_similar_pixels_carry_their_own_crops_change() -> None:
    """The date's mean is ~0 (the two crops' changes cancel); the similar pixels' mean is each crop's."""
    values, guide, visible, crop_a = _two_crops(slice(4, 20))
    by_mean = date_residual_field(values, guide, visible)
    by_similar = date_residual_field(values, guide, visible, similar=8)
    deep = np.zeros((24, 24), bool)
    deep[9:15, 9:15] = True  # > 4 px from any visible pixel
    for crop, sign in ((crop_a, 1.0), (~crop_a, -1.0)):
        pixels = deep & crop
        assert np.abs(by_mean[1][:, pixels]).max() < 0.01
        # Shrunk by k / (k + prior) towards the ~0 date mean: 8 / 10 of the crop's 0.04.
        np.testing.assert_allclose(sign * by_similar[1][:, pixels], 0.032, atol=0.004)
    error_mean = np.abs(guide[1] + by_mean[1] - values[1])[:, deep].mean()
    error_similar = np.abs(guide[1] + by_similar[1] - values[1])[:, deep].mean()
    assert error_similar < 0.3 * error_mean  # what is left: the shrinkage (0.008) and the noise


def test_similar_pixels_never_bring_a_pixels_own_value_nor_a_hidden_one() -> None:
    values, guide, visible, _ = _two_crops(slice(4, 20))
    field = date_residual_field(values, guide, visible, similar=8)
    own = values.copy()
    own[1, :, 1, 1] += 0.3  # a visible pixel's own value: its own field does not move
    moved = date_residual_field(own, guide, visible, similar=8)
    assert np.abs(moved[1, :, 1, 1] - field[1, :, 1, 1]).max() < 1e-6
    hidden = values.copy()
    hidden[1][:, ~visible[1]] = 0.9  # every hidden value: no field moves
    np.testing.assert_array_equal(date_residual_field(hidden, guide, visible, similar=8), field)


def test_similar_mean_takes_exactly_k_others_and_a_fixed_draw_of_candidates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    features = np.arange(10, dtype=np.float32).reshape(1, 10, 1)  # pixels on a line, 1 apart
    seen = np.ones((1, 10), bool)
    residual = np.arange(10, dtype=np.float32).reshape(1, 1, 10)
    fallback = np.zeros_like(residual)
    out = similar_mean(features, seen, residual, fallback, k=2)
    # Pixel 0's two nearest others are 1 and 2 (mean 1.5), pixel 5's are 4 and 6 (mean 5): shrunk by 2 / 4.
    assert out[0, 0, 0] == pytest.approx(1.5 * 2 / (2 + SIMILAR_PRIOR))
    assert out[0, 0, 5] == pytest.approx(5.0 * 2 / (2 + SIMILAR_PRIOR))
    # Fewer seen pixels than SIMILAR_MIN_PER_NEIGHBOUR per neighbour: the fallback.
    few = seen.copy()
    few[0, 2 * SIMILAR_MIN_PER_NEIGHBOUR - 1 :] = False
    np.testing.assert_array_equal(similar_mean(features, few, residual, fallback, k=2), fallback)
    monkeypatch.setattr("fit.date_field.SIMILAR_MAX_CANDIDATES", 2 * SIMILAR_MIN_PER_NEIGHBOUR)
    first = similar_mean(features, seen, residual, fallback, k=2, date=3)
    np.testing.assert_array_equal(first, similar_mean(features, seen, residual, fallback, k=2, date=3))
    assert not np.array_equal(first, out)


def test_similar_pixels_need_the_field() -> None:
    with pytest.raises(FitConfigError, match="date_field_similar > 0 only with date_field"):
        FitConfig(guide=True, date_field_similar=4)
    with pytest.raises(FitConfigError, match="date_field_similar >= 0"):
        FitConfig(guide=True, date_field=True, date_field_similar=-1)


def test_the_accelerator_search_finds_the_same_similar_pixels_as_the_cpu_one() -> None:
    """Brute force (the accelerator path, run on the CPU here) and the k-d tree (the CPU path) find the
    same neighbours, in the same order, on continuous features (no ties)."""
    rng = np.random.default_rng(5)
    points = rng.normal(size=(600, 8)).astype(np.float32)
    reference = points[rng.random(600) < 0.5]
    tree = _nearest(points, reference, 17, torch.device("cpu"))
    brute = _nearest_brute(points, reference, 17, torch.device("cpu"))
    assert tree.shape == (600, 17)
    np.testing.assert_array_equal(brute, tree)
