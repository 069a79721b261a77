"""A tile's arrays in the units the fit works in, read from (and cut like) a tile-store dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from fit.baselines import days_of
from fit.errors import FitInputError
from tiler.store import MASK, S1, S2, S2_SCALE


@dataclass(frozen=True)
class TileArrays:
    """(time, band, y, x) reflectance in [0, 1] (NaN = no data), the schema mask, S1 in dB (NaN = none)."""

    name: str
    reflectance: np.ndarray
    mask: np.ndarray
    s1: np.ndarray
    bands: tuple[str, ...]
    times: np.ndarray

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, name: str | None = None) -> TileArrays:
        """Load a tile (validated by the store) into memory; stored 0 (no data) becomes NaN."""
        stored = ds[S2].values
        reflectance = np.where(stored == 0, np.nan, stored.astype(np.float32) / S2_SCALE).astype(np.float32)
        return cls(
            name=name or str(ds.attrs.get("tile_id", "tile")),
            reflectance=reflectance,
            mask=ds[MASK].values.astype(np.uint8),
            s1=ds[S1].values.astype(np.float32),
            bands=tuple(str(b) for b in ds["band"].values),
            times=ds["time"].values.astype("datetime64[ns]"),
        )

    @property
    def n_dates(self) -> int:
        return int(self.reflectance.shape[0])

    @property
    def days(self) -> np.ndarray:
        return days_of(self.times)

    def dates(self, start: int, stop: int) -> TileArrays:
        """The dates [start, stop) of the series, e.g. one 30-date window of a longer tile."""
        if not 0 <= start < stop <= self.n_dates:
            raise FitInputError(
                f"tile {self.name!r}: dates {start}:{stop} are outside its {self.n_dates} dates "
                f"(use START:STOP with 0 <= START < STOP <= {self.n_dates})"
            )
        cut = slice(start, stop)
        return TileArrays(
            self.name,
            self.reflectance[cut],
            self.mask[cut],
            self.s1[cut],
            self.bands,
            self.times[cut],
        )

    def iso_dates(self) -> list[str]:
        return [str(t)[:10] for t in self.times]
