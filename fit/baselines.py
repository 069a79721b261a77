"""Gap-filling baselines a careful user would run instead of a fit, per pixel over time.

Each takes reflectance (time, band, y, x), a ``valid`` mask (time, y, x) of the observations it may use,
and the dates as days (time,), and returns the series with every invalid pixel filled (valid ones kept):

- ``linear``: temporal linear interpolation between the previous and the next valid observation of the
  pixel (the nearest one where only one side exists);
- ``mosaic``: the mean of the pixel's valid observations (SEN12MS-CR-TS' "mosaicing" baseline);
- ``nearest``: the pixel's valid observation nearest in time (ties: the earlier one).

A pixel with no valid observation at all gets the per-band median of every valid observation in the
series (the only information left). The same interpolation fills missing S1 dates before a fit.

A learned baseline, :func:`learned_linear` (``ridge`` in the tables), also takes the radar: per tile and
band, a ridge regression of the interpolation's residual on the S1 change (S1 at the date minus S1
interpolated with the same optical neighbours), the interpolated S1, the (leave-one-out) guide of every
band and the gaps in days to the neighbours, fitted on the tile's own valid pixels, each predicted
without its own date. A 3D network fitted per tile has to beat this linear model on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

#: S1 backscatter range (dB) scaled to [0, 1], the paper's normalisation (the fit's S1_DB_RANGE too).
S1_DB_RANGE: tuple[float, float] = (-25.0, 0.0)
#: Gap features 1 − exp(−gap / scale): the fit's guide-gap scale (fit.declouder.GAP_SCALE_DAYS).
RIDGE_GAP_SCALE_DAYS = 10.0
#: Ridge penalty per training sample on standardised features (a light one: tens of thousands of
#: samples for ~20 weights per band; it keeps the solve well posed when a feature is constant).
RIDGE_ALPHA = 1e-3
#: Below this many valid training samples the regression is not fitted: the guide is returned.
RIDGE_MIN_SAMPLES = 50


def _neighbours(valid: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per (date, pixel): index of the previous and the next valid date (-1 / n_dates where none).

    With ``exclude_self``, a date's own observation does not count (strictly before / after it).
    """
    n = valid.shape[0]
    index = np.arange(n).reshape(-1, *([1] * (valid.ndim - 1)))
    prev = np.maximum.accumulate(np.where(valid, index, -1), axis=0)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(valid, index, n), axis=0), axis=0), axis=0)
    if exclude_self:
        prev = np.concatenate([np.full_like(prev[:1], -1), prev[:-1]], axis=0)
        nxt = np.concatenate([nxt[1:], np.full_like(nxt[:1], n)], axis=0)
    return prev, nxt


def _take(values: np.ndarray, dates: np.ndarray) -> np.ndarray:
    """values[dates[t, y, x], :, y, x] for every (t, y, x): (time, band, y, x)."""
    n = values.shape[0]
    return np.take_along_axis(values, np.clip(dates, 0, n - 1)[:, None], axis=0)


def _fallback(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-band median of all valid observations, shaped to broadcast over (time, band, y, x)."""
    bands = values.shape[1]
    if not valid.any():
        return np.full((1, bands, 1, 1), np.nan, dtype=values.dtype)
    picked = np.moveaxis(values, 1, -1)[valid]  # (n_valid, band)
    return np.median(picked, axis=0).astype(values.dtype).reshape(1, bands, 1, 1)


def _finish(
    values: np.ndarray, keep: np.ndarray, filled: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """Keep the observations under ``keep``; NaN in ``filled`` (nothing to fill from) -> the fallback."""
    valid = keep if valid is None else valid
    missing = ~np.isfinite(filled)
    if missing.any():  # the median of every valid observation: seconds on a full tile, so only if needed
        filled = np.where(missing, _fallback(values, valid), filled)
    return np.where(keep[:, None], values, filled).astype(values.dtype)


def temporal_linear(
    values: np.ndarray, valid: np.ndarray, days: np.ndarray, *, leave_one_out: bool = False
) -> np.ndarray:
    """Linear in time between the pixel's neighbouring valid observations.

    ``leave_one_out``: every date, valid or not, is interpolated from the *other* dates only (so on clear
    pixels it is a genuine prediction, not a copy); the fit's guide uses this.
    """
    n = values.shape[0]
    prev, nxt = _neighbours(valid, exclude_self=leave_one_out)
    t = np.asarray(days, dtype=np.float64)
    filled = np.empty(values.shape, dtype=values.dtype)
    # Date by date: the float64 arithmetic of a whole tile at once needs several GB of temporaries and
    # took 5x as long (bench/fit.py --sections overhead); the values are the same to the bit.
    for date in range(n):
        before, after = prev[date], nxt[date]
        has_prev, has_next = before >= 0, after < n
        both = has_prev & has_next
        t_prev, t_next = t[np.clip(before, 0, n - 1)], t[np.clip(after, 0, n - 1)]
        span = np.where(both, t_next - t_prev, 1.0)
        weight = np.where(both, (t[date] - t_prev) / np.where(span == 0, 1.0, span), 0.0)[None]
        v_prev, v_next = _take(values, before[None])[0], _take(values, after[None])[0]
        # np.where, not arithmetic, picks the one-sided cases: the missing side may hold NaN.
        one_sided = np.where(has_prev[None], v_prev, v_next)
        line = np.where(both[None], (1.0 - weight) * v_prev + weight * v_next, one_sided)
        filled[date] = np.where((has_prev | has_next)[None], line, np.nan)  # nothing to interpolate from
    return _finish(values, np.zeros_like(valid) if leave_one_out else valid, filled, valid)


def mosaic_mean(values: np.ndarray, valid: np.ndarray, days: np.ndarray) -> np.ndarray:
    count = valid.sum(axis=0)
    total = np.where(valid[:, None], values, 0).sum(axis=0)
    mean = np.where(count[None] > 0, total / np.maximum(count, 1)[None], np.nan)
    return _finish(values, valid, np.broadcast_to(mean[None], values.shape))


def nearest_clear(values: np.ndarray, valid: np.ndarray, days: np.ndarray) -> np.ndarray:
    n = values.shape[0]
    prev, nxt = _neighbours(valid)
    t = np.asarray(days, dtype=np.float64).reshape(-1, 1, 1)
    gap_prev = np.where(prev >= 0, t - np.take(t.ravel(), np.clip(prev, 0, n - 1)), np.inf)
    gap_next = np.where(nxt < n, np.take(t.ravel(), np.clip(nxt, 0, n - 1)) - t, np.inf)
    pick = np.where(gap_prev <= gap_next, prev, nxt)
    reachable = np.isfinite(np.minimum(gap_prev, gap_next))[:, None]
    return _finish(values, valid, np.where(reachable, _take(values, pick), np.nan))


def observation_gaps(valid: np.ndarray, days: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
    """(time, 2, y, x): days back to the previous and on to the next valid observation (inf: none)."""
    n = valid.shape[0]
    prev, nxt = _neighbours(valid, exclude_self=leave_one_out)
    t = np.asarray(days, dtype=np.float64).reshape(-1, 1, 1)
    back = np.where(prev >= 0, t - np.take(t.ravel(), np.clip(prev, 0, n - 1)), np.inf)
    forward = np.where(nxt < n, np.take(t.ravel(), np.clip(nxt, 0, n - 1)) - t, np.inf)
    return np.stack([back, forward], axis=1)


def _filled_s1(s1_db: np.ndarray, days: np.ndarray) -> np.ndarray | None:
    """dB -> [0, 1] over :data:`S1_DB_RANGE`, missing dates filled in time; None without any radar."""
    if s1_db is None or not np.isfinite(s1_db).any():
        return None
    low, high = S1_DB_RANGE
    scaled = (np.clip(s1_db, low, high) - low) / (high - low)
    valid = np.isfinite(scaled).all(axis=1)
    if valid.all():
        return scaled.astype(np.float64)
    return temporal_linear(np.where(valid[:, None], scaled, 0.0), valid, days).astype(np.float64)


def ridge_features(
    values: np.ndarray, valid: np.ndarray, days: np.ndarray, s1: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(guide (time, band, y, x), features (time, y, x, feature), feature names) of :func:`learned_linear`.

    Everything is leave-one-out: a date's guide, gaps and interpolated S1 come from the *other* dates'
    valid observations, so on a valid pixel they are what they would be were that pixel hidden.
    """
    guide = temporal_linear(values, valid, days, leave_one_out=True).astype(np.float64)
    gaps = 1.0 - np.exp(-observation_gaps(valid, days, leave_one_out=True) / RIDGE_GAP_SCALE_DAYS)
    columns = [gaps[:, 0], gaps[:, 1]]
    names = ["gap back", "gap forward"]
    radar = _filled_s1(s1, days) if s1 is not None else None
    if radar is not None:
        interpolated = temporal_linear(radar, valid, days, leave_one_out=True)
        change = radar - interpolated
        for c, pol in enumerate(("vv", "vh")[: radar.shape[1]]):
            columns += [change[:, c], interpolated[:, c]]
            names += [f"s1 change {pol}", f"s1 interpolated {pol}"]
    columns += [guide[:, b] for b in range(values.shape[1])]
    names += [f"guide {b}" for b in range(values.shape[1])]
    return guide, np.stack(columns, axis=-1), names


def learned_linear(
    values: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    s1: np.ndarray | None = None,
    *,
    alpha: float = RIDGE_ALPHA,
) -> np.ndarray:
    """Leave-one-out interpolation plus a per-band ridge correction learned on the tile's valid pixels.

    ``s1``: backscatter in dB (time, 2, y, x), NaN where missing; None or all NaN: the regression uses
    the guide and the gaps only. The target is the residual (observation − leave-one-out guide) on the
    ``valid`` pixels; invalid pixels are predicted as guide + correction, valid ones kept. Never sees an
    invalid pixel's value: its guide and features come from the other dates' valid observations only.
    """
    guide, features, _ = ridge_features(values, valid, days, s1)
    n_features = features.shape[-1]
    flat = features.reshape(-1, n_features)
    finite = np.isfinite(flat).all(axis=1) & np.isfinite(guide).all(axis=1).reshape(-1)
    train = np.asarray(valid, bool).reshape(-1) & finite
    train &= np.isfinite(values).all(axis=1).reshape(-1)
    if train.sum() < RIDGE_MIN_SAMPLES:
        return _finish(values, valid, guide)
    x_train = flat[train]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    design = np.concatenate([(x_train - mean) / std, np.ones((x_train.shape[0], 1))], axis=1)
    residual = (values - guide).transpose(0, 2, 3, 1).reshape(-1, values.shape[1])[train]
    penalty = alpha * design.shape[0] * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    weights = np.linalg.solve(design.T @ design + penalty, design.T @ residual)  # (feature + 1, band)
    everywhere = np.concatenate([(np.where(finite[:, None], flat, mean) - mean) / std,
                                 np.ones((flat.shape[0], 1))], axis=1)  # fmt: skip
    correction = (everywhere @ weights).reshape(*features.shape[:3], values.shape[1]).transpose(0, 3, 1, 2)
    predicted = np.clip(guide + np.where(finite.reshape(features.shape[:3])[:, None], correction, 0.0), 0, 1)
    return _finish(values, valid, predicted)


Baseline = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: The baselines by the name the evaluation tables use.
BASELINES: dict[str, Baseline] = {
    "linear": temporal_linear,
    "mosaic": mosaic_mean,
    "nearest": nearest_clear,
}


#: Every baseline the evaluation runs, in table order: the three above and the learned one.
BASELINE_NAMES: tuple[str, ...] = (*BASELINES, "ridge")


def baselines_for(s1: np.ndarray | None) -> dict[str, Baseline]:
    """The baselines of one tile: :data:`BASELINES` and ``ridge`` with the tile's radar (dB; None: none)."""
    return {**BASELINES, "ridge": partial(learned_linear, s1=s1)}


def days_of(times: np.ndarray) -> np.ndarray:
    """datetime64 dates -> float days since the first one (what the baselines interpolate over)."""
    t = np.asarray(times, dtype="datetime64[ns]")
    return ((t - t[0]) / np.timedelta64(1, "D")).astype(np.float64)
