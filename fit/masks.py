"""Robust cloud masks: catch the clouds and shadows that the scene classification (SCL) calls clear.

SCL is often wrong in the direction that hurts most: on the real WorldCereal 31UES sample it calls
whole dates "clear" whose blue reflectance is 0.6–1.7 (clouds over November fields). A fit that trusts
those pixels learns clouds; a baseline that interpolates from them paints clouds. The refinement only
ever *removes* pixels from the clear set, with three tests (REFERENCE.md "Measured on a real 64×64
WorldCereal site" and "Cloud masks"):

1. bright: B02 reflectance above :attr:`MaskRefinement.b02_max` (0.2). Clear land is darker than that in
   blue almost everywhere outside snow, sand and glint; clouds are brighter.
2. temporal outlier: B02 more than :attr:`MaskRefinement.b02_excess` (0.06) above that pixel's median B02
   over the dates that are still clear (thin clouds and haze brighten blue the most). Needs at least
   :attr:`MaskRefinement.min_clear_dates` clear dates for a meaningful median.
3. shadow: every one of blue, green, red, NIR and SWIR1 below ``shadow_ratio`` (0.6) × that pixel's
   clear-date median of the band. This is the temporal form of the dark-pixel test of Schmitt et al.
   (SEN12MS-CR-TS' detect_cloudshadow.py: low CSI = (NIR + SWIR1) / 2 *and* low blue), which there
   compares against the image's own minimum and mean and so flags water and dark fields on every date.
   A shadow darkens all bands at once; seasonal change does not (green-up darkens the visible bands but
   brightens NIR, harvest the reverse), which on the real sample kept a CSI-only test from marking
   30–50 % of clear winter dates as shadow.

Pixels newly marked cloud are then grown by ``dilation_px`` (cloud edges are brighter than the threshold
only in their core). The result keeps the schema's classes: new clouds are ``CLOUD``, new shadows
``SHADOW``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fit.errors import FitConfigError
from tiler.store import MaskClass

#: Bands the tests need, by their Sentinel-2 names.
BLUE = "B02"
#: Bands of the shadow test (alternatives in a tuple): visible, NIR and SWIR1. A shadow darkens them all.
SHADOW_BANDS: tuple[tuple[str, ...], ...] = (("B02",), ("B03",), ("B04",), ("B08", "B8A"), ("B11",))
#: The shadow test runs only with at least this many of those bands (GreenEarthNet's 4 bands qualify).
MIN_SHADOW_BANDS = 3


@dataclass(frozen=True)
class MaskRefinement:
    """Settings of :func:`refine_masks`. Reflectances are in [0, 1] (the schema's uint16 / 10000)."""

    enabled: bool = True
    #: Absolute blue test; REFERENCE.md's rule that caught SCL's false clears on the real site.
    b02_max: float = 0.2
    #: Temporal blue test: above the pixel's clear-date median by more than this.
    b02_excess: float = 0.06
    #: Fewer clear dates than this and the temporal tests are skipped for that pixel.
    min_clear_dates: int = 3
    #: Shadow when every shadow band is below ratio × its clear-date median. 0 disables the test.
    shadow_ratio: float = 0.6
    #: Grow the newly found clouds and shadows by this many pixels (a square structuring element).
    dilation_px: int = 1

    def __post_init__(self) -> None:
        checks = {
            "b02_max": self.b02_max > 0,
            "b02_excess": self.b02_excess > 0,
            "min_clear_dates": self.min_clear_dates >= 1,
            "shadow_ratio": 0 <= self.shadow_ratio < 1,
            "dilation_px": self.dilation_px >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise FitConfigError(f"mask refinement settings out of range: {', '.join(bad)} ({self})")


def _band(bands: Sequence[str], names: Sequence[str]) -> int | None:
    for name in names:
        if name in bands:
            return list(bands).index(name)
    return None


def _clear_median(values: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """Per-pixel median over clear dates; NaN where a pixel has no clear date."""
    masked = np.where(clear, values, np.nan)
    with warnings.catch_warnings():
        # Pixels never clear give all-NaN slices: expected, and their NaN median fails every test.
        warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
        return np.nanmedian(masked, axis=0)


def refine_masks(
    reflectance: np.ndarray,
    mask: np.ndarray,
    bands: Sequence[str],
    settings: MaskRefinement = MaskRefinement(),
) -> np.ndarray:
    """Return a copy of ``mask`` (time, y, x) with SCL's missed clouds and shadows marked.

    ``reflectance`` is (time, band, y, x) in [0, 1]. Bands missing from ``bands`` switch off the tests that
    need them (no B02: nothing to do; fewer than 3 shadow bands: no shadow test).
    """
    refined = np.array(mask, dtype=np.uint8, copy=True)
    blue_index = _band(bands, (BLUE,))
    if not settings.enabled or blue_index is None:
        return refined
    blue = reflectance[:, blue_index]
    clear = refined == MaskClass.CLEAR

    cloud = clear & (blue > settings.b02_max)
    clear &= ~cloud
    enough = clear.sum(axis=0) >= settings.min_clear_dates
    blue_median = _clear_median(blue, clear)
    cloud |= clear & enough & (blue > blue_median + settings.b02_excess)

    shadow = np.zeros_like(cloud)
    shadow_indices = [i for i in (_band(bands, names) for names in SHADOW_BANDS) if i is not None]
    if settings.shadow_ratio > 0 and len(shadow_indices) >= MIN_SHADOW_BANDS:
        still_clear = clear & ~cloud
        enough = still_clear.sum(axis=0) >= settings.min_clear_dates
        shadow = still_clear & enough
        for index in shadow_indices:
            band = reflectance[:, index]
            shadow &= band < settings.shadow_ratio * _clear_median(band, still_clear)

    if settings.dilation_px:
        structure = np.ones((1, 2 * settings.dilation_px + 1, 2 * settings.dilation_px + 1), bool)
        cloud = ndimage.binary_dilation(cloud, structure)
        shadow = ndimage.binary_dilation(shadow, structure) & ~cloud
    was_clear = refined == MaskClass.CLEAR
    refined[was_clear & shadow] = MaskClass.SHADOW
    refined[was_clear & cloud] = MaskClass.CLOUD
    return refined
