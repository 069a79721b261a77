"""Image quality metrics, exactly as REFERENCE.md "Metrics" defines them (images in [0, 1]).

Every function takes a target and a prediction of shape (band, y, x) and an optional ``region`` (y, x)
boolean mask; with a region, only its pixels count (for SSIM: the SSIM map is computed on the whole image,
then averaged over the region's pixels).

- RMSE = sqrt(mean((t − p)²)) over bands and pixels; PSNR = 20·log10(1 / RMSE); MAE = mean |t − p|.
- SAM: mean over pixels of arccos(clamp(Σ_c t·p / (‖t‖·‖p‖), −1, 1)) in degrees (UnCRtainTS). A pixel
  that is all zero in the target or the prediction has no direction: it is left out of the mean (it
  would give NaN); with no pixel left SAM is NaN.
- SSIM: Gaussian window 11, σ 1.5, C1 = 0.01², C2 = 0.03², per band, averaged; the window is applied with
  zero padding ("same" size), as in the pytorch SSIM that SEN12MS-CR-TS and UnCRtainTS use.

:func:`seam_ratio` is this project's seam measure (no reference defines one): how sharp the step
between kept observations and filled pixels is in the output, relative to the real image's own step
between the same pixels. 1 = seamless (the output is as smooth across the boundary as the truth).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
#: Below this norm a pixel's spectrum counts as all zero for SAM.
SAM_ZERO = 1e-12


def _pixels(a: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """(band, y, x) -> (band, n) of the pixels in the region."""
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1) if region is None else a[:, np.asarray(region, bool)]


def rmse(target: np.ndarray, pred: np.ndarray, region: np.ndarray | None = None) -> float:
    diff = _pixels(target, region) - _pixels(pred, region)
    return float(np.sqrt(np.mean(diff**2))) if diff.size else float("nan")


def psnr(target: np.ndarray, pred: np.ndarray, region: np.ndarray | None = None) -> float:
    error = rmse(target, pred, region)
    if error == 0:
        return float("inf")
    return float(20 * np.log10(1.0 / error))


def mae(target: np.ndarray, pred: np.ndarray, region: np.ndarray | None = None) -> float:
    diff = _pixels(target, region) - _pixels(pred, region)
    return float(np.mean(np.abs(diff))) if diff.size else float("nan")


def sam(target: np.ndarray, pred: np.ndarray, region: np.ndarray | None = None) -> float:
    t, p = _pixels(target, region), _pixels(pred, region)
    norms = np.linalg.norm(t, axis=0) * np.linalg.norm(p, axis=0)
    ok = (np.linalg.norm(t, axis=0) > SAM_ZERO) & (np.linalg.norm(p, axis=0) > SAM_ZERO)
    if not ok.any():
        return float("nan")
    cosine = np.clip((t * p).sum(axis=0)[ok] / norms[ok], -1.0, 1.0)
    return float(np.degrees(np.arccos(cosine)).mean())


def _gaussian_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    g = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _blur(a: np.ndarray) -> np.ndarray:
    g = _gaussian_window()
    out = ndimage.correlate1d(a, g, axis=-1, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, g, axis=-2, mode="constant", cval=0.0)


def ssim_map(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per band and pixel SSIM, (band, y, x)."""
    x, y = np.asarray(target, np.float64), np.asarray(pred, np.float64)
    mu_x, mu_y = _blur(x), _blur(y)
    var_x = _blur(x * x) - mu_x**2
    var_y = _blur(y * y) - mu_y**2
    cov = _blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )


def ssim(target: np.ndarray, pred: np.ndarray, region: np.ndarray | None = None) -> float:
    values = ssim_map(target, pred)
    values = values.reshape(values.shape[0], -1) if region is None else values[:, np.asarray(region, bool)]
    return float(values.mean()) if values.size else float("nan")


def boundary_pairs(kept: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (a, b) of the 4-neighbour pixel pairs with one pixel in ``kept`` and the other not.

    ``valid`` (y, x): only pairs whose two pixels are both valid count (e.g. where the truth is known).
    """
    kept = np.asarray(kept, bool)
    ok = np.ones_like(kept) if valid is None else np.asarray(valid, bool)
    index = np.arange(kept.size).reshape(kept.shape)
    firsts, seconds = [], []
    for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
        pair = (kept[a] != kept[b]) & ok[a] & ok[b]
        firsts.append(index[a][pair])
        seconds.append(index[b][pair])
    return np.concatenate(firsts), np.concatenate(seconds)


def seam_ratio(
    output: np.ndarray, truth: np.ndarray, kept: np.ndarray, *, valid: np.ndarray | None = None
) -> float:
    """Mean |gradient| of ``output`` across the kept/filled boundary over the truth's at the same pairs.

    ``output``, ``truth``: (band, y, x); ``kept`` (y, x): the pixels kept as observed (the rest were
    filled). Over every 4-neighbour pair with one kept and one filled pixel (both ``valid`` where given)
    and every band: mean |output[a] − output[b]| / mean |truth[a] − truth[b]|. 1 = seamless; above 1 the
    output steps at the boundary where the real image does not; NaN without a boundary pair (nothing
    kept, or nothing filled) or where the truth is perfectly flat across it.
    """
    a, b = boundary_pairs(kept, valid)
    if not a.size:
        return float("nan")
    out = np.asarray(output, np.float64).reshape(np.shape(output)[0], -1)
    ref = np.asarray(truth, np.float64).reshape(np.shape(truth)[0], -1)
    reference = float(np.abs(ref[:, a] - ref[:, b]).mean())
    if not reference > 0:
        return float("nan")
    return float(np.abs(out[:, a] - out[:, b]).mean()) / reference


@dataclass(frozen=True)
class Scores:
    """The five metrics of one comparison."""

    rmse: float
    psnr: float
    ssim: float
    sam: float
    mae: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def mean(cls, scores: list[Scores]) -> Scores:
        """Average per image (the paper's NRMSE is the per-image RMSE averaged): nan-aware."""
        values = {k: float(np.nanmean([getattr(s, k) for s in scores])) for k in cls.__dataclass_fields__}
        return cls(**values)


def score(target: np.ndarray, pred: np.ndarray, region: np.ndarray | None = None) -> Scores:
    return Scores(
        rmse=rmse(target, pred, region),
        psnr=psnr(target, pred, region),
        ssim=ssim(target, pred, region),
        sam=sam(target, pred, region),
        mae=mae(target, pred, region),
    )


#: ±1σ of a Gaussian: the coverage a calibrated σ gives.
ONE_SIGMA = 0.6827
#: Share of the scored pixels dropped as the most uncertain in :func:`calibration`'s ``rmse_drop``.
DROP_FRACTION = 0.10


@dataclass(frozen=True)
class Calibration:
    """How well a predicted σ matches the true errors (see :func:`calibration`)."""

    coverage: float
    spearman: float
    rmse_drop: float
    samples: int
    pixels: int
    #: ``rmse_drop`` had the pixels been ranked by their true error (RMS over bands): the most any σ
    #: can reach on these pixels.
    rmse_drop_ceiling: float = float("nan")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def calibration(errors: np.ndarray, sigma: np.ndarray) -> Calibration:
    """Calibration of ``sigma`` against the true ``errors`` (prediction − truth), both (band, n pixels).

    - ``coverage``: the fraction of (pixel, band) samples with |error| ≤ σ (0.6827 is calibrated).
    - ``spearman``: Spearman's rank correlation between σ and |error| over the (pixel, band) samples
      (ties take average ranks; NaN when either is constant).
    - ``rmse_drop``: 1 − RMSE(kept) / RMSE(all), where the pixels are ranked by their σ summary over
      bands, sqrt(mean_band σ²), and the ceil(:data:`DROP_FRACTION` · n) most uncertain are dropped
      (ties: the later pixel first); RMSE over every band of the pixels. 0.15 = RMSE 15 % lower.
    - ``rmse_drop_ceiling``: the same, ranking the pixels by their true error instead of σ.
    """
    from scipy import stats

    e = np.abs(np.asarray(errors, np.float64))
    s = np.asarray(sigma, np.float64)
    if e.shape != s.shape or e.ndim != 2:
        raise ValueError(f"errors {e.shape} and sigma {s.shape} must both be (band, n pixels)")
    n = e.shape[1]
    if n == 0:
        return Calibration(float("nan"), float("nan"), float("nan"), 0, 0)
    coverage = float(np.mean(e <= s))
    flat_e, flat_s = e.ravel(), s.ravel()
    if np.ptp(flat_e) > 0 and np.ptp(flat_s) > 0:
        spearman = float(stats.spearmanr(flat_s, flat_e).statistic)
    else:
        spearman = float("nan")
    total = float(np.sqrt(np.mean(e**2)))

    def drop(ranking: np.ndarray) -> float:
        order = np.argsort(ranking, kind="stable")  # ascending: the most uncertain (and later ties) last
        kept = order[: n - math.ceil(DROP_FRACTION * n)]
        rest = float(np.sqrt(np.mean(e[:, kept] ** 2))) if kept.size else float("nan")
        return 1.0 - rest / total if total > 0 else float("nan")

    ceiling = drop(np.sqrt(np.mean(e**2, axis=0)))
    return Calibration(coverage, spearman, drop(np.sqrt(np.mean(s**2, axis=0))), int(e.size), n, ceiling)


def region_samples(
    target: np.ndarray, pred: np.ndarray, sigma: np.ndarray, region: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(errors, σ) as (band, n) of the ``region``'s pixels of (band, y, x) images, for :func:`calibration`."""
    return _pixels(pred, region) - _pixels(target, region), _pixels(sigma, region)
