"""Gap-filling baselines a careful user would run instead of a fit, per pixel over time.

Each takes reflectance (time, band, y, x), a ``valid`` mask (time, y, x) of the observations it may use,
and the dates as days (time,), and returns the series with every invalid pixel filled (valid ones kept):

- ``linear``: temporal linear interpolation between the previous and the next valid observation of the
  pixel (the nearest one where only one side exists);
- ``mosaic``: the mean of the pixel's valid observations (SEN12MS-CR-TS' "mosaicing" baseline);
- ``nearest``: the pixel's valid observation nearest in time (ties: the earlier one).

A pixel with no valid observation at all gets the per-band median of every valid observation in the
series (the only information left). The same interpolation fills missing S1 dates before a fit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
    filled = np.where(np.isfinite(filled), filled, _fallback(values, valid))
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
    t = np.asarray(days, dtype=np.float64).reshape(-1, 1, 1)
    has_prev, has_next = prev >= 0, nxt < n
    t_prev = np.take(t.ravel(), np.clip(prev, 0, n - 1))
    t_next = np.take(t.ravel(), np.clip(nxt, 0, n - 1))
    both = has_prev & has_next
    span = np.where(both, t_next - t_prev, 1.0)
    weight = np.where(both, (t - t_prev) / np.where(span == 0, 1.0, span), 0.0)[:, None]
    v_prev, v_next = _take(values, prev), _take(values, nxt)
    # np.where, not arithmetic, picks the one-sided cases: the missing side may hold NaN.
    one_sided = np.where(has_prev[:, None], v_prev, v_next)
    filled = np.where(both[:, None], (1.0 - weight) * v_prev + weight * v_next, one_sided)
    filled = np.where((has_prev | has_next)[:, None], filled, np.nan)  # nothing to interpolate from
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


Baseline = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: The baselines by the name the evaluation tables use.
BASELINES: dict[str, Baseline] = {
    "linear": temporal_linear,
    "mosaic": mosaic_mean,
    "nearest": nearest_clear,
}


def days_of(times: np.ndarray) -> np.ndarray:
    """datetime64 dates -> float days since the first one (what the baselines interpolate over)."""
    t = np.asarray(times, dtype="datetime64[ns]")
    return ((t - t[0]) / np.timedelta64(1, "D")).astype(np.float64)
