"""The tile grid: areas in, tiles out; coverage, stability, overlaps and the UTM zone split."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiler.errors import AreaError
from tiler.grid import (
    TileRef,
    load_area,
    plan_tiles,
    split_by_zone,
    summarize_plan,
    tiles_geojson,
    to_lonlat,
    to_utm,
    utm_epsg,
)

# --- helpers computed independently of the planner --------------------------------------------------------


def owning_tile(lon: float, lat: float, size: tuple[int, int], overlap: int, resolution: float) -> str:
    """The id of the tile whose cell holds a point, from the zone formula and one projection."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    epsg = (32600 if lat >= 0 else 32700) + zone
    x, y = pyproj.Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    cell_h = (size[0] - overlap) * resolution
    cell_w = (size[1] - overlap) * resolution
    return TileRef(epsg, math.floor(x / cell_w), math.floor(y / cell_h), size, overlap, resolution).tile_id


def points_in(area: shapely.Geometry, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = area.bounds
    pts = np.column_stack([rng.uniform(minx, maxx, 4 * n), rng.uniform(miny, maxy, 4 * n)])
    inside = shapely.contains_xy(area, pts[:, 0], pts[:, 1])
    return pts[inside][:n]


grids = st.tuples(
    st.integers(64, 800),  # height
    st.integers(64, 800),  # width
    st.floats(0, 0.49),  # overlap as a fraction of half the smaller side
    st.sampled_from([10.0, 20.0, 60.0]),
).map(lambda g: ((g[0], g[1]), int(g[2] * (min(g[0], g[1]) // 2)), g[3]))

areas = st.tuples(
    st.floats(-179.5, 178.5),  # west
    st.floats(-79.0, 82.5),  # south
    st.floats(0.01, 1.0),  # width in degrees
    st.floats(0.01, 1.0),  # height in degrees
).map(lambda a: shapely.box(a[0], a[1], min(a[0] + a[2], 180.0), min(a[1] + a[3], 84.0)))


# --- properties -------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(area=areas, grid=grids, seed=st.integers(0, 2**16))
def test_tiles_cover_the_area_and_only_it(area: shapely.Geometry, grid, seed: int) -> None:
    size, overlap, resolution = grid
    tiles = plan_tiles(area, size=size, overlap=overlap, resolution=resolution)
    ids = [t.tile_id for t in tiles]
    assert len(ids) == len(set(ids)), "tile ids are unique"
    # Covers: every point of the area lies in the cell of a planned tile.
    planned = set(ids)
    for lon, lat in points_in(area, 60, seed):
        assert owning_tile(lon, lat, size, overlap, resolution) in planned
    # Only tiles that meet the area: every planned cell, back in lon/lat, touches it (to 1e-7°, ~1 cm).
    for tile in tiles[:: max(1, len(tiles) // 40)]:
        cell = to_lonlat(shapely.box(*tile.cell_bounds), tile.epsg, step_m=tile.resolution * 10)
        assert cell.distance(area) < 1e-7, tile.tile_id


@settings(max_examples=25, deadline=None)
@given(area=areas, grid=grids)
def test_ids_are_stable_and_sub_areas_plan_a_subset(area: shapely.Geometry, grid) -> None:
    size, overlap, resolution = grid
    first = plan_tiles(area, size=size, overlap=overlap, resolution=resolution)
    again = plan_tiles(shapely.from_wkt(area.wkt), size=size, overlap=overlap, resolution=resolution)
    assert first == again
    for tile in first[:50]:
        assert TileRef.from_id(tile.tile_id, size=size, overlap=overlap, resolution=resolution) == tile
        assert tile.col >= 0 and tile.row >= 0
    minx, miny, maxx, maxy = area.bounds
    inner = shapely.box(minx, miny, (minx + maxx) / 2, (miny + maxy) / 2)
    sub = plan_tiles(inner, size=size, overlap=overlap, resolution=resolution)
    assert set(sub) <= set(first), "a sub-area's tiles are the same tiles, with the same ids"


@settings(max_examples=30, deadline=None)
@given(
    grid=grids,
    epsg=st.sampled_from([32601, 32631, 32660, 32701, 32733]),
    col=st.integers(0, 300),
    row=st.integers(0, 2800),
)
def test_neighbours_overlap_by_exactly_the_margin(grid, epsg: int, col: int, row: int) -> None:
    size, overlap, resolution = grid
    tile = TileRef(epsg, col, row, size, overlap, resolution)
    east = TileRef(epsg, col + 1, row, size, overlap, resolution)
    north = TileRef(epsg, col, row + 1, size, overlap, resolution)
    shared_x = shapely.box(*tile.bounds).intersection(shapely.box(*east.bounds))
    shared_y = shapely.box(*tile.bounds).intersection(shapely.box(*north.bounds))
    assert shared_x.bounds[2] - shared_x.bounds[0] == pytest.approx(overlap * resolution)
    assert shared_x.bounds[3] - shared_x.bounds[1] == pytest.approx(size[0] * resolution)
    assert shared_y.bounds[3] - shared_y.bounds[1] == pytest.approx(overlap * resolution)
    # The tile's pixel size includes the overlap, and cells tile the plane.
    assert tile.bounds[2] - tile.bounds[0] == pytest.approx(size[1] * resolution)
    assert tile.cell_bounds[2] == pytest.approx(east.cell_bounds[0])
    assert tile.cell_bounds[3] == pytest.approx(north.cell_bounds[1])


def test_zone_split_at_a_zone_border() -> None:
    # Straddles 6°E (zones 31 | 32) at 50°N, and the equator (north | south) at 9°E.
    area = shapely.box(5.8, 49.9, 6.2, 50.1)
    parts = split_by_zone(area)
    assert set(parts) == {32631, 32632}
    assert parts[32631].bounds[2] == pytest.approx(6.0) and parts[32632].bounds[0] == pytest.approx(6.0)
    tiles = plan_tiles(area)
    by_zone = {epsg: {t.tile_id for t in tiles if t.epsg == epsg} for epsg in (32631, 32632)}
    for lon in (5.81, 5.9, 5.999):
        assert owning_tile(lon, 50.0, (384, 768), 32, 10.0) in by_zone[32631]
    for lon in (6.001, 6.1, 6.19):
        assert owning_tile(lon, 50.0, (384, 768), 32, 10.0) in by_zone[32632]
    # No tile of a zone is planned for the other zone's side only.
    for tile in tiles:
        cell = to_lonlat(shapely.box(*tile.cell_bounds), tile.epsg)
        assert cell.intersects(parts[tile.epsg]), tile.tile_id
    assert utm_epsg(5.999, 50) == 32631 and utm_epsg(6.0, 50) == 32632
    equator = split_by_zone(shapely.box(9.0, -0.1, 9.2, 0.1))
    assert set(equator) == {32632, 32732}
    south = [t for t in plan_tiles(shapely.box(9.0, -0.1, 9.2, 0.1)) if t.epsg == 32732]
    assert south and all(t.row >= 0 for t in south)
    assert max(t.cell_bounds[3] for t in south) >= 10_000_000  # northings of the south zone near the equator


def test_plan_area_matches_the_area() -> None:
    belgium = load_area("2.5,49.5,6.4,51.5")
    tiles = plan_tiles(belgium)
    summary = summarize_plan(tiles)
    assert summary.n_tiles == len(tiles) and set(summary.zones) == {32631, 32632}
    projected = sum(to_utm(part, epsg).area for epsg, part in split_by_zone(belgium).items()) / 1e6
    perimeter_km = sum(to_utm(part, epsg).length for epsg, part in split_by_zone(belgium).items()) / 1e3
    cell_diagonal_km = math.hypot(3.52, 7.36)  # a 352×736 px cell at 10 m
    # The cells cover the area, and reach beyond it by less than one cell along its edges.
    assert projected <= summary.area_km2 <= projected + perimeter_km * cell_diagonal_km
    assert tiles[0].area_km2 == pytest.approx(3.52 * 7.36)


def test_geojson_draws_each_tile_where_it_is() -> None:
    tiles = plan_tiles("4.3,50.8,4.5,50.9")
    document = json.loads(json.dumps(tiles_geojson(tiles)))
    assert document["type"] == "FeatureCollection" and len(document["features"]) == len(tiles)
    for feature, tile in zip(document["features"], tiles, strict=True):
        assert feature["properties"]["tile_id"] == tile.tile_id == feature["id"]
        polygon = shapely.geometry.shape(feature["geometry"])
        cx = (tile.bounds[0] + tile.bounds[2]) / 2
        cy = (tile.bounds[1] + tile.bounds[3]) / 2
        lon, lat = pyproj.Transformer.from_crs(tile.epsg, 4326, always_xy=True).transform(cx, cy)
        assert polygon.contains(shapely.Point(lon, lat))
        assert polygon.area == pytest.approx(to_lonlat(shapely.box(*tile.bounds), tile.epsg).area)


# --- area input -------------------------------------------------------------------------------------------


def test_area_formats_agree(tmp_path: Path) -> None:
    bbox = load_area("4.0,50.0,4.2,50.1")
    wkt = load_area("POLYGON ((4 50, 4.2 50, 4.2 50.1, 4 50.1, 4 50))")
    assert bbox.equals(wkt)
    west, east = shapely.box(4.0, 50.0, 4.1, 50.1), shapely.box(4.1, 50.0, 4.2, 50.1)
    collection = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(west)},
            {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(east)},
        ],
    }
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps(collection))
    assert load_area(str(path)).equals(bbox)
    assert load_area(json.dumps(collection["features"][0])).equals(west)
    assert load_area(json.dumps(shapely.geometry.mapping(east))).equals(east)


def test_antimeridian_bbox_is_split_and_planned_on_both_sides() -> None:
    area = load_area("179.8,-16.2,-179.8,-16.0")  # Fiji: west edge east of the east edge (RFC 7946)
    assert area.geom_type == "MultiPolygon"
    zones = {t.epsg for t in plan_tiles(area)}
    assert zones == {32760, 32701}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("POLYGON ((0 50, 1 51, 1 50, 0 51, 0 50))", "invalid geometry .*Self-intersection"),
        ("POLYGON EMPTY", "empty"),
        ("0,84.5,1,85", "beyond UTM's -80..84"),
        ("0,-81,1,-80.5", "beyond UTM's -80..84"),
        ("POLYGON ((179 10, -179 10, -179 11, 179 11, 179 10))", "crosses the antimeridian"),
        ("181,10,182,11", "longitude 181.0 is outside"),
        ("1,11,2,10", "minlat 11.0 must be below maxlat"),
        ("POINT (4 50)", "not polygons"),
        ("no/such/area.geojson", "not an existing GeoJSON file"),
        ('{"type": "FeatureCollection", "features": []}', "no features"),
        ('{"type": "Polygon", "coordinates": [[[50, 4], [51, 4], [51, 95], [50, 4]]]}', "outside lon"),
        ("POLYGON ((0 0, 1 1", "does not parse"),
    ],
)
def test_area_errors_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(AreaError, match=message):
        plan_tiles(spec)


def test_geojson_errors_name_the_feature(tmp_path: Path) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 50], [1, 51], [1, 50], [0, 51], [0, 50]]]}
    good = shapely.geometry.mapping(shapely.box(0, 50, 1, 51))
    document = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": good},
            {"type": "Feature", "id": "field-7", "properties": {}, "geometry": bowtie},
        ],
    }
    path = tmp_path / "fields.geojson"
    path.write_text(json.dumps(document))
    with pytest.raises(AreaError, match=r"feature 1 \(id 'field-7'\): invalid geometry"):
        load_area(str(path))
    document["crs"] = {"type": "name", "properties": {"name": "EPSG:3857"}}
    document["features"] = document["features"][:1]
    path.write_text(json.dumps(document))
    with pytest.raises(AreaError, match=r"declares CRS 'EPSG:3857'.*ogr2ogr"):
        load_area(str(path))


# --- command line -----------------------------------------------------------------------------------------


def test_cli_prints_the_plan_and_geojson(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from campaign.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["tiles", "5.9,50.0,6.1,50.05", "--overlap", "16", "-o", str(tmp_path / "p.json")]
    )
    assert result.exit_code == 0, result.output
    tiles = plan_tiles("5.9,50.0,6.1,50.05", overlap=16)
    assert result.output.startswith(f"{len(tiles)} tiles, ")
    assert "EPSG:32631" in result.output and "EPSG:32632" in result.output
    assert tiles[0].tile_id in result.output
    saved = json.loads((tmp_path / "p.json").read_text())
    assert [f["id"] for f in saved["features"]] == [t.tile_id for t in tiles]
    geojson = runner.invoke(app, ["tiles", "5.9,50.0,6.1,50.05", "--overlap", "16", "--format", "geojson"])
    assert json.loads(geojson.output) == saved


def test_cli_reports_a_bad_area_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "campaign", "tiles", "0,85,1,86"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "latitudes 85.000..86.000 reach beyond UTM" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--overlap", "400"], "overlap 400 px must be >= 0 and less than half the tile size"),
        (["--tile-size", "384x768"], "option --tile-size: '384x768' must be HEIGHT,WIDTH"),
    ],
)
def test_cli_refuses_a_bad_grid(option: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from campaign.cli import app
    from tiler.errors import DeclouderError

    result = CliRunner().invoke(app, ["tiles", "4.3,50.8,4.5,50.9", *option])
    assert isinstance(result.exception, DeclouderError)
    assert message in str(result.exception)
