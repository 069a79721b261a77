"""The evaluation protocol on the real WorldCereal sample, and the baselines on hand-made series."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fit.arrays import TileArrays
from fit.baselines import mosaic_mean, nearest_clear, observation_gaps, temporal_linear
from fit.config import SMOKE
from fit.declouder import decloud, trusted_clear
from fit.errors import EvaluationError
from fit.evaluate import PARTIAL_COVER, TARGET_MIN_CLEAR, calibration_lines, evaluate, paint
from tiler.store import MaskClass, open_tile


@pytest.fixture(scope="module")
def window(worldcereal_tile: Path) -> TileArrays:
    """The first 30 real dates (2018-08..2019-02) of the sample: the paper's N = 30."""
    return TileArrays.from_dataset(open_tile(str(worldcereal_tile)).load()).dates(0, 30)


def test_smoke_evaluation_beats_the_painted_input(window: TileArrays) -> None:
    evaluation = evaluate(window, SMOKE, paint_mode="cloudiest", targets=1, inputs=("s1",), device="cpu")
    fit = evaluation.row("fit", "s1")
    # the whole target is painted: no kept/filled boundary on it, so no seam to measure
    assert math.isnan(fit.seam) and evaluation.painted_fraction == 1.0
    fit = evaluation.row("fit", "s1")
    painted = evaluation.row("painted input", "no filling")
    for row in evaluation.rows:
        for scores in (row.painted, row.whole):
            assert all(math.isfinite(v) for v in scores.to_dict().values()), row.label
    assert fit.painted.rmse < painted.painted.rmse
    assert fit.painted.psnr > painted.painted.psnr
    assert fit.painted.mae < painted.painted.mae
    methods = {(r.method, r.variant) for r in evaluation.rows}
    for baseline in ("linear", "mosaic", "nearest", "ridge"):
        assert {(baseline, "scl"), (baseline, "refined")} <= methods
    record = json.loads(json.dumps(evaluation.to_dict()))
    assert record["targets"] == list(evaluation.targets)
    assert set(record["fit_margin_db_painted"]) == {"s1"}
    assert record["best_refined_baseline_painted"].endswith("(refined)")
    assert record["protocol"] == "realistic"


def test_partial_oracle_evaluation_scores_seams_and_the_learned_baseline(window: TileArrays) -> None:
    evaluation = evaluate(
        window, SMOKE, paint_mode="partial", protocol="oracle", targets=1, inputs=("s1",), device="cpu"
    )
    assert evaluation.protocol == "oracle" and evaluation.painted_trusted_fraction == 0.0
    fit, painted = evaluation.row("fit", "s1"), evaluation.row("painted input", "no filling")
    ridge, linear = evaluation.row("ridge", "refined"), evaluation.row("linear", "refined")
    # leaving the painted clouds in place steps hardest at the boundary
    assert painted.seam > max(fit.seam, linear.seam, ridge.seam) > 0
    assert all(math.isfinite(r.seam) for r in (fit, ridge, linear))
    # the learned baseline is a baseline: it competes for "best"
    best = evaluation.best_baseline(variant="refined")
    assert best.painted.psnr >= max(ridge.painted.psnr, linear.painted.psnr)
    assert best.variant == "refined"


def test_snapshots_score_the_same_fit_as_the_result(window: TileArrays) -> None:
    config = SMOKE.replace(name="smoke-2", passes=2)
    seen: list[tuple[int, int, float]] = []
    evaluation = evaluate(
        window,
        config,
        inputs=("s1",),
        device="cpu",
        snapshot_passes=(1, 2),
        on_snapshot=lambda passes, steps, scores: seen.append((passes, steps, scores.painted.psnr)),
    )
    assert [(p, s) for p, s, _ in seen] == [(1, 26), (2, 52)]  # 26 windows of 5 in 30 dates, 1 step each
    assert seen[-1][2] == evaluation.row("fit", "s1").painted.psnr
    assert seen[0][2] != seen[-1][2]


def test_a_warm_started_evaluation_runs_the_warm_passes(window: TileArrays) -> None:
    config = SMOKE.replace(name="smoke-warm", passes=2, warm_passes=1)
    neighbour = decloud(
        window.reflectance,
        window.mask,
        window.s1,
        config,
        bands=window.bands,
        days=window.days,
        device="cpu",
        keep_weights=True,
    )
    seen: list[int] = []
    evaluate(
        window,
        config,
        inputs=("s1",),
        device="cpu",
        init_weights=neighbour.weights,
        snapshot_passes=(1, 2),
        on_snapshot=lambda passes, steps, scores: seen.append(steps),
    )
    assert seen == [26]  # one warm pass of 26 windows, not the two passes of a cold start


def test_targets_are_truly_clear_and_painted_with_real_clouds(window: TileArrays) -> None:
    for mode in ("cloudiest", "partial"):
        case = paint(window, SMOKE, k=2, mode=mode)
        assert len(case.targets) == 2 and case.source not in case.targets
        for t in case.targets:
            assert case.truth_clear[t].mean() >= TARGET_MIN_CLEAR
            # the painted pixels hold the source date's values and its SCL classes, nothing else changed
            region, source = case.region, window.reflectance[case.source]
            assert np.array_equal(case.tile.reflectance[t][:, region], source[:, region])
            assert np.array_equal(case.tile.mask[t][region], window.mask[case.source][region])
            assert np.array_equal(case.tile.reflectance[t][:, ~region], window.reflectance[t][:, ~region])
        others = [d for d in range(window.n_dates) if d not in case.targets]
        assert np.array_equal(case.tile.mask[others], window.mask[others])
        if mode == "partial":
            assert PARTIAL_COVER[0] <= case.region.mean() <= PARTIAL_COVER[1]
        else:
            refined, _ = trusted_clear(window.reflectance, window.mask, window.bands, SMOKE)
            cover = (refined == MaskClass.CLOUD) | (refined == MaskClass.SHADOW)
            assert case.region.mean() == cover.mean(axis=(1, 2)).max()


def test_no_clear_target_is_a_clear_error(window: TileArrays) -> None:
    cloudy = window.dates(1, 6)  # 2018-08-14..09-08 holds no date that is clear after refinement
    with pytest.raises(EvaluationError, match=r"no date is at least 98% clear.*--dates"):
        evaluate(cloudy, SMOKE, device="cpu")


def test_baselines_by_hand() -> None:
    # one pixel, one band, 5 dates at days 0, 1, 2, 4, 8; clear on dates 0, 2 and 4
    values = np.array([0.1, 0.9, 0.3, 0.9, 0.7]).reshape(5, 1, 1, 1)
    valid = np.array([True, False, True, False, True]).reshape(5, 1, 1)
    days = np.array([0.0, 1.0, 2.0, 4.0, 8.0])
    linear = temporal_linear(values, valid, days).ravel()
    assert linear == pytest.approx([0.1, 0.2, 0.3, 0.3 + 0.4 * 2 / 6, 0.7])
    assert mosaic_mean(values, valid, days).ravel() == pytest.approx([0.1, 1.1 / 3, 0.3, 1.1 / 3, 0.7])
    assert nearest_clear(values, valid, days).ravel() == pytest.approx([0.1, 0.1, 0.3, 0.3, 0.7])
    # leave-one-out: each date from the others only
    loo = temporal_linear(values, valid, days, leave_one_out=True).ravel()
    assert loo == pytest.approx([0.3, 0.2, 0.1 + 0.6 * 2 / 8, 0.3 + 0.4 * 2 / 6, 0.3])
    # the gaps the (leave-one-out) interpolation spans, in days back and forward
    gaps = observation_gaps(valid, days, leave_one_out=True)[:, :, 0, 0]
    assert gaps.tolist() == [[math.inf, 2], [1, 1], [2, 6], [2, 4], [6, math.inf]]
    # a pixel never clear gets the median of every clear observation
    never = np.zeros((5, 1, 1), bool)
    both = np.concatenate([valid, never], axis=2)
    filled = temporal_linear(np.concatenate([values, values], axis=3), both, days)
    assert filled[:, 0, 0, 1] == pytest.approx([0.3] * 5)


def _linear_by_pixel(
    values: np.ndarray, valid: np.ndarray, days: np.ndarray, leave_one_out: bool
) -> np.ndarray:
    """temporal_linear written out pixel by pixel and date by date: the definition the fast one must keep."""
    out = np.empty(values.shape, dtype=np.float64)
    picked = np.moveaxis(values, 1, -1)[valid]
    fallback = np.median(picked, axis=0) if len(picked) else np.full(values.shape[1], np.nan)
    for y, x in np.ndindex(valid.shape[1:]):
        for t in range(len(days)):
            if valid[t, y, x] and not leave_one_out:
                out[t, :, y, x] = values[t, :, y, x]
                continue
            before = [d for d in range(t) if valid[d, y, x]]
            after = [d for d in range(t + 1, len(days)) if valid[d, y, x]]
            if before and after:
                p, n = before[-1], after[0]
                span = days[n] - days[p]
                w = (days[t] - days[p]) / span if span else 0.0
                out[t, :, y, x] = (1.0 - w) * values[p, :, y, x] + w * values[n, :, y, x]
            elif before or after:
                out[t, :, y, x] = values[(before[-1:] or after[:1])[0], :, y, x]
            else:
                out[t, :, y, x] = fallback
    return out.astype(values.dtype)


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_temporal_linear_matches_its_definition(leave_one_out: bool) -> None:
    # Random small series: values NaN where not valid, repeated days, pixels never valid, float32 and 64.
    rng = np.random.default_rng(7)
    for trial in range(40):
        n, bands = rng.integers(1, 8), rng.integers(1, 4)
        height, width = rng.integers(1, 5), rng.integers(1, 5)
        dtype = np.float32 if trial % 2 else np.float64
        values = rng.random((n, bands, height, width)).astype(dtype)
        valid = rng.random((n, height, width)) < rng.random()
        values[np.broadcast_to(~valid[:, None], values.shape)] = np.nan
        days = np.sort(rng.choice(60, n, replace=False)).astype(np.float64)
        if n > 2:
            days[2] = days[1]  # two acquisitions on one day: no division by a zero span
        got = temporal_linear(values, valid, days, leave_one_out=leave_one_out)
        want = _linear_by_pixel(values, valid, days, leave_one_out)
        assert got.dtype == values.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"trial {trial}")


def test_oracle_holes_leave_no_painted_pixel_trusted(window: TileArrays) -> None:
    from fit.evaluate import PAINT_MODES

    for mode in PAINT_MODES:
        oracle = paint(window, SMOKE, k=2, mode=mode, protocol="oracle")
        realistic = paint(window, SMOKE, k=2, mode=mode, protocol="realistic")
        assert oracle.targets == realistic.targets and oracle.source == realistic.source
        assert np.array_equal(oracle.region, realistic.region)
        assert np.array_equal(oracle.tile.reflectance, realistic.tile.reflectance, equal_nan=True)
        _, trusted = trusted_clear(oracle.tile.reflectance, oracle.tile.mask, window.bands, SMOKE)
        for t in oracle.targets:
            assert (oracle.tile.mask[t][oracle.region] == MaskClass.CLOUD).all()
            assert not trusted[t][oracle.region].any()
    # end to end, the refined masks of the painted series still trust some painted (cloud) pixels
    realistic = paint(window, SMOKE, k=2, mode="partial")
    _, trusted = trusted_clear(realistic.tile.reflectance, realistic.tile.mask, window.bands, SMOKE)
    assert any(trusted[t][realistic.region].any() for t in realistic.targets)


def test_unknown_protocol_is_a_clear_error(window: TileArrays) -> None:
    with pytest.raises(EvaluationError, match=r"unknown protocol 'paper'.*--protocol.*realistic, oracle"):
        paint(window, SMOKE, k=1, mode="partial", protocol="paper")


def test_the_demo_quicklook_seam_uses_the_nearest_clear_date(window: TileArrays) -> None:
    from fit.config import FAST
    from fit.demo import quicklook_seam, shown_dates

    cloudy, reference, clear = shown_dates(window, FAST)
    assert 0 < clear[cloudy].mean() < 1  # a partly cloudy date: kept and filled pixels side by side
    observed = np.nan_to_num(window.reflectance)
    # filled with the clear date itself, and kept pixels too: as smooth as that date, ratio 1
    as_reference = np.broadcast_to(observed[reference], observed.shape).copy()
    seam = quicklook_seam(window, as_reference, FAST)
    assert seam["date"] == window.iso_dates()[cloudy] and seam["reference"] == window.iso_dates()[reference]
    assert seam["seam_ratio"] == pytest.approx(1.0)
    # the clouds left in place: a hard step at the boundary
    assert quicklook_seam(window, observed, FAST)["seam_ratio"] > 1.1


def test_the_fit_rows_carry_the_calibration_of_their_sigma(window: TileArrays) -> None:
    """With a hold-out the fit has a σ: its calibration on the painted pixels is in the rows and JSON."""
    crop = TileArrays(window.name, window.reflectance[..., 20:44, 20:44], window.mask[..., 20:44, 20:44],
                      window.s1[..., 20:44, 20:44], window.bands, window.times)  # fmt: skip
    held = SMOKE.replace(holdout_fraction=0.1, holdout_shapes="clouds")
    evaluation = evaluate(crop, held, paint_mode="partial", protocol="oracle", targets=2, inputs=("s1",),
                          device="cpu")  # fmt: skip
    fit = evaluation.row("fit", "s1")
    assert fit.calibration is not None
    region = paint(crop, held, k=2, mode="partial", protocol="oracle").region
    assert 0 < fit.calibration.pixels <= 2 * region.sum()  # the painted pixels of both targets, pooled
    assert fit.calibration.samples == fit.calibration.pixels * len(crop.bands)
    assert 0 <= fit.calibration.coverage <= 1 and -1 <= fit.calibration.spearman <= 1
    assert all(r.calibration is None for r in evaluation.rows if r.method != "fit")
    record = json.loads(json.dumps(evaluation.to_dict()))
    (row,) = [r for r in record["rows"] if (r["method"], r["variant"]) == ("fit", "s1")]
    assert row["calibration"]["coverage"] == fit.calibration.coverage
    (line,) = calibration_lines(evaluation)
    assert f"{fit.calibration.coverage:.1%}" in line and "fit (s1)" in line
    # no hold-out, no σ: nothing to calibrate
    plain = evaluate(crop, SMOKE, paint_mode="partial", protocol="oracle", targets=1, inputs=("s1",),
                     device="cpu")  # fmt: skip
    assert plain.row("fit", "s1").calibration is None and calibration_lines(plain) == []
