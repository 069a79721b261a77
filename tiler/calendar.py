"""A regular calendar from a cell's declouded series: a value at every step for every pixel with data.

The per-acquisition mosaic (:mod:`tiler.mosaic`) has a value on the days a pixel's tiles were acquired;
neighbouring tiles on different orbits have values on different days. The calendar resamples each
cell's blended series onto fixed steps over the mosaic's period, so every pixel of a zone shares the
same time axis.

Steps (:func:`calendar_steps`): pandas ``date_range`` over the period with the ``cadence`` offset
("10D", "5D", "1MS", "SMS", "W", ...), the first step rolled back onto the offset at or before the
period's first day (``1MS`` over 2019-03-22 .. 2019-07-26 starts on 2019-03-01), so the bins cover the
whole period. Step *s* is the bin [start_s, start_{s+1}) of whole UTC days; its ``time`` label is the
bin's **start** (pandas' convention) and its value estimates the reflectance at the bin's **centre**.

Value of a pixel at a step (:func:`resample_calendar`), from its dates with data (reflectance not 0 in
every band):

1. **mean** (source 1): the dates inside the bin, each weighted by a triangle over the bin (1 at the
   centre, 0 at the edges, taken at the date's noon: ``1 − |d + ½ − c| / h`` with centre ``c`` and
   half-width ``h`` in days) times its quality ``q``: ``q = 1 / (1 + (σ/σ0)²)`` where the fit's
   predicted σ is known (σ = 0: observed as is, q = 1), else 1 for a date observed clear and
   :data:`FILLED_QUALITY` for a filled one. σ0 = :data:`SIGMA0`.
2. **interpolated** (source 2): no date in the bin: linear in time between the nearest dates before
   and after the bin, evaluated at the bin's centre.
3. **held** (source 3): dates on one side only (before the first or after the last date of the pixel):
   the nearest date's value.
0 (source 0) = no data: the pixel has no date with data in the whole series.

σ goes through the same weights: Σ ŵ_k σ_k with the normalised weights (mean), (1 − α) σ_b + α σ_a
(interpolation), σ of the held date (hold). Treating the dates' errors as fully correlated makes it an
upper bound of the σ of a weighted mean. A step is "unknown" (:data:`SIGMA_UNKNOWN`) where a date with
weight has unknown σ.

Quality per step: ``clear_distance_days`` = days from the bin to the nearest date the pixel was observed
clear (0: a clear observation inside the bin; otherwise days before the bin's first or after its last
day), with the mosaic's flags (65534 never observed clear, 65535 no data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiler.errors import MosaicError
from tiler.quality import QUALITY_MAX_DAYS, QUALITY_NEVER_CLEAR, QUALITY_NODATA
from tiler.store import SIGMA_NODATA

#: Where a step's value comes from (the ``calendar_source`` layer): no data, weighted mean of the dates
#: in the bin, interpolation between the nearest dates around it, the nearest date's value held.
SOURCE_NODATA = 0
SOURCE_MEAN = 1
SOURCE_INTERPOLATED = 2
SOURCE_HELD = 3
SOURCE_MEANINGS = "no_data mean_of_dates_in_bin interpolated_between_dates held_nearest_date"
#: σ value meaning "unknown" (and no data): the tile schema's SIGMA_NODATA (tiler.store).
SIGMA_UNKNOWN = SIGMA_NODATA
#: Largest σ stored as a value (reflectance × 10000); larger predictions are clipped to it.
SIGMA_MAX = SIGMA_UNKNOWN - 1
#: σ at which a filled date counts half as much as an observed one: 0.02 reflectance (200 × 10000),
#: about the error of a good fill on vegetated land (docs/fit.md's RMSE of the fast preset is 0.01-0.03).
SIGMA0 = 200.0
#: Quality of a date filled by the fit when its σ is unknown: that of a fill with σ = σ0.
FILLED_QUALITY = 0.5
#: Accepted cadences: an optional positive multiple of days, weeks (Sunday-anchored), month starts or
#: semi-month starts (1st and 15th), as pandas offset aliases.
CADENCE_FORMS = ("<n>D (e.g. 5D, 10D)", "<n>W", "SMS", "<n>MS (e.g. 1MS)")
_CADENCE = re.compile(r"^([1-9][0-9]*)?(D|W|SMS|MS)$")
#: Most steps a calendar may have (a daily calendar over 20 years, the longest mosaic time axis).
MAX_STEPS = 20 * 366


class CalendarError(MosaicError):
    """A calendar cannot be built as asked (its cadence, or its period)."""


def check_cadence(cadence: str, *, option: str = "cadence") -> str:
    """Return ``cadence`` if it is an accepted form, else raise :class:`CalendarError` naming ``option``."""
    if not isinstance(cadence, str) or not _CADENCE.match(cadence.strip()):
        raise CalendarError(
            f"option {option} = {cadence!r} is not a cadence; accepted forms: {', '.join(CADENCE_FORMS)} "
            "(pandas offset aliases: days, Sunday-anchored weeks, semi-month starts, month starts)"
        )
    return cadence.strip()


def _offset(cadence: str) -> Any:
    from pandas.tseries.frequencies import to_offset

    return to_offset(check_cadence(cadence))


@dataclass(frozen=True)
class CalendarSteps:
    """The bins of a calendar: ``starts[s]`` .. ``ends[s]`` (exclusive) as integer UTC day numbers."""

    cadence: str
    starts: np.ndarray
    ends: np.ndarray

    def __post_init__(self) -> None:
        if self.starts.shape != self.ends.shape or not bool(np.all(self.ends > self.starts)):
            raise CalendarError(f"calendar {self.cadence}: every bin must end after it starts")

    @property
    def times(self) -> np.ndarray:
        """The steps' labels (bin starts) as ``datetime64[ns]``, the calendar store's ``time``."""
        return self.starts.astype("datetime64[D]").astype("datetime64[ns]")

    @property
    def bounds(self) -> np.ndarray:
        """(steps, 2) bin start and exclusive end as ``datetime64[ns]`` (CF ``time_bnds``)."""
        return np.stack([self.starts, self.ends], axis=1).astype("datetime64[D]").astype("datetime64[ns]")


def calendar_steps(start: Any, end: Any, cadence: str) -> CalendarSteps:
    """The bins of ``cadence`` over ``start`` .. ``end`` (inclusive days); see the module docstring."""
    import pandas as pd

    offset = _offset(cadence)
    first, last = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    if first.tzinfo is not None:
        first, last = first.tz_convert(None), last.tz_convert(None)
    if last < first:
        raise CalendarError(f"calendar period {first.date()} .. {last.date()}: the end is before the start")
    anchor = offset.rollback(first)
    starts = pd.date_range(anchor, last, freq=offset)
    if len(starts) > MAX_STEPS:
        raise CalendarError(
            f"option cadence = {cadence!r} gives {len(starts)} steps over {first.date()} .. {last.date()}, "
            f"more than {MAX_STEPS}; choose a longer cadence"
        )
    ends = pd.date_range(starts[-1], periods=2, freq=offset)[1:]
    edges = np.concatenate([starts.values, ends.values]).astype("datetime64[D]").astype(np.int64)
    return CalendarSteps(cadence=check_cadence(cadence), starts=edges[:-1], ends=edges[1:])


@dataclass(frozen=True)
class CalendarCell:
    """One cell's calendar: values and σ (steps, band, y, x), source and clear distance (steps, y, x)."""

    values: np.ndarray
    sigma: np.ndarray | None
    source: np.ndarray
    clear_distance: np.ndarray


def date_quality(clear: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
    """Quality weights q of dates: (T, B, y, x) with σ, else (T, 1, y, x); see the module docstring."""
    by_mask = np.where(clear, np.float32(1.0), np.float32(FILLED_QUALITY))[:, None]
    if sigma is None:
        return by_mask
    s = sigma.astype(np.float32) / np.float32(SIGMA0)
    return np.where(sigma == SIGMA_UNKNOWN, by_mask, 1.0 / (1.0 + s * s)).astype(np.float32)


def resample_calendar(
    series: np.ndarray,
    days: np.ndarray,
    steps: CalendarSteps,
    *,
    clear: np.ndarray,
    sigma: np.ndarray | None = None,
) -> CalendarCell:
    """Resample one cell's series onto the calendar's steps (module docstring for the rules).

    ``series``: (T, B, y, x) uint16 reflectance × 10000, 0 = no data; ``days``: the T dates as integer
    UTC day numbers, strictly increasing; ``clear``: (T, y, x) observed clear; ``sigma``: (T, B, y, x)
    uint16 σ × 10000 with :data:`SIGMA_UNKNOWN` = unknown, or None when the fit gave none.
    """
    n_time, n_band, height, width = series.shape
    day_numbers = np.asarray(days, dtype=np.int64)
    if day_numbers.shape != (n_time,) or (n_time > 1 and not bool(np.all(np.diff(day_numbers) > 0))):
        raise ValueError(f"days must be {n_time} strictly increasing day numbers")
    n_steps = steps.starts.size
    values = np.zeros((n_steps, n_band, height, width), dtype=np.uint16)
    out_sigma = (
        np.full((n_steps, n_band, height, width), SIGMA_UNKNOWN, dtype=np.uint16)
        if sigma is not None
        else None
    )
    source = np.zeros((n_steps, height, width), dtype=np.uint8)
    distance = np.full((n_steps, height, width), QUALITY_NODATA, dtype=np.uint16)
    if n_time == 0:
        return CalendarCell(values, out_sigma, source, distance)
    valid = (series != 0).all(axis=1)  # (T, y, x)
    ever = valid.any(axis=0)
    observed = np.asarray(clear, dtype=bool) & valid
    never_clear = ~observed.any(axis=0)
    index = np.arange(n_time, dtype=np.int32)[:, None, None]
    # Per pixel: the last date with data at or before each date, and the first at or after it; the same
    # for clear observations.
    last_valid = np.maximum.accumulate(np.where(valid, index, -1), axis=0)
    next_valid = np.minimum.accumulate(np.where(valid, index, n_time)[::-1], axis=0)[::-1]
    last_clear = np.maximum.accumulate(np.where(observed, index, -1), axis=0)
    next_clear = np.minimum.accumulate(np.where(observed, index, n_time)[::-1], axis=0)[::-1]
    far = np.int64(2**40)

    for s in range(n_steps):
        a, b = int(steps.starts[s]), int(steps.ends[s])
        centre, half = (a + b) / 2.0, (b - a) / 2.0
        k0, k1 = (int(k) for k in np.searchsorted(day_numbers, [a, b], side="left"))
        step = np.zeros((n_band, height, width), dtype=np.float32)
        step_sigma = np.zeros_like(step) if sigma is not None else None
        unknown = np.zeros(step.shape, dtype=bool) if sigma is not None else None
        mean = np.zeros((height, width), dtype=bool)
        product = np.empty_like(step) if k1 > k0 else None  # one buffer for w × value, no temporaries
        if k1 > k0:
            # 1. Weighted mean of the dates in the bin: time triangle × quality, renormalised.
            weight: np.ndarray | None = None
            for k in range(k0, k1):
                w_time = np.float32(1.0 - abs(day_numbers[k] + 0.5 - centre) / half)
                w = date_quality(observed[k : k + 1], None if sigma is None else sigma[k : k + 1])[0]
                w = w * (valid[k] * w_time)  # (1 or B, y, x)
                assert product is not None
                np.multiply(series[k], w, out=product)
                step += product
                weight = w if weight is None else weight + w
                if sigma is not None and step_sigma is not None and unknown is not None:
                    unknown_k = sigma[k] == SIGMA_UNKNOWN
                    step_sigma += w * np.where(unknown_k, np.uint16(0), sigma[k])
                    unknown |= unknown_k & (w > 0)
            assert weight is not None
            has = weight > 0
            np.divide(step, weight, out=step, where=has)
            if step_sigma is not None:
                np.divide(step_sigma, weight, out=step_sigma, where=has)
            mean = has[0]
        # 2-3. Pixels with data but no date in the bin: interpolate, or hold the nearest date.
        yy, xx = np.nonzero(ever & ~mean)
        if yy.size:
            before = last_valid[k0 - 1, yy, xx] if k0 > 0 else np.full(yy.size, -1, dtype=np.int32)
            after = next_valid[k1, yy, xx] if k1 < n_time else np.full(yy.size, n_time, dtype=np.int32)
            has_before, has_after = before >= 0, after < n_time
            both = has_before & has_after
            b_idx, a_idx = np.clip(before, 0, n_time - 1), np.clip(after, 0, n_time - 1)
            t_before, t_after = day_numbers[b_idx] + 0.5, day_numbers[a_idx] + 0.5
            alpha = np.where(both, (centre - t_before) / np.maximum(t_after - t_before, 1.0), 0.0)
            alpha = np.where(both, alpha, np.where(has_before, 0.0, 1.0)).astype(np.float32)[:, None]
            v_before = series[b_idx, :, yy, xx].astype(np.float32)  # (n, B)
            v_after = series[a_idx, :, yy, xx].astype(np.float32)
            step[:, yy, xx] = ((1 - alpha) * v_before + alpha * v_after).T
            source[s, yy, xx] = np.where(both, SOURCE_INTERPOLATED, SOURCE_HELD)
            if sigma is not None and step_sigma is not None and unknown is not None:
                s_before, s_after = sigma[b_idx, :, yy, xx], sigma[a_idx, :, yy, xx]
                step_sigma[:, yy, xx] = ((1 - alpha) * s_before + alpha * s_after).T
                # Unknown where a date with weight has unknown σ (a held value: the held date).
                unknown[:, yy, xx] = (
                    ((s_before == SIGMA_UNKNOWN) & (alpha < 1)) | ((s_after == SIGMA_UNKNOWN) & (alpha > 0))
                ).T
        source[s][mean] = SOURCE_MEAN
        # Values of pixels with data are means or blends of values ≥ 1: never 0 after rounding.
        np.rint(step, out=step)
        values[s] = step
        if out_sigma is not None and step_sigma is not None and unknown is not None:
            np.minimum(np.rint(step_sigma, out=step_sigma), SIGMA_MAX, out=step_sigma)
            out_sigma[s] = np.where(unknown | ~ever, SIGMA_UNKNOWN, step_sigma)
        # Days from the bin to the nearest clear observation (0: one inside the bin).
        clear_in = (last_clear[k1 - 1] >= k0) if k1 > k0 else np.zeros((height, width), dtype=bool)
        c_before = last_clear[k0 - 1] if k0 > 0 else np.full((height, width), -1, dtype=np.int32)
        c_after = next_clear[k1] if k1 < n_time else np.full((height, width), n_time, dtype=np.int32)
        d_before = np.where(c_before >= 0, a - day_numbers[np.clip(c_before, 0, n_time - 1)], far)
        d_after = np.where(c_after < n_time, day_numbers[np.clip(c_after, 0, n_time - 1)] - (b - 1), far)
        nearest = np.where(clear_in, 0, np.minimum(d_before, d_after))
        step_distance = np.minimum(nearest, QUALITY_MAX_DAYS).astype(np.uint16)
        step_distance[never_clear] = QUALITY_NEVER_CLEAR
        step_distance[~ever] = QUALITY_NODATA
        distance[s] = step_distance
    return CalendarCell(values, out_sigma, source, distance)
