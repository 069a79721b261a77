"""Per-pixel quality of a declouded series, and the seam metric of a mosaic.

:func:`clear_distance_days` is the quality layer the mosaicker writes beside the imagery: for each pixel
and date, how many days separate that date from the nearest date on which the pixel was observed clear.
0 means the pixel was seen clear on that very date (the value is observed, not reconstructed); larger
values say how far the reconstruction had to reach.

:func:`seam_step` measures what a viewer sees at a tile seam: the largest jump, between neighbouring
pixel columns (or rows), of the mean difference between a mosaic and a reference image. A hard cut
between two tiles that disagree by ``d`` shows a step of ``d``; a blend spread over ``n`` pixels shows
at most a fraction of it.
"""

from __future__ import annotations

import numpy as np

#: Quality value where the mosaic has no imagery (no tile has that date there): the layer's nodata.
QUALITY_NODATA = int(np.iinfo(np.uint16).max)
#: Quality value where the pixel has imagery but was never observed clear on any date of the series.
QUALITY_NEVER_CLEAR = QUALITY_NODATA - 1
#: Distances are capped just below the two flag values (65533 days is ~179 years: never reached).
QUALITY_MAX_DAYS = QUALITY_NEVER_CLEAR - 1
#: Sentinel beyond any real day number (days since 1970 fit easily in int32).
_FAR = np.int64(2**40)


def clear_distance_days(
    clear: np.ndarray,
    days: np.ndarray,
    *,
    covered: np.ndarray | None = None,
    block_rows: int = 64,
) -> np.ndarray:
    """Days from each date to the nearest date the pixel was observed clear, as uint16.

    ``clear`` is a boolean (time, y, x) array; ``days`` the dates as integer day numbers (ascending).
    Where ``covered`` (same shape) is False the result is :data:`QUALITY_NODATA`; pixels never clear get
    :data:`QUALITY_NEVER_CLEAR`. Rows are processed in blocks of ``block_rows`` to bound memory.
    """
    clear = np.asarray(clear, dtype=bool)
    day_numbers = np.asarray(days, dtype=np.int64)
    if clear.ndim != 3 or clear.shape[0] != day_numbers.size:
        raise ValueError(f"clear has shape {clear.shape}; expected (time={day_numbers.size}, y, x)")
    if day_numbers.size > 1 and not bool(np.all(np.diff(day_numbers) > 0)):
        raise ValueError("days must be strictly increasing")
    out = np.empty(clear.shape, dtype=np.uint16)
    t = day_numbers[:, None, None]
    for start in range(0, clear.shape[1], block_rows):
        block = clear[:, start : start + block_rows]
        # Last clear day at or before each date (forward running max) and first at or after (backward min).
        before = np.maximum.accumulate(np.where(block, t, -_FAR), axis=0)
        after = np.minimum.accumulate(np.where(block, t, _FAR)[::-1], axis=0)[::-1]
        distance = np.minimum(t - before, after - t)
        result = np.minimum(distance, QUALITY_MAX_DAYS)
        result[distance >= _FAR // 2] = QUALITY_NEVER_CLEAR
        out[:, start : start + block_rows] = result
    if covered is not None:
        out[~np.asarray(covered, dtype=bool)] = QUALITY_NODATA
    return out


def seam_step(image: np.ndarray, reference: np.ndarray, *, axis: int = -1) -> float:
    """Largest jump between neighbouring pixels along ``axis`` of the mean of ``image - reference``.

    Subtracting the reference removes the scene's own texture, so what remains is the step that tiles
    disagreeing with each other leave at their seam. The mean runs over every other axis (rows, bands,
    dates) and ignores NaN (use NaN for nodata). Units are those of the images.
    """
    difference = np.asarray(image, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    difference = np.moveaxis(difference, axis, -1)
    profile = np.nanmean(difference.reshape(-1, difference.shape[-1]), axis=0)
    return float(np.nanmax(np.abs(np.diff(profile))))
