"""The tile grid: fixed, zone-wide tiles in UTM so tile ids are stable across runs.

An area of interest (:func:`load_area`: GeoJSON, WKT or a lon/lat bbox) is split by UTM zone and
covered by the tiles whose cells meet it (:func:`plan_tiles`); :func:`tiles_geojson` draws the plan.

A tile is ``size`` pixels (height, width) *including* its overlap margin, so what the fit sees is exactly
the network-friendly 384×768 of the paper. Neighbouring tiles start ``size - overlap`` pixels apart
(the stride) on an origin fixed per UTM zone at easting 0 / northing 0 of the zone's EPSG, so every
run, every campaign and every neighbour agree on which pixel belongs to which tile.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyproj
import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from tiler.errors import AreaError

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
    def cell_bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the tile's own stride cell: the part of the grid this tile owns.

        Cells tile the zone without gaps or overlap. A tile reaches ``overlap`` pixels beyond its cell
        to the east and to the north, into the cells of its neighbours there.
        """
        res = self.resolution
        minx = self.col * self.stride[1] * res
        miny = self.row * self.stride[0] * res
        return (minx, miny, minx + self.stride[1] * res, miny + self.stride[0] * res)

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
            raise ValueError(
                f"tile id {tile_id!r} is not of the form EPSG_cCOL_rROW (e.g. 32631_c0123_r1456)"
            )
        return cls(
            epsg=int(match["epsg"]),
            col=int(match["col"]),
            row=int(match["row"]),
            size=size,
            overlap=overlap,
            resolution=resolution,
        )


# --- Areas of interest ----------------------------------------------------------------------------------

#: UTM is defined from 80°S to 84°N (NGA, "The Universal Grids", DMA TM 8358.2, sec. 2-4); the polar caps
#: use UPS, which this grid does not implement.
UTM_MIN_LAT = -80.0
UTM_MAX_LAT = 84.0
#: UTM zones are 6° of longitude wide, zone 1 starting at 180°W (DMA TM 8358.2, sec. 2-2).
UTM_ZONE_WIDTH_DEG = 6.0
UTM_ZONES = 60
#: EPSG codes of WGS 84 / UTM zone N: 32600 + N (north), 32700 + N (south).
EPSG_UTM_NORTH = 32600
EPSG_UTM_SOUTH = 32700
#: Edges of the area are densified to this step (degrees, ~1 km) before projection, so a long edge
#: (a bbox side along a parallel) follows its true curved course in UTM instead of a straight chord.
DENSIFY_DEG = 0.01
#: A polygon edge spanning more longitude than this wraps around the globe: it crosses the antimeridian.
ANTIMERIDIAN_SPAN_DEG = 180.0

_WKT_START = re.compile(
    r"^\s*(SRID=\d+;\s*)?(MULTI)?(POLYGON|POINT|LINESTRING)|^\s*GEOMETRYCOLLECTION", re.IGNORECASE
)
_POLYGONAL = ("Polygon", "MultiPolygon")
_GEOJSON_CRS84 = {"urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:EPSG::4326", "EPSG:4326"}


def load_area(spec: str, *, storage_options: Mapping[str, Any] | None = None) -> BaseGeometry:
    """Read an area of interest into a valid (Multi)Polygon in lon/lat (WGS 84, longitude first).

    ``spec`` is one of:

    - ``minlon,minlat,maxlon,maxlat``, e.g. ``2.5,49.5,6.4,51.5``. A bbox with ``minlon > maxlon``
      crosses the antimeridian (RFC 7946 sec. 5.2) and is split into its two parts at 180°.
    - a WKT polygon or multipolygon, e.g. ``POLYGON ((4 50, 5 50, 5 51, 4 50))``;
    - a GeoJSON document (inline, starting with ``{``) or the path / fsspec URL of a GeoJSON file:
      a Geometry, a Feature or a FeatureCollection (whose polygons are merged).

    Raises :class:`AreaError` for an unreadable spec, an invalid or empty geometry, non-polygonal
    geometries, coordinates outside lon/lat ranges, latitudes outside UTM (80°S to 84°N) and polygons
    that cross the antimeridian (split them at 180° first; the error says how).
    """
    text = spec.strip()
    if not text:
        raise AreaError("area: empty specification; give a GeoJSON file, WKT or minlon,minlat,maxlon,maxlat")
    bbox = _parse_bbox(text)
    if bbox is not None:
        return check_area(bbox, name=f"bbox {text!r}")
    if text.startswith("{"):
        return check_area(
            _geojson_geometry(_loads_json(text, "inline GeoJSON"), "inline GeoJSON"), name="inline GeoJSON"
        )
    if _WKT_START.match(text):
        try:
            geometry = shapely.from_wkt(text.split(";", 1)[-1] if text.upper().startswith("SRID=") else text)
        except shapely.errors.GEOSException as err:
            raise AreaError(f"area: WKT {text[:60]!r} does not parse: {err}") from err
        return check_area(geometry, name="WKT area")
    try:
        fs, path = fsspec.core.url_to_fs(text, **dict(storage_options or {}))
        exists = fs.exists(path)
    except (OSError, ValueError) as err:
        raise AreaError(f"area {text!r}: cannot reach it as a file: {err}") from err
    if not exists:
        raise AreaError(
            f"area {text!r} is not a bbox (minlon,minlat,maxlon,maxlat), not WKT and not an existing "
            "GeoJSON file; check the path or the format"
        )
    with fs.open(path, "rt", encoding="utf-8") as f:
        document = _loads_json(f.read(), f"GeoJSON file {text!r}")
    return check_area(_geojson_geometry(document, f"GeoJSON file {text!r}"), name=f"area file {text!r}")


def _parse_bbox(text: str) -> BaseGeometry | None:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        return None
    try:
        minlon, minlat, maxlon, maxlat = (float(p) for p in parts)
    except ValueError:
        return None
    if not minlat < maxlat:
        raise AreaError(
            f"bbox {text!r}: minlat {minlat} must be below maxlat {maxlat} (minlon,minlat,maxlon,maxlat)"
        )
    for lon in (minlon, maxlon):
        if not -180.0 <= lon <= 180.0:
            raise AreaError(
                f"bbox {text!r}: longitude {lon} is outside [-180, 180] (order: minlon,minlat,maxlon,maxlat)"
            )
    if minlon == maxlon:
        raise AreaError(f"bbox {text!r}: minlon equals maxlon, the area is empty")
    if minlon > maxlon:  # RFC 7946 sec. 5.2: a bbox whose west edge is east of its east edge wraps 180°
        east, west = shapely.box(minlon, minlat, 180.0, maxlat), shapely.box(-180.0, minlat, maxlon, maxlat)
        return shapely.MultiPolygon([east, west])
    return shapely.box(minlon, minlat, maxlon, maxlat)


def _loads_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise AreaError(
            f"{name}: not valid JSON ({err}); give GeoJSON, WKT or minlon,minlat,maxlon,maxlat"
        ) from err


def _geojson_geometry(document: Any, name: str) -> BaseGeometry:
    if not isinstance(document, dict) or "type" not in document:
        raise AreaError(f"{name}: not a GeoJSON object (no 'type' member)")
    crs_member = document.get("crs")
    crs = crs_member.get("properties", {}).get("name") if isinstance(crs_member, dict) else None
    if crs is not None and crs not in _GEOJSON_CRS84:
        raise AreaError(
            f"{name}: declares CRS {crs!r}; GeoJSON areas must be lon/lat WGS 84 (RFC 7946): reproject it, "
            "e.g. `ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson`"
        )
    kind = document["type"]
    if kind == "FeatureCollection":
        features = document.get("features") or []
        if not features:
            raise AreaError(f"{name}: the FeatureCollection has no features, the area is empty")
        parts = [_feature_geometry(feature, f"{name}, feature {i}") for i, feature in enumerate(features)]
        return shapely.union_all(parts)
    if kind == "Feature":
        return _feature_geometry(document, name)
    return _shape(document, name)


def _feature_geometry(feature: Any, name: str) -> BaseGeometry:
    if not isinstance(feature, dict) or feature.get("geometry") is None:
        raise AreaError(f"{name}: a feature without a geometry; remove it or give it a polygon")
    if "id" in feature:
        name = f"{name} (id {feature['id']!r})"
    geometry = _shape(feature["geometry"], name)
    _check_geometry(geometry, name)  # before any union, which GEOS may refuse on invalid input
    return geometry


def _shape(obj: Any, name: str) -> BaseGeometry:
    try:
        return shape(obj)
    except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as err:
        raise AreaError(f"{name}: not a GeoJSON geometry ({err})") from err


def check_area(area: BaseGeometry, *, name: str = "area") -> BaseGeometry:
    """Check an area in lon/lat and return it as a (Multi)Polygon; raise :class:`AreaError` if unusable."""
    _check_geometry(area, name)
    if isinstance(area, shapely.GeometryCollection) and not isinstance(area, shapely.MultiPolygon):
        area = shapely.union_all([g for g in area.geoms])
    return area


def _check_geometry(area: BaseGeometry, name: str) -> None:
    if area.is_empty:
        raise AreaError(f"{name}: the geometry is empty; give a polygon that covers the area to process")
    kinds = {g.geom_type for g in getattr(area, "geoms", [area])}
    if not kinds <= set(_POLYGONAL):
        raise AreaError(
            f"{name}: geometry types {sorted(kinds)} are not polygons; the area must be a (Multi)Polygon "
            "(buffer points or lines into polygons first)"
        )
    minlon, minlat, maxlon, maxlat = area.bounds
    if minlat < -90.0 or maxlat > 90.0 or minlon < -180.0 or maxlon > 180.0:
        raise AreaError(
            f"{name}: coordinates {area.bounds} are outside lon [-180, 180] / lat [-90, 90]; the area must "
            "be in WGS 84 degrees, longitude first (RFC 7946)"
        )
    if minlat < UTM_MIN_LAT or maxlat > UTM_MAX_LAT:
        raise AreaError(
            f"{name}: latitudes {minlat:.3f}..{maxlat:.3f} reach beyond UTM's "
            f"{UTM_MIN_LAT:g}..{UTM_MAX_LAT:g}; "
            "polar areas need UPS, which the tile grid does not support: clip the area to that band"
        )
    if not area.is_valid:
        raise AreaError(
            f"{name}: invalid geometry ({explain_validity(area)}); repair it, e.g. "
            "with shapely.make_valid or QGIS 'Fix geometries'"
        )
    span = _widest_edge_lon_span(area)
    if span > ANTIMERIDIAN_SPAN_DEG:
        raise AreaError(
            f"{name}: an edge spans {span:.1f}° of longitude, so the polygon crosses the antimeridian "
            "(180°); "
            "split it at 180° into a MultiPolygon with one part on each side (RFC 7946 sec. 3.1.9), or "
            "give a bbox with minlon > maxlon, which is split automatically"
        )


def _widest_edge_lon_span(area: BaseGeometry) -> float:
    widest = 0.0
    for polygon in getattr(area, "geoms", [area]):
        for ring in (polygon.exterior, *polygon.interiors):
            lons = np.asarray(ring.coords)[:, 0]
            if lons.size > 1:
                widest = max(widest, float(np.abs(np.diff(lons)).max()))
    return widest


# --- UTM zones ------------------------------------------------------------------------------------------


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG of the regular 6° UTM zone holding (lon, lat): 326NN north of the equator, 327NN south.

    The Norway (32V) and Svalbard (31X-37X) exceptions of MGRS are deliberately not applied: the grid
    only chooses the projection the tiles are resampled into, and the regular zones keep every point
    within 3° of its central meridian, where the projection distorts least. Sentinel-2's own MGRS tiles
    do not matter here: ingest resamples any granule onto the tile.
    """
    return (EPSG_UTM_NORTH if lat >= 0 else EPSG_UTM_SOUTH) + _zone_of(lon)


def _zone_of(lon: float) -> int:
    # 180°E itself belongs to zone 60 (the last zone is closed on the east).
    return min(math.floor((lon + 180.0) / UTM_ZONE_WIDTH_DEG) + 1, UTM_ZONES)


def split_by_zone(area: BaseGeometry) -> dict[int, BaseGeometry]:
    """The parts of a lon/lat area in each UTM zone (and hemisphere), keyed by EPSG; only parts with area."""
    area = check_area(area)
    minlon, minlat, maxlon, maxlat = area.bounds
    first, last = _zone_of(minlon), _zone_of(maxlon)
    parts: dict[int, BaseGeometry] = {}
    for zone in range(first, last + 1):
        west = -180.0 + (zone - 1) * UTM_ZONE_WIDTH_DEG
        for base, south, north in ((EPSG_UTM_SOUTH, UTM_MIN_LAT, 0.0), (EPSG_UTM_NORTH, 0.0, UTM_MAX_LAT)):
            if maxlat <= south or minlat >= north:
                continue
            part = area.intersection(shapely.box(west, south, west + UTM_ZONE_WIDTH_DEG, north))
            # The cut can leave slivers of lower dimension (shared edges): keep the polygons only.
            polygons = [g for g in getattr(part, "geoms", [part]) if g.geom_type in _POLYGONAL]
            part = shapely.union_all(polygons) if polygons else part
            if part.area > 0:
                parts[base + zone] = part
    return parts


def to_utm(geometry: BaseGeometry, epsg: int) -> BaseGeometry:
    """A lon/lat geometry in the zone CRS, its edges densified first so they keep their true course."""
    transformer = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
    dense = shapely.segmentize(geometry, DENSIFY_DEG)
    return shapely.transform(dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def to_lonlat(geometry: Any, epsg: int, *, step_m: float = 1000.0) -> Any:
    """Zone-CRS geometries (one or an array) in lon/lat, densified to ``step_m`` metres first."""
    transformer = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)
    dense = shapely.segmentize(geometry, step_m)
    return shapely.transform(dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


# --- Planning -------------------------------------------------------------------------------------------


def plan_tiles(
    area: BaseGeometry | str,
    *,
    size: tuple[int, int] = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    resolution: float = DEFAULT_RESOLUTION,
) -> list[TileRef]:
    """The tiles covering a lon/lat area: per UTM zone, every tile whose cell shares area with the area.

    Cells (one stride of the grid per tile, :attr:`TileRef.cell_bounds`) tile each zone without overlap,
    so the tiles' cells cover the area and each tile reaches ``overlap`` pixels further for blending.
    The grid is fixed per zone, so a sub-area plans a subset of the same tiles. Sorted by
    (EPSG, row, column). ``area`` may also be a spec for :func:`load_area`.
    """
    geometry = load_area(area) if isinstance(area, str) else check_area(area)
    TileRef(EPSG_UTM_NORTH + 1, 0, 0, size, overlap, resolution)  # validates the grid's geometry early
    tiles: list[TileRef] = []
    for epsg, part in sorted(split_by_zone(geometry).items()):
        tiles.extend(_tiles_in_zone(to_utm(part, epsg), epsg, size, overlap, resolution))
    return tiles


def _tiles_in_zone(
    part: BaseGeometry, epsg: int, size: tuple[int, int], overlap: int, resolution: float
) -> Iterable[TileRef]:
    cell_h = (size[0] - overlap) * resolution
    cell_w = (size[1] - overlap) * resolution
    minx, miny, maxx, maxy = part.bounds
    cols = np.arange(math.floor(minx / cell_w), math.floor(maxx / cell_w) + 1)
    shapely.prepare(part)
    for row in range(math.floor(miny / cell_h), math.floor(maxy / cell_h) + 1):
        cells = shapely.box(cols * cell_w, row * cell_h, (cols + 1) * cell_w, (row + 1) * cell_h)
        # Interiors must meet: a cell that only touches the area along an edge adds nothing to cover.
        # ``relate_pattern`` cannot use the prepared area, so it is asked only of the cells on the area's
        # boundary; cells well inside (most of a large area) pass the prepared ``contains_properly``.
        keep = shapely.contains_properly(part, cells)
        edge = ~keep & shapely.intersects(part, cells)
        keep[edge] = shapely.relate_pattern(cells[edge], part, "T********")
        for col in cols[keep]:
            yield TileRef(epsg, int(col), row, size, overlap, resolution)


@dataclass(frozen=True)
class PlanSummary:
    """What a plan amounts to: tile count, the area the tiles own (km²) and tiles per UTM zone."""

    n_tiles: int
    area_km2: float
    zones: Mapping[int, int]


def summarize_plan(tiles: Sequence[TileRef]) -> PlanSummary:
    """Count the tiles of a plan, their area (each tile's own cell, so no overlap counted twice) and zones."""
    return PlanSummary(
        n_tiles=len(tiles),
        area_km2=float(sum(t.area_km2 for t in tiles)),
        zones=dict(sorted(Counter(t.epsg for t in tiles).items())),
    )


def tiles_geojson(tiles: Sequence[TileRef]) -> dict[str, Any]:
    """The tiles as a GeoJSON FeatureCollection in lon/lat, for a map.

    Each feature is a tile's full footprint (overlap included: the pixels ingest fetches and the fit
    sees), with its id, zone, column, row and cell area as properties.
    """
    features = []
    for epsg in sorted({t.epsg for t in tiles}):
        zone_tiles = [t for t in tiles if t.epsg == epsg]
        footprints = to_lonlat(shapely.box(*np.array([t.bounds for t in zone_tiles]).T), epsg)
        for tile, footprint in zip(zone_tiles, shapely.set_precision(footprints, 1e-7), strict=True):
            features.append(
                {
                    "type": "Feature",
                    "id": tile.tile_id,
                    "geometry": mapping(footprint),
                    "properties": {
                        "tile_id": tile.tile_id,
                        "epsg": tile.epsg,
                        "col": tile.col,
                        "row": tile.row,
                        "area_km2": round(tile.area_km2, 4),
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}
