"""Robust masks on the real samples: SCL's false clears get caught, nothing is ever un-clouded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fit.arrays import TileArrays
from fit.errors import FitConfigError
from fit.masks import MaskRefinement, refine_masks
from tiler.store import MaskClass, open_tile

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def worldcereal(worldcereal_tile: Path) -> TileArrays:
    return TileArrays.from_dataset(open_tile(str(worldcereal_tile)).load())


DEFAULT = MaskRefinement()


def refined_of(tile: TileArrays, settings: MaskRefinement = DEFAULT) -> np.ndarray:
    return refine_masks(np.nan_to_num(tile.reflectance), tile.mask, tile.bands, settings)


def test_scl_false_clears_are_caught_on_the_real_tile(worldcereal: TileArrays) -> None:
    blue = worldcereal.reflectance[:, worldcereal.bands.index("B02")]
    scl_clear = worldcereal.mask == MaskClass.CLEAR
    false_clear = scl_clear & (blue > 1.0)  # blue reflectance above 1: cloud, whatever SCL says
    assert false_clear.sum() > 0
    refined = refined_of(worldcereal)
    assert (refined[false_clear] == MaskClass.CLOUD).all()
    # a whole date SCL calls clear while its blue is that of clouds (2018-11-12: mean B02 ~0.64)
    day = worldcereal.iso_dates().index("2018-11-12")
    assert scl_clear[day].mean() > 0.9
    assert (refined[day] == MaskClass.CLEAR).mean() < 0.05
    # what stays clear looks like land in blue
    assert np.nanmax(blue[refined == MaskClass.CLEAR]) <= MaskRefinement().b02_max


def test_refinement_only_removes_clear_pixels(worldcereal: TileArrays) -> None:
    refined = refined_of(worldcereal)
    was_clear = worldcereal.mask == MaskClass.CLEAR
    assert np.array_equal(refined[~was_clear], worldcereal.mask[~was_clear])
    assert set(np.unique(refined[was_clear])) <= {MaskClass.CLEAR, MaskClass.CLOUD, MaskClass.SHADOW}
    # clear dates stay (mostly) clear: the tests are not a blanket
    day = worldcereal.iso_dates().index("2019-10-18")
    assert (refined[day] == MaskClass.CLEAR).mean() > 0.95


def test_disabled_refinement_is_identity(worldcereal: TileArrays) -> None:
    assert np.array_equal(refined_of(worldcereal, MaskRefinement(enabled=False)), worldcereal.mask)


def test_four_band_tile_without_swir() -> None:
    tile = TileArrays.from_dataset(open_tile(str(DATA / "greenearthnet_34tet.zarr")).load())
    assert tile.bands == ("B02", "B03", "B04", "B8A")
    refined = refined_of(tile)
    blue = np.nan_to_num(tile.reflectance[:, 0])
    assert not ((refined == MaskClass.CLEAR) & (blue > MaskRefinement().b02_max)).any()
    assert (refined != MaskClass.CLEAR).sum() >= (tile.mask != MaskClass.CLEAR).sum()


def synthetic_series() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """6 clear dates of a flat field; bands B02 B03 B04 B08 B11."""
    bands = ["B02", "B03", "B04", "B08", "B11"]
    base = np.array([0.04, 0.07, 0.05, 0.35, 0.2])
    reflectance = np.broadcast_to(base[None, :, None, None], (6, 5, 8, 8)).copy()
    return reflectance, np.zeros((6, 8, 8), np.uint8), bands


def test_temporal_blue_outlier_is_cloud() -> None:
    reflectance, mask, bands = synthetic_series()
    reflectance[2, 0, 3, 3] = 0.04 + 0.1  # haze: blue 0.1 above its median, below the absolute 0.2
    refined = refine_masks(reflectance, mask, bands, MaskRefinement(dilation_px=0))
    assert refined[2, 3, 3] == MaskClass.CLOUD
    assert (refined == MaskClass.CLEAR).sum() == refined.size - 1


def test_shadow_darkens_every_band_but_harvest_does_not() -> None:
    reflectance, mask, bands = synthetic_series()
    reflectance[1, :, 2, 2] *= 0.4  # a cloud shadow: everything darker
    reflectance[4, 3, 5, 5] = 0.12  # harvest: NIR drops ...
    reflectance[4, 0:3, 5, 5] *= 1.5  # ... visible brightens
    refined = refine_masks(reflectance, mask, bands, MaskRefinement(dilation_px=0))
    assert refined[1, 2, 2] == MaskClass.SHADOW
    assert refined[4, 5, 5] == MaskClass.CLEAR


def test_settings_are_validated() -> None:
    with pytest.raises(FitConfigError, match="shadow_ratio"):
        MaskRefinement(shadow_ratio=1.5)
