"""The tile grid: fixed, zone-wide tiles in UTM so tile ids are stable across runs.

A tile is ``size`` pixels (height, width) *including* its overlap margin, so what the fit sees is exactly
the network-friendly 384×768 of the paper. Neighbouring tiles start ``size - overlap`` pixels apart
(the stride) on an origin fixed per UTM zone at easting 0 / northing 0 of the zone's EPSG, so every
run, every campaign and every neighbour agree on which pixel belongs to which tile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Tile size of the paper's ROIs (Ebel et al., Sec. 4: H = 384, W = 768), in pixels (height, width).
DEFAULT_TILE_SIZE: tuple[int, int] = (384, 768)
#: Sentinel-2's finest band resolution (10 m: B02, B03, B04, B08), the grid's pixel size in metres.
DEFAULT_RESOLUTION = 10.0
#: Overlap between neighbours, in pixels, blended away by the mosaicker. 32 px = 320 m: wide enough that
#: a feathered blend hides the edge effects of a convolutional fit (receptive field at the borders).
DEFAULT_OVERLAP = 32

_TILE_ID = re.compile(r"^(?P<epsg>\d{4,5})_c(?P<col>-?\d+)_r(?P<row>-?\d+)$")


@dataclass(frozen=True)
class TileRef:
    """One tile of the grid: UTM zone (EPSG), column and row, and the grid's geometry."""

    epsg: int
    col: int
    row: int
    size: tuple[int, int] = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    resolution: float = DEFAULT_RESOLUTION

    def __post_init__(self) -> None:
        if not (32601 <= self.epsg <= 32660 or 32701 <= self.epsg <= 32760):
            raise ValueError(f"tile grid EPSG {self.epsg} is not a WGS 84 / UTM zone (326xx or 327xx)")
        height, width = self.size
        if height <= 0 or width <= 0:
            raise ValueError(f"tile size {self.size} must be positive (height, width) in pixels")
        if not 0 <= self.overlap < min(height, width) // 2:
            raise ValueError(
                f"overlap {self.overlap} px must be >= 0 and less than half the tile size {self.size}"
            )
        if self.resolution <= 0:
            raise ValueError(f"resolution {self.resolution} m must be positive")

    @property
    def tile_id(self) -> str:
        """Stable id, e.g. ``32631_c0123_r1456``: zone EPSG, column and row on the zone-wide grid."""
        return f"{self.epsg}_c{self.col:04d}_r{self.row:04d}"

    @property
    def stride(self) -> tuple[int, int]:
        """Distance between neighbouring tiles' origins, in pixels (height, width)."""
        return (self.size[0] - self.overlap, self.size[1] - self.overlap)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the whole tile, overlap included, in the zone CRS (metres)."""
        res = self.resolution
        minx = self.col * self.stride[1] * res
        miny = self.row * self.stride[0] * res
        return (minx, miny, minx + self.size[1] * res, miny + self.size[0] * res)

    @property
    def area_km2(self) -> float:
        """Area of the tile's own share of the grid (one stride cell), so tiles add up without overlap."""
        return self.stride[0] * self.stride[1] * self.resolution**2 / 1e6

    @classmethod
    def from_id(
        cls,
        tile_id: str,
        *,
        size: tuple[int, int] = DEFAULT_TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        resolution: float = DEFAULT_RESOLUTION,
    ) -> TileRef:
        """Parse ``EPSG_cCOL_rROW`` back into a tile of the grid with the given geometry."""
        match = _TILE_ID.match(tile_id)
        if match is None:
            raise ValueError(f"tile id {tile_id!r} is not of the form EPSG_cCOL_rROW (e.g. 32631_c0123_r1456)")
        return cls(
            epsg=int(match["epsg"]),
            col=int(match["col"]),
            row=int(match["row"]),
            size=size,
            overlap=overlap,
            resolution=resolution,
        )
