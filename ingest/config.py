"""Ingest settings and targets: small frozen dataclasses that validate themselves on construction.

Everything a bad value could break is checked here, before any request to a catalogue.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from ingest.catalogs import (
    PLANETARY_COMPUTER_URL,
    PROFILES,
    S2_L2A_BANDS,
    CatalogProfile,
    canonical_band,
    profile_for_url,
    profile_named,
)
from ingest.errors import IngestConfigError

#: Sentinel-1 revisits one track every 12 days with one satellite (since S1B's loss, Dec 2021); a window of
#: ±6 days around each S2 date reaches an acquisition of every track that covers the tile.
DEFAULT_S1_WINDOW_DAYS = 6.0
#: Cloud and shadow masks grow by 2 px (20 m, one SCL pixel): SCL misses the thin edges of clouds, and the
#: fit must not learn from them (SEN12MS-CR-TS dilates its cloud masks by 2 as well, REFERENCE.md).
DEFAULT_MASK_DILATION_PX = 2
#: Retries of catalogue requests and asset reads, with exponential back-off starting at this delay.
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_S = 1.0
#: Seconds to wait for one catalogue response before retrying it.
DEFAULT_TIMEOUT_S = 60.0
#: A tile's bounds may stray this far (degrees) outside its CRS's area of use: tiles at zone edges do.
AREA_OF_USE_MARGIN_DEG = 1.0

Resampling = Literal["nearest", "bilinear", "cubic", "average"]
S1Orbit = Literal["auto", "ascending", "descending"]
CloudMask = Literal["scl", "fallback"]


class TileTarget(Protocol):
    """What ingest needs of a tile: ``tiler.grid.TileRef`` and :class:`TileBox` both provide it."""

    @property
    def epsg(self) -> int: ...
    @property
    def resolution(self) -> float: ...
    @property
    def bounds(self) -> tuple[float, float, float, float]: ...
    @property
    def tile_id(self) -> str: ...


@dataclass(frozen=True)
class TileBox:
    """A tile given by its bounds (minx, miny, maxx, maxy, metres) in a projected CRS, not by the grid."""

    epsg: int
    bounds: tuple[float, float, float, float]
    resolution: float = 10.0
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", tuple(float(b) for b in self.bounds))
        validate_target(self)

    @property
    def tile_id(self) -> str:
        if self.name:
            return self.name
        minx, miny, _, _ = self.bounds
        return f"{self.epsg}_x{minx:.0f}_y{miny:.0f}"

    @property
    def size(self) -> tuple[int, int]:
        return tile_shape(self)


def tile_shape(tile: TileTarget) -> tuple[int, int]:
    """(height, width) in pixels of a tile target."""
    minx, miny, maxx, maxy = tile.bounds
    return (round((maxy - miny) / tile.resolution), round((maxx - minx) / tile.resolution))


def validate_target(tile: TileTarget) -> None:
    """Refuse bounds that are empty, given in another CRS than ``tile.epsg``, or off the pixel grid."""
    bounds = tuple(tile.bounds)
    name = f"EPSG:{tile.epsg}" if isinstance(tile, TileBox) and not tile.name else tile.tile_id
    if len(bounds) != 4 or not all(math.isfinite(b) for b in bounds):
        raise IngestConfigError(f"tile {name!r}: bounds {bounds} must be four finite numbers")
    minx, miny, maxx, maxy = bounds
    if not (maxx > minx and maxy > miny):
        raise IngestConfigError(
            f"tile {name!r}: bounds {bounds} must be (minx, miny, maxx, maxy) with max > min"
        )
    try:
        crs = CRS.from_epsg(int(tile.epsg))
    except CRSError as err:
        raise IngestConfigError(f"tile {name!r}: EPSG:{tile.epsg} is not a known CRS ({err})") from err
    if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
        raise IngestConfigError(
            f"tile {name!r}: EPSG:{tile.epsg} is not a projected CRS in metres; tiles live in a UTM zone "
            "(e.g. EPSG:32631): give bounds in metres of that zone"
        )
    area = crs.area_of_use
    if area is not None:
        corners = Transformer.from_crs(crs, 4326, always_xy=True).transform_bounds(minx, miny, maxx, maxy)
        m = AREA_OF_USE_MARGIN_DEG
        lon_min, lat_min, lon_max, lat_max = corners
        inside = all(map(math.isfinite, corners)) and (
            lon_min >= area.west - m
            and lon_max <= area.east + m
            and lat_min >= area.south - m
            and lat_max <= area.north + m
        )
        if not inside:
            raise IngestConfigError(
                f"tile {name!r}: bounds {bounds} lie outside EPSG:{tile.epsg}'s area of use "
                f"(lon {area.west}..{area.east}, lat {area.south}..{area.north}); they look like they are "
                f"in another CRS (lon/lat degrees?): give minx,miny,maxx,maxy in metres of EPSG:{tile.epsg}"
            )
    if tile.resolution <= 0:
        raise IngestConfigError(f"tile {name!r}: resolution {tile.resolution} m must be positive")
    for extent in (maxx - minx, maxy - miny):
        if abs(extent / tile.resolution - round(extent / tile.resolution)) > 1e-6:
            raise IngestConfigError(
                f"tile {name!r}: bounds {bounds} do not span a whole number of {tile.resolution} m pixels; "
                f"round them to multiples of {tile.resolution}"
            )


def lonlat_bounds(tile: TileTarget) -> tuple[float, float, float, float]:
    """The tile's bounding box in lon/lat (densified edges), for catalogue searches."""
    transformer = Transformer.from_crs(CRS.from_epsg(int(tile.epsg)), 4326, always_xy=True)
    return tuple(transformer.transform_bounds(*tile.bounds, densify_pts=21))  # type: ignore[return-value]


def _to_date(value: dt.date | str, option: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise IngestConfigError(f"option {option}: {value!r} is not a date; use YYYY-MM-DD") from None


def is_item_collection(catalog: str) -> bool:
    """A catalogue given as a saved ItemCollection file rather than a STAC API URL."""
    return not catalog.startswith(("http://", "https://"))


@dataclass(frozen=True)
class IngestConfig:
    """Everything that decides what an ingest reads and how; validated on construction.

    ``catalog`` is a STAC API URL or the path of a saved ItemCollection (``stac-client search ... >
    items.json``); ``s1_catalog`` defaults to the same. ``profile`` names the catalogue's conventions
    (asset names, units, offsets); ``auto`` takes them from the URL or from the items' asset keys.
    """

    start: dt.date
    end: dt.date
    catalog: str = PLANETARY_COMPUTER_URL
    s1_catalog: str | None = None
    profile: str = "auto"
    s1_profile: str = "auto"
    s2_collection: str | None = None
    s1_collection: str | None = None
    bands: tuple[str, ...] = S2_L2A_BANDS
    max_cloud: float = 100.0
    s1_window_days: float = DEFAULT_S1_WINDOW_DAYS
    s1_orbit: S1Orbit = "auto"
    cloud_mask: CloudMask = "scl"
    mask_dilation_px: int = DEFAULT_MASK_DILATION_PX
    refine_bright: bool = True
    resampling: Resampling = "nearest"
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        start, end = _to_date(self.start, "start"), _to_date(self.end, "end")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        if end < start:
            raise IngestConfigError(f"option end: {end} is before start {start}; give --start <= --end")
        if start.year < 2014:
            raise IngestConfigError(f"option start: {start} predates Sentinel-1 and Sentinel-2 (2014/2015)")
        if not self.catalog:
            raise IngestConfigError("option catalog: empty; give a STAC API URL or an ItemCollection file")
        for option, catalog in (("catalog", self.catalog), ("s1_catalog", self.s1_catalog)):
            if (
                catalog
                and is_item_collection(catalog)
                and not Path(catalog.removeprefix("file://")).is_file()
            ):
                raise IngestConfigError(
                    f"option {option}: {catalog!r} is neither an http(s) STAC API URL nor an existing "
                    "ItemCollection file"
                )
        for option in ("profile", "s1_profile"):
            value = getattr(self, option)
            if value != "auto" and value not in PROFILES:
                raise IngestConfigError(
                    f"option {option}: {value!r} is unknown; choose 'auto' or one of {sorted(PROFILES)}"
                )
        bands = tuple(canonical_band(b) for b in self.bands)
        if not bands:
            raise IngestConfigError("option bands: empty; give at least one Sentinel-2 band")
        if len(set(bands)) != len(bands):
            raise IngestConfigError(f"option bands: {bands} lists a band twice")
        object.__setattr__(self, "bands", bands)
        if not 0 <= self.max_cloud <= 100:
            raise IngestConfigError(f"option max_cloud: {self.max_cloud} must be a percentage in [0, 100]")
        if not self.s1_window_days > 0:
            raise IngestConfigError(f"option s1_window_days: {self.s1_window_days} must be > 0 days")
        if self.s1_orbit not in ("auto", "ascending", "descending"):
            raise IngestConfigError(f"option s1_orbit: {self.s1_orbit!r}; use auto, ascending or descending")
        if self.cloud_mask not in ("scl", "fallback"):
            raise IngestConfigError(f"option cloud_mask: {self.cloud_mask!r}; use scl or fallback")
        if self.cloud_mask == "fallback":
            missing = [b for b in ("B02", "B03", "B04", "B08", "B11") if b not in bands]
            if missing:
                raise IngestConfigError(
                    f"option cloud_mask: the fallback cloud/shadow test needs bands {missing} too; add them "
                    "to bands"
                )
        if self.mask_dilation_px < 0:
            raise IngestConfigError(f"option mask_dilation_px: {self.mask_dilation_px} must be >= 0")
        if self.resampling not in ("nearest", "bilinear", "cubic", "average"):
            raise IngestConfigError(
                f"option resampling: {self.resampling!r}; use nearest, bilinear, cubic or average"
            )
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise IngestConfigError(
                f"options retries={self.retries}, backoff_s={self.backoff_s}, timeout_s={self.timeout_s}: "
                "retries and back-off must be >= 0 and the timeout > 0"
            )
        # Fail now, not after the S2 search, when a named catalogue has no S1 collection to pair with.
        s1_profile = self.resolved_profile(s1=True)
        if self.s1_collection is None and s1_profile is not None and s1_profile.s1_collection is None:
            raise IngestConfigError(
                f"the {s1_profile.name} catalogue has no terrain-corrected Sentinel-1 collection: pass "
                f"--s1-catalog {PLANETARY_COMPUTER_URL} (sentinel-1-rtc) or --s1-collection"
            )

    @property
    def s1_source(self) -> str:
        return self.s1_catalog or self.catalog

    def resolved_profile(self, *, s1: bool = False) -> CatalogProfile | None:
        """The profile named or implied by the URL; ``None`` where it must come from the items."""
        name = self.s1_profile if s1 else self.profile
        if name != "auto":
            return profile_named(name)
        if s1 and self.s1_catalog is None and self.profile != "auto":
            return profile_named(self.profile)
        return profile_for_url(self.s1_source if s1 else self.catalog)

    def s2_collection_for(self, profile: CatalogProfile | None) -> str:
        if self.s2_collection:
            return self.s2_collection
        return (profile or PROFILES["planetary-computer"]).s2_collection

    def s1_collection_for(self, profile: CatalogProfile | None) -> str:
        if self.s1_collection:
            return self.s1_collection
        collection = (profile or PROFILES["planetary-computer"]).s1_collection
        assert collection is not None  # checked in __post_init__
        return collection
