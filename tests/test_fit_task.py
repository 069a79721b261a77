"""Training on the task itself, never worse than the guide, and a seamless output; on real pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fit.arrays import TileArrays
from fit.baselines import temporal_linear
from fit.config import FAST, SMOKE, FitConfig
from fit.declouder import (
    HIDE_STREAM,
    cloud_shapes,
    decloud,
    feather_weights,
    fit_regime_shrinkage,
    fit_shrinkage,
    guide_gaps,
    guide_regimes,
    guide_series,
    holdout_whole_dates,
    paint_shapes,
    ridge_guide,
    s1_change,
    split_holdout,
    trusted_clear,
)
from fit.errors import FitConfigError
from tiler.store import MaskClass, open_tile


@pytest.fixture(scope="module")
def real_crop(worldcereal_tile: Path) -> TileArrays:
    """12 real dates (2018-09..2018-12, clear, partly and fully cloudy ones), 24×24 px."""
    ds = open_tile(str(worldcereal_tile)).isel(time=slice(8, 20), y=slice(20, 44), x=slice(20, 44)).load()
    return TileArrays.from_dataset(ds)


def crop(tile: TileArrays, y: slice, x: slice) -> TileArrays:
    return TileArrays(
        tile.name,
        tile.reflectance[:, :, y, x],
        tile.mask[:, y, x],
        tile.s1[:, :, y, x],
        tile.bands,
        tile.times,
    )


def painted(tile: TileArrays, config: FitConfig) -> tuple[TileArrays, int, np.ndarray, np.ndarray]:
    """(series, target date, painted pixels, truth): the clouds of the cloudiest partly cloudy date
    painted onto the clearest date and marked cloud (the oracle-holes protocol)."""
    _, clear = trusted_clear(tile.reflectance, tile.mask, tile.bands, config)
    cover = 1.0 - clear.mean(axis=(1, 2))
    target = int(np.argmin(cover))
    partly = np.flatnonzero((cover > 0.15) & (cover < 0.95))
    source = int(partly[np.argmax(cover[partly])])
    region = ~clear[source] & clear[target]
    assert region.sum() >= 4, "the crop must have clouds to paint"
    reflectance, mask = tile.reflectance.copy(), tile.mask.copy()
    reflectance[target][:, region] = tile.reflectance[source][:, region]
    mask[target][region] = MaskClass.CLOUD
    series = TileArrays(tile.name, reflectance, mask, tile.s1, tile.bands, tile.times)
    return series, target, region, np.nan_to_num(tile.reflectance)


def fit(tile: TileArrays, config: FitConfig, seed: int = 0):
    return decloud(
        tile.reflectance,
        tile.mask,
        tile.s1,
        config,
        bands=tile.bands,
        days=tile.days,
        device="cpu",
        seed=seed,
    )


def seam_ratio(output: np.ndarray, truth: np.ndarray, kept: np.ndarray) -> float:
    """Mean absolute difference of ``output`` (band, y, x) across 4-neighbour pairs of one kept and one
    filled pixel, over the truth's at the same pairs (1 = as smooth as the truth)."""
    out_steps, truth_steps = [], []
    for axis in (1, 2):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        boundary = kept[tuple(a[1:])] != kept[tuple(b[1:])]
        out_steps.append(np.abs(output[tuple(a)] - output[tuple(b)])[:, boundary])
        truth_steps.append(np.abs(truth[tuple(a)] - truth[tuple(b)])[:, boundary])
    return float(np.concatenate(out_steps, axis=1).mean() / np.concatenate(truth_steps, axis=1).mean())


def test_new_settings_are_off_by_default_and_bad_values_name_the_field() -> None:
    plain = FitConfig()
    assert (plain.hide_fraction, plain.hide_resample, plain.feather_px, plain.shrink) == (
        0.0,
        False,
        0,
        "off",
    )
    assert (plain.s1_change, plain.holdout_shapes, plain.holdout_dates) == (False, "pixels", 0)
    bad = {
        "hide_fraction": dict(guide=True, hide_fraction=0.7),
        "hide_fraction > 0 only with guide": dict(hide_fraction=0.2),
        "hide_weight": dict(guide=True, hide_fraction=0.2, hide_weight=-1.0),
        "hide_resample": dict(guide=True, hide_resample=True),
        "feather_px >= 0": dict(keep_clear=True, feather_px=-1),
        "feather_px > 0 only with keep_clear": dict(feather_px=2),
        "holdout_shapes": dict(holdout_shapes="squares"),
        "shrink in": dict(guide=True, holdout_fraction=0.2, shrink="pixel"),
        "shrink needs guide and holdout_fraction": dict(guide=True, shrink="band"),
        "holdout_dates >= 0": dict(holdout_dates=-1),
        "s1_change only with guide": dict(s1_change=True),
        "guide_model in": dict(guide=True, guide_model="mlp"),
        "guide_model ridge only with guide": dict(guide_model="ridge"),
    }
    for field, changes in bad.items():
        with pytest.raises(FitConfigError, match=field):
            FitConfig(**changes)  # type: ignore[arg-type]


def test_hidden_pixels_come_in_real_cloud_shapes_from_clear_samples(real_crop: TileArrays) -> None:
    refined, clear = trusted_clear(real_crop.reflectance, real_crop.mask, real_crop.bands, FAST)
    shapes = cloud_shapes(refined, clear)
    assert shapes.any() and clear.any()
    hidden = paint_shapes(clear, shapes, 0.2, np.random.default_rng(0))
    assert not (hidden & ~clear).any()  # only trusted samples are hidden
    assert 0.2 <= hidden.sum() / clear.sum() < 0.9
    # Each hidden date is one cloud date's shape, shifted: its pixels are a shifted copy of those clouds.
    for date in np.flatnonzero(hidden.any(axis=(1, 2))):
        assert any(
            not (hidden[date] & ~np.roll(shapes[s], (dy, dx), axis=(0, 1))).any()
            for s in range(len(shapes))
            if s != date
            for dy in range(shapes.shape[1])
            for dx in range(shapes.shape[2])
        )
    again = paint_shapes(clear, shapes, 0.2, np.random.default_rng(0))
    assert np.array_equal(hidden, again)
    # No cloud anywhere: random single pixels instead.
    fallback = paint_shapes(clear, np.zeros_like(shapes), 0.2, np.random.default_rng(0))
    assert 0.1 < fallback.sum() / clear.sum() < 0.3


def test_every_input_is_blind_to_samples_it_does_not_see(real_crop: TileArrays) -> None:
    """Guides, their gaps and the S1 change of every date depend on visible samples only."""
    _, clear = trusted_clear(real_crop.reflectance, real_crop.mask, real_crop.bands, FAST)
    reflectance = np.nan_to_num(real_crop.reflectance)
    hidden = clear & (np.random.default_rng(1).random(clear.shape) < 0.3)
    visible = clear & ~hidden
    changed = np.where(hidden[:, None], 1.0 - reflectance, reflectance)
    days = real_crop.days
    assert np.array_equal(guide_series(reflectance, visible, days), guide_series(changed, visible, days))
    # ... while the guide of the same clear set with the hidden samples visible does depend on them.
    assert not np.array_equal(guide_series(reflectance, clear, days), guide_series(changed, clear, days))
    assert not np.array_equal(guide_gaps(visible, days), guide_gaps(clear, days))
    radar = np.random.default_rng(2).random((len(days), 2, *clear.shape[1:])).astype(np.float32)
    change = s1_change(radar, visible, days)
    expected = radar - temporal_linear(radar, visible, days, leave_one_out=True)
    np.testing.assert_allclose(change, 5.0 * expected, rtol=1e-5, atol=1e-6)
    # The ridge guide is fitted on visible samples and predicts each from the others: blind as well.
    guide, changed_guide = guide_series(reflectance, visible, days), guide_series(changed, visible, days)
    ridge = ridge_guide(reflectance, guide, visible, radar, days)
    assert np.array_equal(ridge, ridge_guide(changed, changed_guide, visible, radar, days))
    assert not np.array_equal(ridge, guide) and ((ridge >= 0) & (ridge <= 1)).all()


def test_ridge_guide_corrects_the_interpolation_with_the_radar_where_it_can(real_crop: TileArrays) -> None:
    """On the visible samples it fits, the ridge guide errs less than the interpolation; with too few
    samples for its features it is the interpolation unchanged."""
    _, clear = trusted_clear(real_crop.reflectance, real_crop.mask, real_crop.bands, FAST)
    reflectance = np.nan_to_num(real_crop.reflectance)
    days = real_crop.days
    radar = np.nan_to_num(real_crop.s1 + 25.0) / 25.0
    guide = guide_series(reflectance, clear, days)
    ridge = ridge_guide(reflectance, guide, clear, radar.astype(np.float32), days)
    samples = np.moveaxis(reflectance, 1, -1)[clear]
    assert np.mean((np.moveaxis(ridge, 1, -1)[clear] - samples) ** 2) < np.mean(
        (np.moveaxis(guide, 1, -1)[clear] - samples) ** 2
    )
    few = np.zeros_like(clear)
    few[:, :2, :2] = clear[:, :2, :2]
    assert np.array_equal(ridge_guide(reflectance, guide, few, radar.astype(np.float32), days), guide)


def test_hidden_samples_reach_no_input_and_the_loss_only_through_their_weight(real_crop: TileArrays) -> None:
    """With hide_weight 0, the values of the hidden samples cannot change the training at all: they are
    in no input (observation, any date's guide) and in no loss; with a weight they are in the loss."""
    config = SMOKE.replace(passes=1, iterations_per_window=2, hide_fraction=0.25, hide_weight=0.0)
    refined, clear = trusted_clear(real_crop.reflectance, real_crop.mask, real_crop.bands, config)
    hidden = paint_shapes(clear, cloud_shapes(refined, clear), 0.25, np.random.default_rng([0, HIDE_STREAM]))
    assert hidden.sum() > 20
    changed_s2 = real_crop.reflectance.copy()
    changed_s2[:, 3][hidden] *= 1.05  # band B05: no mask test reads it, so the trusted set stays the same
    changed = TileArrays(
        real_crop.name, changed_s2, real_crop.mask, real_crop.s1, real_crop.bands, real_crop.times
    )
    assert np.array_equal(trusted_clear(changed_s2, real_crop.mask, real_crop.bands, config)[1], clear)
    before, after = fit(real_crop, config), fit(changed, config)
    np.testing.assert_array_equal(before.loss_curve, after.loss_curve)
    weighted = config.replace(hide_weight=4.0)
    assert not np.array_equal(fit(real_crop, weighted).loss_curve, fit(changed, weighted).loss_curve)


def test_shrinkage_keeps_a_correction_only_as_far_as_it_helps() -> None:
    rng = np.random.default_rng(0)
    target = rng.random((4, 3, 5, 5))
    guide = target + 0.1 * rng.standard_normal(target.shape)
    held = rng.random((4, 5, 5)) < 0.5
    np.testing.assert_allclose(fit_shrinkage(target, guide, target, held), 1.0)  # a perfect correction
    overshoot = guide + 2.0 * (target - guide)
    np.testing.assert_allclose(fit_shrinkage(overshoot, guide, target, held), 0.5)
    wrong_way = guide - (target - guide)
    np.testing.assert_allclose(fit_shrinkage(wrong_way, guide, target, held), 0.0)
    np.testing.assert_allclose(fit_shrinkage(guide, guide, target, held), 0.0)  # no correction at all


def test_a_tiny_short_series_never_ends_worse_than_its_guide(real_crop: TileArrays) -> None:
    """6×6 px, 12 real dates (80 steps of fast): the fit's error on held-out clear pixels and on the
    painted ones is not above the interpolation's it starts from (plus 2 % for the painted ones, which
    the check never saw)."""
    tiny = crop(real_crop, slice(0, 6), slice(3, 9))
    config = FAST.replace(holdout_fraction=0.2, holdout_shapes="clouds", shrink="band", start_at_guide=True)
    series, target, region, truth = painted(tiny, config)
    result = fit(series, config)
    assert result.iterations == 80 and result.shrinkage is not None
    assert all(0.0 <= f <= 1.0 for f in result.shrinkage)
    assert result.holdout_fit_mse <= result.holdout_guide_mse
    valid = trusted_clear(series.reflectance, series.mask, series.bands, config)[1]
    linear = temporal_linear(np.nan_to_num(series.reflectance), valid, series.days)
    fit_error = np.mean((result.prediction[target][:, region] - truth[target][:, region]) ** 2)
    guide_error = np.mean((linear[target][:, region] - truth[target][:, region]) ** 2)
    assert fit_error <= 1.02 * guide_error


def test_guide_regimes_mark_the_samples_the_guide_extrapolates() -> None:
    visible = np.ones((5, 2, 2), bool)
    visible[3, 0, 0] = visible[4, 0, 0] = False  # pixel (0, 0): nothing after date 2
    regimes = guide_regimes(visible, np.arange(5.0) * 5)
    # Leave-one-out: the first and last dates have one side only, whatever they show themselves.
    assert (regimes[0] == 1).all() and (regimes[4] == 1).all()
    assert (regimes[1:3, 1, 1] == 0).all() and regimes[3, 1, 1] == 0
    assert regimes[3, 0, 0] == 1  # no visible date after it: extrapolated


def test_whole_held_out_dates_are_clear_interior_dates(real_crop: TileArrays) -> None:
    _, clear = trusted_clear(real_crop.reflectance, real_crop.mask, real_crop.bands, FAST)
    share = clear.mean(axis=(1, 2))
    for seed in range(5):
        held = holdout_whole_dates(clear, 2, np.random.default_rng(seed))
        dates = np.flatnonzero(held.any(axis=(1, 2)))
        assert len(dates) == min(2, int(((share >= 0.9)[1:-1]).sum()))
        assert 0 not in dates and len(clear) - 1 not in dates
        assert all(np.array_equal(held[d], clear[d]) and share[d] >= 0.9 for d in dates)  # whole dates
    # With shapes too, the dates come on top of the shapes, and nothing held out is learned.
    learn, held = split_holdout(
        clear,
        0.1,
        0,
        cloud_shapes(*trusted_clear(real_crop.reflectance, real_crop.mask, real_crop.bands, FAST)),
        dates=2,
    )
    assert not (learn & held).any() and np.array_equal(learn | held, clear)
    assert sum(np.array_equal(held[d], clear[d]) and clear[d].any() for d in range(len(clear))) >= 2


def test_regime_shrinkage_keeps_no_correction_that_hurts_a_held_out_date() -> None:
    rng = np.random.default_rng(1)
    target = rng.random((6, 2, 8, 8))
    guide = target + 0.1 * rng.standard_normal(target.shape)
    held = np.zeros((6, 8, 8), bool)
    held[[1, 2, 3]] = True
    regimes = np.zeros((6, 8, 8), np.int8)
    # A perfect correction on dates 1 and 2, the wrong way on date 3: pooled it would still be kept.
    prediction = target.copy()
    prediction[3] = guide[3] - 0.3 * (target[3] - guide[3])
    assert (fit_shrinkage(prediction, guide, target, held) > 0.5).all()
    factors = fit_regime_shrinkage(prediction, guide, target, held, regimes)
    np.testing.assert_allclose(factors[0], 0.0)
    assert (factors[1] == 0.0).all()  # no held-out sample in the extrapolated regime
    # Where it helps on every held-out date it is kept, up to the least any date wants.
    prediction[3] = guide[3] + 0.5 * (target[3] - guide[3])
    factors = fit_regime_shrinkage(prediction, guide, target, held, regimes)
    assert (factors[0] > 0.9).all() and (factors[0] <= 1.0).all()
    # One held-out date alone is chance: no correction.
    single = np.zeros_like(held)
    single[1] = True
    np.testing.assert_allclose(fit_regime_shrinkage(target, guide, target, single, regimes), 0.0)


def test_fast_on_a_tiny_short_series_ends_at_or_above_its_guide(real_crop: TileArrays) -> None:
    """``fast`` as it is (regimes, whole held-out dates) on 6×6 px, 12 real dates: the painted pixels'
    error is not above linear interpolation's (the suite's tiny tile lost 1.5–1.9 dB with band shrink)."""
    tiny = crop(real_crop, slice(0, 6), slice(3, 9))
    series, target, region, truth = painted(tiny, FAST)
    result = fit(series, FAST)
    assert result.shrinkage_regimes is not None and len(result.shrinkage_regimes) == 2
    assert all(0.0 <= f <= 1.0 for row in result.shrinkage_regimes for f in row)
    assert result.holdout_fit_mse <= result.holdout_guide_mse
    valid = trusted_clear(series.reflectance, series.mask, series.bands, FAST)[1]
    linear = temporal_linear(np.nan_to_num(series.reflectance), valid, series.days)
    fit_error = np.mean((result.prediction[target][:, region] - truth[target][:, region]) ** 2)
    guide_error = np.mean((linear[target][:, region] - truth[target][:, region]) ** 2)
    assert fit_error <= 1.001 * guide_error


def test_the_ridge_guide_is_checked_per_regime_too(real_crop: TileArrays) -> None:
    """With the ridge guide and ``shrink="regime"`` its correction is kept per regime and band only as
    far as every held-out date allows: the tiny series still ends at or above linear interpolation."""
    tiny = crop(real_crop, slice(0, 6), slice(3, 9))
    config = FAST.replace(guide_model="ridge")
    series, target, region, truth = painted(tiny, config)
    result = fit(series, config)
    assert result.ridge_shrinkage is not None and all(0.0 <= f <= 1.0 for f in result.ridge_shrinkage)
    valid = trusted_clear(series.reflectance, series.mask, series.bands, config)[1]
    linear = temporal_linear(np.nan_to_num(series.reflectance), valid, series.days)
    fit_error = np.mean((result.prediction[target][:, region] - truth[target][:, region]) ** 2)
    guide_error = np.mean((linear[target][:, region] - truth[target][:, region]) ** 2)
    assert fit_error <= 1.001 * guide_error


def test_feathered_output_has_a_lower_seam_than_the_hard_switch(real_crop: TileArrays) -> None:
    config = SMOKE.replace(passes=1, iterations_per_window=3)
    series, target, _, truth = painted(real_crop, config)
    kept = trusted_clear(series.reflectance, series.mask, series.bands, config)[1][target]
    hard = fit(series, config)
    soft = fit(series, config.replace(feather_px=3))
    # Filled pixels are the fit's in both; kept pixels far from any fill stay exactly as observed.
    np.testing.assert_array_equal(hard.prediction[target][:, ~kept], soft.prediction[target][:, ~kept])
    far = feather_weights(kept[None], 3)[0] == 1.0
    assert far.any()
    np.testing.assert_array_equal(
        soft.prediction[target][:, far], np.nan_to_num(series.reflectance)[target][:, far]
    )
    hard_seam = seam_ratio(hard.prediction[target], truth[target], kept)
    soft_seam = seam_ratio(soft.prediction[target], truth[target], kept)
    assert soft_seam < hard_seam


def test_feather_weights_ramp_with_the_distance_to_the_fill() -> None:
    kept = np.ones((2, 1, 9), bool)
    kept[0, 0, 0] = False
    weights = feather_weights(kept, 3)
    np.testing.assert_allclose(weights[0, 0, :6], [0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert (weights[1] == 1.0).all()  # nothing filled on that date: every observation kept as it is
