"""Benchmark: the campaign's control plane at scale (issue #13): the real driver, real Ray (local), the
real ledger and the real streaming mosaic over N planned tiles.

STAND-INS (labelled as such in the output too): the ingest and fit stages are replaced, so that the
machinery around them can be driven over tens of thousands of tiles on 2 CPU cores:
- *stand-in ingest*: copies one tiny real tile (16×16 px, 5 dates, cut from the committed WorldCereal
  sample, tests/data) onto the tile's pixels; no catalogue is read;
- *stand-in fit*: writes the ingested ``s2`` as ``s2_declouded`` (no network is trained).
Everything else is what a campaign runs: the plan (tiler.grid), the driver and its schedulers, Ray tasks
and actors, the ledger on local disk, the mosaic template written from the plan, one region task per
cell as soon as its reaching tiles are settled, finalize.

Printed per run (each run in its own process, so its peak RSS is its own):
- control plane per tile: the driver loop's busy time (everything but waiting in ``ray.wait``: dispatch,
  Ray submissions and ``ray.get``, waiting for a ledger write, progress) over the planned tiles, and its
  parts; and the ledger writer thread's time beside the loop (campaign.book: batches written in the
  background, one at a time);
- the slope of that figure between the smallest and the largest run (flat = no growth per tile);
- driver peak RSS; ledger bytes, files and writes; mosaic objects per zone;
- the mosaic tail: wall time from the last fit's result to the complete mosaic, as a share of the wall.
And, without Ray (``--plan-tiles``): time and peak RSS of planning N tiles and setting up the driver's
state for them from an empty ledger (what the driver holds before its first dispatch).

    python bench/scale.py --tiles 1000 10000 [--plan-tiles 350000] [--parts 256] [--json out.json]

``--parts N``: the CPU time of each stage's task body per tile, in one process without Ray or driver
(stand-in ingest, stand-in fit, the real region task), over a block of ≥ N tiles: with the wall time of a
run, where a tile's time goes besides the control plane.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

# Run as a script, this file's folder leads sys.path and this file's name would shadow the campaign package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from campaign.config import CampaignConfig, parse_config  # noqa: E402
from campaign.driver import CampaignDriver, OutputLayout, claim_output, new_run_id, plan_campaign  # noqa: E402
from campaign.ledger import Ledger, Stage  # noqa: E402
from campaign.workers import StageOutcome, StageWorkers, WorkerInfo, current_worker, run_stage  # noqa: E402
from tiler.grid import TileRef  # noqa: E402
from tiler.store import DECLOUDED, S2, make_tile, open_tile, write_tile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "worldcereal_31ues.zarr"
#: Tiny tiles: 16×16 px with 4 px overlap, 5 dates (as bench/campaign.py).
TILE_PX = 16
OVERLAP_PX = 4
DATES = 5
#: First of the sample's dates the tiles take (a run of mostly clear summer dates).
FIRST_DATE = 20
#: South-west tile (column, row) of the benchmark's block of the zone-31N grid (Belgium), as
#: bench/campaign.py; a 592×592 block (350,000 tiles) of 160 m cells still lies inside the zone.
ORIGIN = (4_800, 46_900)
EPSG = 32631
#: Ray CPUs of the embedded cluster: more than the machine's 2 cores, since the stand-in tasks are
#: short and mostly file I/O; the driver's own CPU time is what is measured.
RAY_CPUS = 4
#: Where the stand-ins find their template stores (set before Ray pickles them).
TEMPLATES: dict[str, str] = {}


def block(n: int) -> tuple[int, int]:
    """(columns, rows) of the near-square block of at least ``n`` cells."""
    side = math.ceil(math.sqrt(n))
    return side, math.ceil(n / side)


def area_wkt(cols: int, rows: int) -> str:
    """The block's cells as one lon/lat polygon, shrunk by 1 m so it meets no other cell."""
    import shapely
    from pyproj import Transformer

    first = TileRef(EPSG, ORIGIN[0], ORIGIN[1], (TILE_PX, TILE_PX), OVERLAP_PX)
    last = TileRef(EPSG, ORIGIN[0] + cols - 1, ORIGIN[1] + rows - 1, (TILE_PX, TILE_PX), OVERLAP_PX)
    minx, miny, _, _ = first.cell_bounds
    _, _, maxx, maxy = last.cell_bounds
    box = shapely.box(minx + 1.0, miny + 1.0, maxx - 1.0, maxy - 1.0)
    transformer = Transformer.from_crs(EPSG, 4326, always_xy=True)
    lonlat = shapely.transform(
        box.segmentize(100.0), lambda xy: np.column_stack(transformer.transform(*xy.T))
    )
    return str(lonlat.wkt)


def write_templates(folder: Path) -> tuple[str, str, list[str], tuple[str, str]]:
    """One real tiny tile as ingested and as 'fitted' by the stand-in; their bands and first/last day."""
    src = open_tile(str(SAMPLE)).isel(
        x=slice(0, TILE_PX), y=slice(0, TILE_PX), time=slice(FIRST_DATE, FIRST_DATE + DATES)
    )
    src = src.load()
    bands = [str(b) for b in src["band"].values]
    tile = make_tile(
        s2=src[S2].values,
        s1=src["s1"].values,
        mask=src["mask"].values,
        time=src["time"].values,
        s1_time=src["s1_time"].values,
        bands=bands,
        x=src["x"].values,
        y=src["y"].values,
        epsg=EPSG,
        tile_id="template",
    )
    ingested, fitted = folder / "ingested.zarr", folder / "fitted.zarr"
    write_tile(tile, str(ingested))
    write_tile(tile.assign({DECLOUDED: tile[S2]}), str(fitted))
    days = src["time"].values.astype("datetime64[D]")
    return str(ingested), str(fitted), bands, (str(days.min()), str(days.max()))


def place(template: str, tile: TileRef, url: str) -> zarr.Group:
    """Copy a template store onto ``tile``'s pixels (coordinates, transform, id); returns its group."""
    shutil.rmtree(url, ignore_errors=True)
    shutil.copytree(template, url)
    minx, _, _, maxy = tile.bounds
    res = tile.resolution
    group = zarr.open_group(url, mode="r+")
    group["x"][:] = minx + res * (np.arange(TILE_PX) + 0.5)
    group["y"][:] = maxy - res * (np.arange(TILE_PX) + 0.5)
    group["spatial_ref"].attrs["GeoTransform"] = f"{minx} {res} 0.0 {maxy} 0.0 {-res}"
    group.attrs["tile_id"] = tile.tile_id
    return group


def standin_ingest(tile: TileRef, out_url: str, ingest_config: Any, storage_options: Any) -> StageOutcome:
    """STAND-IN INGEST (benchmark only): the template tile copied onto the tile's pixels."""

    def work() -> dict[str, str]:
        place(TEMPLATES["ingested"], tile, out_url)  # the stand-in fit reads its s2 array only
        return {"stand_in": "ingest"}

    return run_stage(tile.tile_id, Stage.INGEST, current_worker(f"standin-ingest-{os.getpid()}"), work)


class StandInFit:
    """STAND-IN FIT actor (benchmark only): writes the ingested ``s2`` as ``s2_declouded``."""

    def __init__(self, name: str, options: Any, gpu_share: float) -> None:
        self._name = name

    def ready(self) -> WorkerInfo:
        return current_worker(self._name)

    def fit(self, tile_id: str, in_url: str, out_url: str, init_weights: str | None = None) -> StageOutcome:
        def work() -> dict[str, str]:
            standin_fit_store(tile_id, in_url, out_url)
            return {"stand_in": "fit"}

        return run_stage(tile_id, Stage.FIT, current_worker(self._name), work)


def standin_fit_store(tile_id: str, in_url: str, out_url: str) -> None:
    """The stand-in fit's store: the fitted template on the tile's pixels, the ingested ``s2`` in it."""
    warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
    source = zarr.open_group(in_url, mode="r")
    tile = TileRef.from_id(tile_id, size=(TILE_PX, TILE_PX), overlap=OVERLAP_PX)
    group = place(TEMPLATES["fitted"], tile, out_url)
    group[DECLOUDED][:] = source[S2][:]
    zarr.consolidate_metadata(out_url)


def config_for(
    folder: Path, n: int, bands: list[str], period: tuple[str, str], items: Path
) -> CampaignConfig:
    cols, rows = block(n)
    text = f"""
name = "scale"
area = "{area_wkt(cols, rows)}"
start = {period[0]}
end = {period[1]}
output = "out"
[catalog]
items = "{items}"
bands = {json.dumps(bands)}
[grid]
size = [{TILE_PX}, {TILE_PX}]
overlap = {OVERLAP_PX}
[fit]
preset = "smoke"
device = "cpu"
[resources]
cpus_per_fit = 0.25
fit_actors = 2
ingest_cpus = 0.25
ingest_concurrency = 8
mosaic_cpus = 0.25
[outputs]
quicklooks = false
stac = false
"""
    import tomllib

    return parse_config(tomllib.loads(text), base=folder)


def folder_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one_run(n: int, folder: Path) -> dict[str, Any]:
    """One campaign over the block of ≥ n tiles, in this process."""
    import ray

    from ingest.sample import write_sample_catalog

    ingested, fitted, bands, period = write_templates(folder)
    TEMPLATES.update(ingested=ingested, fitted=fitted)
    items = write_sample_catalog(folder / "catalog", copy_rasters=False)
    config = config_for(folder, n, bands, period, items)
    planning = time.perf_counter()
    tiles = plan_campaign(config)
    plan_s = time.perf_counter() - planning
    layout = OutputLayout(config.output)
    ledger = Ledger.open(layout.ledger)
    claim_output(ledger, config, tiles)
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, logging_level="WARNING")
    try:
        driver = CampaignDriver(
            config,
            tiles,
            ledger,
            run_id=new_run_id(),
            workers=StageWorkers(ingest=standin_ingest, fit_actor=StandInFit),
        )
        report = driver.run(connect=lambda: False)
    finally:
        ray.shutdown()
    if report.tiles_done != len(tiles) or report.mosaics_incomplete:
        raise RuntimeError(f"benchmark campaign incomplete: {report.failed[:3]} {report.mosaics_incomplete}")
    run = Ledger.open(layout.ledger).runs()[-1]
    zones = ledger.zones()
    mosaic_done = max(z.finished for z in zones.values())
    wall = report.wall_seconds
    assert driver.last_fit_at is not None
    tail = mosaic_done - driver.last_fit_at
    ledger_files, ledger_bytes = folder_size(Path(layout.ledger))
    objects = {epsg: folder_size(Path(layout.mosaic(epsg)))[0] for epsg in zones}
    busy = run.driver_busy_seconds
    return {
        "tiles": len(tiles),
        "plan_s": plan_s,
        "wall_s": wall,
        "control_ms_per_tile": 1000 * busy / len(tiles),
        "ray_ms_per_tile": 1000 * driver.ray_seconds / len(tiles),
        "ledger_ms_per_tile": 1000 * run.ledger_seconds / len(tiles),
        "ledger_wait_ms_per_tile": 1000 * run.ledger_wait_seconds / len(tiles),
        "ledger_writes": driver.book.ledger_writes,
        "ledger_files": ledger_files,
        "ledger_bytes": ledger_bytes,
        "mosaic_objects_per_zone": objects,
        "tail_s": tail,
        "tail_share": tail / wall,
        "peak_rss_mb": peak_rss_mb(),
    }


def plan_only(n: int, folder: Path) -> dict[str, Any]:
    """Plan ≥ n tiles and set up the driver's state for them from an empty ledger (no Ray, nothing fitted)."""
    from ingest.sample import write_sample_catalog

    items = write_sample_catalog(folder / "catalog", copy_rasters=False)
    config = config_for(folder, n, ["B02", "B03", "B04", "B08"], ("2019-06-01", "2019-06-30"), items)
    started = time.perf_counter()
    tiles = plan_campaign(config)
    planned = time.perf_counter()
    ledger = Ledger.open(OutputLayout(config.output).ledger)
    driver = CampaignDriver(config, tiles, ledger, run_id=new_run_id())
    driver._resume()  # what run() does before connecting to Ray: queues, states, mosaic countdowns
    ended = time.perf_counter()
    return {
        "tiles": len(tiles),
        "plan_s": planned - started,
        "driver_setup_s": ended - planned,
        "queued": len(driver.ingest.queue),
        "peak_rss_mb": peak_rss_mb(),
    }


def parts(n: int, folder: Path) -> dict[str, Any]:
    """CPU seconds per tile of each stage's task body, in this one process (no Ray, no driver): the
    stand-in ingest, the stand-in fit, and the real region task of each cell (``write_mosaic_region``)
    over the block of ≥ n tiles. What a tile costs besides the control plane and Ray's own overhead."""
    from campaign.mosaics import reaching
    from ingest.sample import write_sample_catalog
    from tiler.mosaic import init_mosaic_template, write_mosaic_region

    ingested, fitted, bands, period = write_templates(folder)
    TEMPLATES.update(ingested=ingested, fitted=fitted)
    items = write_sample_catalog(folder / "catalog", copy_rasters=False)
    config = config_for(folder, n, bands, period, items)
    tiles = plan_campaign(config)
    layout = OutputLayout(config.output)
    ids = {t.tile_id for t in tiles}
    cpu = {"ingest": 0.0, "fit": 0.0, "region": 0.0}
    started = time.process_time()
    for tile in tiles:
        place(ingested, tile, layout.ingested(tile.tile_id))
    cpu["ingest"] = time.process_time() - started
    started = time.process_time()
    for tile in tiles:
        standin_fit_store(tile.tile_id, layout.ingested(tile.tile_id), layout.fitted(tile.tile_id))
    cpu["fit"] = time.process_time() - started
    url = layout.mosaic(tiles[0].epsg)
    days = tuple(str(d) for d in open_tile(fitted)["time"].values.astype("datetime64[D]"))
    grid = config.grid
    init_mosaic_template(
        url, sorted(ids), days, bands, size=grid.size, overlap=grid.overlap, resolution=grid.resolution
    )
    started = time.process_time()
    for tile in tiles:
        near = {r.tile_id: layout.fitted(r.tile_id) for r in reaching(tile) if r.tile_id in ids}
        write_mosaic_region(url, tile.tile_id, near)
    cpu["region"] = time.process_time() - started
    return {"tiles": len(tiles), **{f"{k}_ms_per_tile": 1000 * v / len(tiles) for k, v in cpu.items()}}


def in_subprocess(flag: str, n: int) -> dict[str, Any]:
    """One run in a process of its own; its folder is deleted in the background (many small files)."""
    tmp = tempfile.mkdtemp(prefix="bench-scale-")
    try:
        out = Path(tmp) / "result.json"
        subprocess.run(
            [sys.executable, __file__, flag, str(n), "--result", str(out), "--folder", tmp], check=True
        )
        result: dict[str, Any] = json.loads(out.read_text())
        return result
    finally:
        subprocess.Popen(["nice", "rm", "-rf", tmp])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, nargs="*", default=[1000])
    parser.add_argument("--plan-tiles", type=int, nargs="*", default=[])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--plan-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--parts",
        type=int,
        default=0,
        help="also time each stage's task body per tile in one process, over this many tiles (no Ray)",
    )
    parser.add_argument("--parts-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or args.plan_one or args.parts_one:
        os.chdir(args.folder)
        if args.parts_one:
            result = parts(args.parts_one, args.folder)
        else:
            result = one_run(args.one, args.folder) if args.one else plan_only(args.plan_one, args.folder)
        args.result.write_text(json.dumps(result))
        return

    print("STAND-IN stages: ingest copies a tiny real tile, fit writes the ingested s2 as s2_declouded")
    print(f"tiles {TILE_PX}x{TILE_PX} px, {OVERLAP_PX} px overlap, {DATES} dates; Ray local, {RAY_CPUS} CPUs")
    runs = []
    header = (
        "tiles",
        "wall s",
        "ctrl ms/tile",
        "Ray ms/tile",
        "ledger wait ms/tile",
        "ledger write ms/tile (beside)",
        "RSS MB",
        "ledger writes",
        "ledger files",
        "ledger MB",
        "mosaic objects",
        "tail s",
        "tail % wall",
    )
    if args.tiles:
        print(" | ".join(header))
    for n in args.tiles:
        r = in_subprocess("--one", n)
        runs.append(r)
        row = (
            f"{r['tiles']}",
            f"{r['wall_s']:.0f}",
            f"{r['control_ms_per_tile']:.2f}",
            f"{r['ray_ms_per_tile']:.2f}",
            f"{r['ledger_wait_ms_per_tile']:.2f}",
            f"{r['ledger_ms_per_tile']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['ledger_writes']}",
            f"{r['ledger_files']}",
            f"{r['ledger_bytes'] / 1e6:.1f}",
            " ".join(f"{v} (EPSG:{k})" for k, v in r["mosaic_objects_per_zone"].items()),
            f"{r['tail_s']:.1f}",
            f"{100 * r['tail_share']:.2f}",
        )
        print(" | ".join(row), flush=True)
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        slope = (b["control_ms_per_tile"] - a["control_ms_per_tile"]) / (b["tiles"] - a["tiles"])
        ratio = b["control_ms_per_tile"] / a["control_ms_per_tile"]
        print(
            f"control plane slope {a['tiles']} -> {b['tiles']} tiles: {1000 * slope:+.4f} ms/tile per "
            f"1,000 more tiles ({ratio:.2f}x the per-tile time of the smallest run)"
        )
    plans = []
    for n in args.plan_tiles:
        p = in_subprocess("--plan-one", n)
        plans.append(p)
        setup, rss = p["driver_setup_s"], p["peak_rss_mb"]
        print(
            f"plan only (no Ray, empty ledger), {p['tiles']} tiles: plan {p['plan_s']:.1f} s, "
            f"driver state {setup:.1f} s, driver peak RSS {rss:.0f} MB",
            flush=True,
        )
    pieces = None
    if args.parts:
        pieces = in_subprocess("--parts-one", args.parts)
        print(
            f"task bodies, CPU ms per tile, one process without Ray ({pieces['tiles']} tiles): stand-in "
            f"ingest {pieces['ingest_ms_per_tile']:.1f}, stand-in fit {pieces['fit_ms_per_tile']:.1f}, "
            f"region (real) {pieces['region_ms_per_tile']:.1f}",
            flush=True,
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end: {load} on {os.cpu_count()} CPUs (other processes share them)")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "plans": plans, "parts": pieces}, indent=2))


if __name__ == "__main__":
    main()
