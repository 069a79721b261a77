"""Campaign test data: the committed real sample as an offline catalogue, and campaign configs over it.

The sample (WorldCereal 31UES, Belgium, spring/summer 2019; tests/data/SOURCE.txt "stac/") becomes an
ItemCollection of local COGs (``ingest.sample.write_sample_catalog``); the test campaigns cover it with
2×2 tiles of 64×64 px, small enough that real ``smoke`` fits take seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer

from tiler.grid import TileRef

#: Grid of the test campaigns: 64×64 px tiles with 8 px overlap.
TILE_PX = 64
OVERLAP_PX = 8
#: The 2×2 tiles of the test campaigns (zone 31N) over the sample site.
TILE_COLS = (1026, 1027)
TILE_ROWS = (10039, 10040)
#: An area is its tiles' cells shrunk by this much (metres), so that it meets no other cell.
SHRINK_M = 50.0
#: 6 S2 dates (2019-03-22..2019-04-21): smoke fits of 2 windows take a few seconds each here.
PERIOD = ("2019-03-22", "2019-04-22")
#: 2 dates (2019-04-26, 2019-05-01) on which tile 32631_c1027_r10040 has no clear pixel after ingest's
#: and the fit's mask refinement (real clouds), while the other three tiles keep 40 to 1,800 clear ones.
CLOUDY_PERIOD = ("2019-04-24", "2019-05-03")
POISON_TILE = "32631_c1027_r10040"


def area_of(epsg: int, cols: tuple[int, ...], rows: tuple[int, ...]) -> str:
    """A lon/lat WKT polygon whose interior meets exactly the cells of these grid tiles."""
    cells = [TileRef(epsg, c, r, (TILE_PX, TILE_PX), OVERLAP_PX).cell_bounds for c in cols for r in rows]
    block = shapely.box(*shapely.MultiPolygon([shapely.box(*c) for c in cells]).bounds).buffer(-SHRINK_M)
    transformer = Transformer.from_crs(epsg, 4326, always_xy=True)
    area = shapely.transform(
        block.segmentize(100.0), lambda xy: np.column_stack(transformer.transform(*xy.T))
    )
    return str(area.wkt)


def sample_catalog(
    folder: Path, *, cols: tuple[int, ...] = TILE_COLS, rows: tuple[int, ...] = TILE_ROWS
) -> dict[str, Any]:
    """Write the sample catalogue under ``folder``; return what a config needs (items, area, bands)."""
    from ingest.sample import load_site, write_sample_catalog

    site = load_site()
    items = write_sample_catalog(folder)
    return {"items": items, "area": area_of(site.epsg, cols, rows), "bands": list(site.bands)}


def write_config(
    folder: Path,
    sample: dict[str, Any],
    *,
    period: tuple[str, str] = PERIOD,
    fit_actors: int | None = None,
    output: str = "out",
    top: str = "",
    extra: str = "",
    warm_start: bool = False,
) -> Path:
    """A campaign config over the sample: smoke fits, 0.5 GPU per fit, small CPU shares for 2 cores."""
    folder.mkdir(parents=True, exist_ok=True)
    actors = f"fit_actors = {fit_actors}\n" if fit_actors else ""
    text = f"""
name = "test"
area = "{sample["area"]}"
start = {period[0]}
end = {period[1]}
output = "{output}"
{top}

[catalog]
items = "{sample["items"]}"
bands = {json.dumps(sample["bands"])}

[grid]
size = [{TILE_PX}, {TILE_PX}]
overlap = {OVERLAP_PX}

[fit]
preset = "smoke"
warm_start = {json.dumps(warm_start)}

[resources]
gpus_per_fit = 0.5
cpus_per_fit = 0.25
ingest_cpus = 0.5
ingest_concurrency = 2
{actors}
[retries]
fit = 3
{extra}
"""
    path = folder / "campaign.toml"
    path.write_text(text)
    return path
