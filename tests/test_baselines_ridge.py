"""The learned linear baseline (``ridge``): what it learns from, what it never sees, what it recovers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fit.arrays import TileArrays
from fit.baselines import (
    BASELINE_NAMES,
    S1_DB_RANGE,
    baselines_for,
    learned_linear,
    ridge_features,
    temporal_linear,
)
from fit.config import FAST
from fit.declouder import S1_DB_RANGE as FIT_S1_DB_RANGE
from fit.declouder import trusted_clear
from fit.evaluate import paint
from fit.metrics import psnr
from tiler.store import open_tile


@pytest.fixture(scope="module")
def window(worldcereal_tile: Path) -> TileArrays:
    """The 24×24 centre of the real sample's dates 0:30 (fast to fit a regression on)."""
    tile = TileArrays.from_dataset(open_tile(str(worldcereal_tile)).load()).dates(0, 30)
    cut = np.s_[..., 20:44, 20:44]
    return TileArrays(tile.name, tile.reflectance[cut], tile.mask[cut], tile.s1[cut], tile.bands, tile.times)


def test_the_radar_is_scaled_as_the_fit_scales_it() -> None:
    assert S1_DB_RANGE == FIT_S1_DB_RANGE
    assert "ridge" in BASELINE_NAMES and set(baselines_for(None)) == set(BASELINE_NAMES)


def test_ridge_recovers_a_residual_that_is_linear_in_the_s1_change() -> None:
    # 40 dates of 8x8 px: a smooth seasonal curve plus a term proportional to VV; half the
    # pixels of every third date are hidden. Interpolation misses the S1 term; the regression learns it.
    rng = np.random.default_rng(0)
    n, size = 40, 8
    days = np.arange(n) * 5.0
    s1_db = rng.uniform(-20, -5, (n, 2, size, size))
    base = 0.3 + 0.1 * np.sin(days / 60.0)[:, None, None, None] * np.ones((n, 1, size, size))
    valid = np.ones((n, size, size), bool)
    valid[::3, : size // 2] = False
    # reflectance moves with the radar: its interpolation residual is 0.2 × the S1 change (+ curvature)
    scaled = (s1_db - S1_DB_RANGE[0]) / (S1_DB_RANGE[1] - S1_DB_RANGE[0])
    values = np.clip(base + 0.2 * scaled[:, :1], 0, 1)
    hidden = ~valid
    linear = temporal_linear(values, valid, days)
    ridge = learned_linear(values, valid, days, s1_db)
    error = lambda filled: float(np.abs(filled - values)[:, 0][hidden].mean())  # noqa: E731
    assert error(ridge) < 0.1 * error(linear)
    # without the radar it has nothing to learn the S1 term from
    assert error(learned_linear(values, valid, days, None)) > 0.5 * error(linear)


def test_ridge_never_sees_a_hidden_value_and_keeps_the_valid_ones(window: TileArrays) -> None:
    _, valid = trusted_clear(window.reflectance, window.mask, window.bands, FAST)
    values = np.nan_to_num(window.reflectance)
    filled = learned_linear(values, valid, window.days, window.s1)
    assert np.isfinite(filled).all() and (filled >= 0).all() and (filled <= 1).all()
    assert np.array_equal(
        filled[valid[:, None].repeat(values.shape[1], 1)], values[valid[:, None].repeat(values.shape[1], 1)]
    )
    # anything written into the invalid pixels changes nothing anywhere
    scrambled = np.where(valid[:, None], values, np.random.default_rng(1).random(values.shape))
    assert np.array_equal(
        learned_linear(scrambled.astype(values.dtype), valid, window.days, window.s1), filled
    )


def test_features_are_leave_one_out(window: TileArrays) -> None:
    _, valid = trusted_clear(window.reflectance, window.mask, window.bands, FAST)
    values = np.nan_to_num(window.reflectance)
    guide, features, names = ridge_features(values, valid, window.days, window.s1)
    assert features.shape == (*valid.shape, len(names)) and "s1 change vv" in names
    # a valid observation's own value never enters its guide or features
    t, y, x = np.argwhere(valid)[len(np.argwhere(valid)) // 2]
    changed = values.copy()
    changed[t, :, y, x] += 0.3
    guide2, features2, _ = ridge_features(changed, valid, window.days, window.s1)
    assert np.array_equal(guide[t, :, y, x], guide2[t, :, y, x])
    assert np.array_equal(features[t, y, x], features2[t, y, x])
    _, no_radar, names_no_radar = ridge_features(values, valid, window.days, None)
    assert not any(n.startswith("s1") for n in names_no_radar) and no_radar.shape[-1] == len(names) - 4


def test_ridge_fills_real_painted_clouds_better_than_leaving_them(window: TileArrays) -> None:
    case = paint(window, FAST, k=2, mode="partial", protocol="oracle")
    series = case.tile
    _, valid = trusted_clear(series.reflectance, series.mask, series.bands, FAST)
    observed = np.nan_to_num(series.reflectance)
    truth = np.nan_to_num(window.reflectance)
    filled = learned_linear(observed, valid, series.days, series.s1)
    for t in case.targets:
        region = case.region & case.truth_clear[t]
        assert psnr(truth[t], filled[t], region) > psnr(truth[t], observed[t], region) + 5
