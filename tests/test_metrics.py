"""Metrics against values computed by hand on small arrays (REFERENCE.md "Metrics")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fit.metrics import Scores, mae, psnr, rmse, sam, score, ssim, ssim_map


def test_rmse_psnr_mae_by_hand() -> None:
    target = np.zeros((2, 2, 2))
    pred = np.zeros((2, 2, 2))
    pred[0, 0, 0] = 0.4  # one error of 0.4 among 8 values
    pred[1, 1, 1] = -0.2  # and one of 0.2
    # mean of squares = (0.16 + 0.04) / 8 = 0.025
    assert rmse(target, pred) == pytest.approx(math.sqrt(0.025))
    assert psnr(target, pred) == pytest.approx(20 * math.log10(1 / math.sqrt(0.025)))
    assert mae(target, pred) == pytest.approx(0.6 / 8)


def test_region_restricts_to_its_pixels() -> None:
    target = np.zeros((1, 2, 2))
    pred = np.array([[[0.5, 0.0], [0.0, 0.0]]])
    region = np.array([[True, True], [False, False]])
    assert rmse(target, pred, region) == pytest.approx(math.sqrt(0.25 / 2))
    assert mae(target, pred, ~region) == 0.0
    assert psnr(target, pred, ~region) == math.inf


def test_sam_in_degrees_and_zero_guard() -> None:
    # pixel 0: (1, 0) vs (0, 1) -> 90°; pixel 1: (1, 1) vs (2, 2) -> 0°; pixel 2: all zero -> left out
    target = np.array([[[1.0, 1.0, 0.0]], [[0.0, 1.0, 0.0]]])
    pred = np.array([[[0.0, 2.0, 0.3]], [[1.0, 2.0, 0.1]]])
    assert sam(target, pred) == pytest.approx(45.0)
    # (1, 0) vs (1, 1): 45°
    assert sam(np.array([[[1.0]], [[0.0]]]), np.array([[[1.0]], [[1.0]]])) == pytest.approx(45.0)
    assert math.isnan(sam(np.zeros((2, 1, 1)), np.ones((2, 1, 1))))


def test_ssim_constant_images_by_hand() -> None:
    a, b = 0.2, 0.5
    target = np.full((1, 40, 40), a)
    pred = np.full((1, 40, 40), b)
    interior = np.zeros((40, 40), bool)
    interior[5:-5, 5:-5] = True  # the 11×11 window lies inside the image: no zero padding in play
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)  # variances and covariance are 0
    assert ssim(target, pred, interior) == pytest.approx(expected, rel=1e-9)
    assert ssim(target, target) == pytest.approx(1.0)


def test_ssim_is_averaged_over_bands_and_lower_for_noise() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, (3, 32, 32))
    noisy = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    per_band = [ssim(target[i : i + 1], noisy[i : i + 1]) for i in range(3)]
    assert ssim(target, noisy) == pytest.approx(np.mean(per_band))
    assert ssim(target, noisy) < 0.99
    assert ssim_map(target, noisy).shape == target.shape


def test_score_and_mean() -> None:
    target = np.full((2, 16, 16), 0.3)
    s1 = score(target, target + 0.1)
    s2 = score(target, target + 0.3)
    assert s1.rmse == pytest.approx(0.1) and s2.rmse == pytest.approx(0.3)
    mean = Scores.mean([s1, s2])
    assert mean.rmse == pytest.approx(0.2)
    assert mean.psnr == pytest.approx((s1.psnr + s2.psnr) / 2)  # per-image average, as the paper


def test_seam_ratio_by_hand() -> None:
    from fit.metrics import boundary_pairs, seam_ratio

    # 1 band, 2x3 image: the left column kept, the rest filled -> 2 horizontal boundary pairs
    kept = np.array([[True, False, False], [True, False, False]])
    truth = np.array([[[0.1, 0.2, 0.3], [0.1, 0.3, 0.3]]])  # steps 0.1 and 0.2 across the boundary
    a, b = boundary_pairs(kept)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (3, 4)]
    seamless = truth.copy()
    assert seam_ratio(seamless, truth, kept) == pytest.approx(1.0)
    seamy = truth.copy()
    seamy[0, :, 1:] += 0.3  # the filled part is offset: steps 0.4 and 0.5 where the truth has 0.1, 0.2
    assert seam_ratio(seamy, truth, kept) == pytest.approx(0.9 / 0.3)
    # only pairs whose pixels are both valid count: the bottom row's pair is left out
    valid = np.array([[True, True, True], [False, True, True]])
    assert seam_ratio(seamy, truth, kept, valid=valid) == pytest.approx(0.4 / 0.1)
    # no boundary (nothing kept, or everything kept): NaN
    assert math.isnan(seam_ratio(seamy, truth, np.zeros_like(kept)))
    assert math.isnan(seam_ratio(seamy, truth, np.ones_like(kept)))


def test_seam_ratio_vertical_pairs_and_flat_truth() -> None:
    from fit.metrics import seam_ratio

    kept = np.array([[True, True], [False, False]])  # top row kept: 2 vertical pairs
    truth = np.full((2, 2, 2), 0.5)
    output = truth.copy()
    output[:, 1] += 0.1
    assert math.isnan(seam_ratio(output, truth, kept))  # the truth is flat across the boundary
    truth[:, 1] += 0.05
    assert seam_ratio(output, truth, kept) == pytest.approx(2.0)
