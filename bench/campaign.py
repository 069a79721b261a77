"""Benchmark: the campaign driver's own cost per tile, and throughput with 1 and 2 fit workers.

Runs the real driver (`campaign.driver.run_campaign`) on an embedded Ray over N ≥ 1,000 tiny real tiles
(16×16 px, 5 dates, cut from the committed WorldCereal sample and placed on the grid), each fitted by a real
fit actor with the `smoke` preset on CPU, then mosaicked by real Ray tasks. The tiles are pre-ingested
(written once and recorded as ingested in each run's ledger): ingest reads a catalogue per tile and is
benchmarked by bench/ingest.py; here only what the driver does around each tile is measured.

Printed per run (1 and 2 fit workers):
- driver busy time (the loop's time outside ``ray.wait``: dispatch, results, waiting for a ledger write,
  progress) per tile and as a share of the wall time;
- the fit actors' idle gaps between consecutive fits (what a GPU would wait for the driver) per tile and
  as a share of the actors' time;
- throughput in tiles per second over the fit phase, and the ratio of 2 workers to 1;
- the per-tile wall time of the campaign against a baseline run in this same process: the same fits as
  a plain loop of ``fit.fit_tile`` calls (no Ray, no ledger).

    python bench/campaign.py [--tiles 1000] [--baseline-tiles 50]

On 2 CPU cores, 1,000 tiles take about 15-20 minutes in all.

With ``--cadence 10D`` each worker count runs twice on the same pre-ingested tiles, without and then
with a regular calendar beside the mosaic (``[outputs] cadence``), and prints the wall-time ratio: what
the calendar adds to a campaign (the calendar is computed inside each mosaic region task).

    python bench/campaign.py --tiles 200 --workers 1 --baseline-tiles 0 --cadence 10D [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

# Run as a script, this file's folder leads sys.path and this file's name would shadow the campaign package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from campaign.config import parse_config  # noqa: E402
from campaign.driver import OutputLayout, run_campaign  # noqa: E402
from campaign.ledger import Attempt, Ledger, Stage, TileRecord, TileState  # noqa: E402
from tiler.grid import TileRef  # noqa: E402
from tiler.store import S2, make_tile, open_tile, write_tile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "worldcereal_31ues.zarr"
#: Tiny tiles: 16×16 px with 4 px overlap, 5 dates, so a smoke fit takes well under a second here.
TILE_PX = 16
OVERLAP_PX = 4
DATES = 5
#: First of the sample's dates the tiles take (2018-12-07 .. 2019-01-01).
FIRST_DATE = 20
#: The campaigns' period: a year holding the tiles' dates (the mosaic's day axis; a calendar's steps).
PERIOD = ("2018-12-01", "2019-11-30")
#: South-west tile (column, row) of the benchmark's block of the zone-31N grid: near the sample site
#: in Belgium (x 576 km, y 5,628 km), so the planned area stays inside the zone.
ORIGIN = (4_800, 46_900)
EPSG = 32631


def grid_tiles(n: int) -> list[TileRef]:
    side = math.ceil(math.sqrt(n))
    return [
        TileRef(EPSG, ORIGIN[0] + i % side, ORIGIN[1] + i // side, (TILE_PX, TILE_PX), OVERLAP_PX)
        for i in range(n)
    ]


def area_wkt(tiles: list[TileRef]) -> str:
    """The tiles' cells as one lon/lat polygon (a staircase when the last row is short)."""
    import shapely
    from pyproj import Transformer

    # Shrunk by 1 m: the area's interior meets exactly these cells, not the neighbours they touch.
    cells = shapely.union_all([shapely.box(*t.cell_bounds) for t in tiles]).buffer(-1.0, join_style="mitre")
    transformer = Transformer.from_crs(EPSG, 4326, always_xy=True)
    lonlat = shapely.transform(
        cells.segmentize(100.0), lambda xy: np.column_stack(transformer.transform(*xy.T))
    )
    return lonlat.wkt


def template_tile(folder: Path) -> Path:
    """One real tiny tile, written once; the campaign's tiles are copies with their own coordinates."""
    src = open_tile(str(SAMPLE)).isel(
        x=slice(0, TILE_PX), y=slice(0, TILE_PX), time=slice(FIRST_DATE, FIRST_DATE + DATES)
    )
    src = src.load()
    tile = make_tile(
        s2=src[S2].values,
        s1=src["s1"].values,
        mask=src["mask"].values,
        time=src["time"].values,
        s1_time=src["s1_time"].values,
        bands=[str(b) for b in src["band"].values],
        x=src["x"].values,
        y=src["y"].values,
        epsg=EPSG,
        tile_id="template",
    )
    path = folder / "template.zarr"
    write_tile(tile, str(path))
    return path


def place(template: Path, tile: TileRef, url: str) -> None:
    """Copy the template store and move it onto ``tile``'s pixels (coordinates, transform, id)."""
    shutil.copytree(template, url)
    minx, _, _, maxy = tile.bounds
    res = tile.resolution
    group = zarr.open_group(url, mode="r+")
    group["x"][:] = minx + res * (np.arange(TILE_PX) + 0.5)
    group["y"][:] = maxy - res * (np.arange(TILE_PX) + 0.5)
    ref = group["spatial_ref"]
    ref.attrs["GeoTransform"] = f"{minx} {res} 0.0 {maxy} 0.0 {-res}"
    group.attrs["tile_id"] = tile.tile_id
    zarr.consolidate_metadata(url)


def prepare(out: Path, tiles: list[TileRef], shared_tiles: Path, config_text: str) -> Path:
    """An output folder whose ledger says every tile is ingested, its tiles/ shared between runs."""
    out.mkdir(parents=True)
    (out / "tiles").symlink_to(shared_tiles, target_is_directory=True)
    ledger = Ledger.open(str(out / "ledger"))
    now = time.time()
    for tile in tiles:
        ingest = Attempt(
            stage=Stage.INGEST, number=1, run_id="prepared", started=now, ended=now, outcome="ok"
        )
        ledger.put(
            TileRecord(tile_id=tile.tile_id, epsg=tile.epsg, area_km2=tile.area_km2).record(
                ingest, state=TileState.INGESTED
            )
        )
    path = out / "campaign.toml"
    path.write_text(config_text)
    return path


def config_text(area: str, items: Path, workers: int, cadence: str | None = None) -> str:
    calendar = f'cadence = "{cadence}"\n' if cadence else ""
    # The mosaic's bands are the ingest bands (fixed with the template): the sample's, as the tiles have.
    bands = json.dumps([str(b) for b in open_tile(str(SAMPLE))["band"].values])
    return f"""
name = "bench"
area = "{area}"
start = {PERIOD[0]}
end = {PERIOD[1]}
output = "."
[catalog]
items = "{items}"
bands = {bands}
[grid]
size = [{TILE_PX}, {TILE_PX}]
overlap = {OVERLAP_PX}
[fit]
preset = "smoke"
device = "cpu"
[resources]
cpus_per_fit = 0.5
fit_actors = {workers}
mosaic_cpus = 0.5
[outputs]
quicklooks = false
stac = false
{calendar}"""


def idle_gaps(ledger: Ledger) -> tuple[list[float], float]:
    """Per fit actor, the gaps between one fit's end and its next fit's start; and the actors' busy time."""
    by_actor: dict[str, list[Attempt]] = {}
    for record in ledger:
        for attempt in record.attempts:
            if attempt.stage == Stage.FIT and attempt.outcome == "ok" and attempt.worker:
                by_actor.setdefault(attempt.worker, []).append(attempt)
    gaps: list[float] = []
    busy = 0.0
    for attempts in by_actor.values():
        attempts.sort(key=lambda a: a.started)
        busy += sum(a.seconds for a in attempts)
        gaps += [b.started - a.ended for a, b in itertools.pairwise(attempts)]
    return gaps, busy


def run(
    workers: int,
    tiles: list[TileRef],
    shared: Path,
    area: str,
    items: Path,
    folder: Path,
    cadence: str | None = None,
    tag: str = "",
) -> dict[str, float]:
    out = folder / f"run-{workers}{'-' + cadence if cadence else ''}{'-' + tag if tag else ''}"
    path = prepare(out, tiles, shared, config_text(area, items, workers, cadence))
    config = parse_config(_toml(path), base=out)
    started = time.perf_counter()
    report = run_campaign(config)
    wall = time.perf_counter() - started
    assert report.tiles_done == len(tiles), report.failed[:3]
    ledger = Ledger.open(OutputLayout(config.output).ledger)
    run_record = ledger.runs()[-1]
    gaps, busy = idle_gaps(ledger)
    fits = [a for r in ledger for a in r.attempts if a.stage == Stage.FIT and a.outcome == "ok"]
    first_fit, last_fit = min(a.started for a in fits), max(a.ended for a in fits)
    fit_span = last_fit - first_fit
    n = len(tiles)
    regions = [a.seconds for r in ledger for a in r.attempts if a.stage == Stage.MOSAIC and a.outcome == "ok"]
    return {
        # Median seconds of a mosaic region task (from the ledger: the task's own start and end).
        "region_s_median": statistics.median(regions) if regions else float("nan"),
        "region_s_total": sum(regions),
        "workers": workers,
        "tiles": n,
        "wall_s": wall,
        # Ray start-up, fit actors' start (torch import), the ledger read: before the first fit.
        "startup_s": first_fit - report.started,
        "fit_phase_s": fit_span,
        # The zone's mosaic (template, one task per cell, finalize) after the last fit.
        "mosaic_s": report.ended - last_fit,
        "fit_s_per_tile": busy / n,
        "throughput_tiles_per_s": n / fit_span,
        "driver_busy_s": run_record.driver_busy_seconds,
        "driver_busy_ms_per_tile": 1000 * run_record.driver_busy_seconds / n,
        "driver_busy_share": run_record.driver_busy_seconds / wall,
        "ledger_ms_per_tile": 1000 * run_record.ledger_seconds / n,
        "ledger_wait_ms_per_tile": 1000 * run_record.ledger_wait_seconds / n,
        "actor_gap_ms_per_tile": 1000 * statistics.fmean(gaps) if gaps else 0.0,
        "actor_idle_share": sum(gaps) / (sum(gaps) + busy),
        "wall_s_per_tile": wall / n,
    }


def _toml(path: Path) -> dict[str, object]:
    import tomllib

    return tomllib.loads(path.read_text())


def baseline(template: Path, tiles: list[TileRef], folder: Path) -> float:
    """Seconds per tile of the same fits as a plain in-process loop (no Ray, no ledger, no mosaic)."""
    import torch

    from fit import fit_tile

    torch.set_num_threads(1)  # what a fit actor holding half a CPU gets (Ray sets OMP_NUM_THREADS=1)
    fit_tile(str(template), str(folder / "warm.zarr"), preset="smoke", device="cpu")  # torch warm-up
    started = time.perf_counter()
    for tile in tiles:
        fit_tile(
            str(folder / "ingested" / f"{tile.tile_id}.zarr"),
            str(folder / "baseline" / f"{tile.tile_id}.zarr"),
            preset="smoke",
            device="cpu",
        )
    return (time.perf_counter() - started) / len(tiles)


#: Attempts at starting Ray: its node start-up gives up after 30 s, which a machine loaded by other
#: processes can exceed.
RAY_START_ATTEMPTS = 3


def start_ray() -> None:
    """One embedded Ray for every run of this process (the campaigns join it instead of each starting
    their own), so the runs compared share the same cluster."""
    import logging

    import ray

    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
            return
        except Exception as err:  # Ray raises a bare Exception when its node start-up times out
            if attempt == RAY_START_ATTEMPTS or "timed out during startup" not in str(err):
                raise
            ray.shutdown()
            print(f"Ray start-up timed out (attempt {attempt}); trying again")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--baseline-tiles", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--cadence", help="also run each worker count with this calendar cadence (e.g. 10D) and compare"
    )
    parser.add_argument("--repeats", type=int, default=1, help="with --cadence: runs of each kind")
    args = parser.parse_args()

    from ingest.sample import write_sample_catalog

    folder = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    try:
        tiles = grid_tiles(args.tiles)
        area = area_wkt(tiles)
        items = write_sample_catalog(folder / "catalog", copy_rasters=False)
        template = template_tile(folder)
        shared = folder / "ingested"
        shared.mkdir()
        prep = time.perf_counter()
        for tile in tiles:
            place(template, tile, str(shared / f"{tile.tile_id}.zarr"))
        print(
            f"prepared {len(tiles)} tiles of {TILE_PX}x{TILE_PX} px, {DATES} dates in "
            f"{time.perf_counter() - prep:.0f} s"
        )

        start_ray()
        base = float("nan")
        if args.baseline_tiles > 0:
            base = baseline(template, tiles[: args.baseline_tiles], folder)
            print(f"baseline: plain fit_tile loop, {args.baseline_tiles} tiles: {base:.3f} s per tile")
        results = []
        calendars = []
        for workers in args.workers:
            result = run(workers, tiles, shared, area, items, folder)
            result["baseline_s_per_tile"] = base
            results.append(result)
            r = result
            print(
                f"{workers} worker(s): wall {r['wall_s']:.0f} s ({r['wall_s_per_tile']:.3f} s/tile, "
                f"{r['wall_s_per_tile'] / base:.2f}x the baseline): start-up {r['startup_s']:.0f} s, "
                f"fit phase {r['fit_phase_s']:.0f} s ({r['throughput_tiles_per_s']:.2f} tiles/s), "
                f"mosaic {r['mosaic_s']:.0f} s; region tasks {r['region_s_total']:.1f} s in all "
                f"(median {1000 * r['region_s_median']:.0f} ms)"
            )
            if args.cadence:
                # Balanced order (without, with, with, without, without, with, ...; the first run
                # without is the one above), so a drift of the machine's load falls on both sides.
                plain, with_calendar = [r], []
                for rep in range(1, 2 * args.repeats):
                    cadence = args.cadence if rep % 4 in (1, 2) else None
                    c = run(workers, tiles, shared, area, items, folder, cadence=cadence, tag=str(rep))
                    if cadence:
                        c["cadence"] = cadence  # type: ignore[assignment]
                        with_calendar.append(c)
                        calendars.append(c)
                    else:
                        plain.append(c)
                    print(
                        f"{workers} worker(s) {'with a ' + cadence + ' calendar' if cadence else 'without'}: "
                        f"wall {c['wall_s']:.1f} s, fit phase {c['fit_phase_s']:.1f} s, mosaic tail after "
                        f"the last fit {c['mosaic_s']:.1f} s, region tasks {c['region_s_total']:.1f} s "
                        f"in all (median {1000 * c['region_s_median']:.0f} ms)"
                    )
                on = statistics.fmean(c["wall_s"] for c in with_calendar)
                off = statistics.fmean(c["wall_s"] for c in plain)
                on_regions = statistics.fmean(c["region_s_total"] for c in with_calendar)
                off_regions = statistics.fmean(c["region_s_total"] for c in plain)
                print(
                    f"{workers} worker(s): {args.cadence} calendar against none, {len(with_calendar)} and "
                    f"{len(plain)} runs: mean wall {on:.1f} s / {off:.1f} s = {on / off:.3f}x; mean region "
                    f"task time in all {on_regions:.1f} s / {off_regions:.1f} s = "
                    f"{on_regions / off_regions:.3f}x"
                )
            print(
                f"   driver busy {r['driver_busy_ms_per_tile']:.1f} ms/tile "
                f"({100 * r['driver_busy_share']:.1f} % of wall; "
                f"of which waiting for ledger writes {r['ledger_wait_ms_per_tile']:.1f} ms/tile; "
                f"ledger writes beside the loop {r['ledger_ms_per_tile']:.1f} ms/tile); "
                f"actors idle between fits {r['actor_gap_ms_per_tile']:.0f} ms/tile "
                f"({100 * r['actor_idle_share']:.1f} % of actor time); fit {r['fit_s_per_tile']:.3f} s/tile"
            )
        if len(results) >= 2:
            ratio = results[1]["throughput_tiles_per_s"] / results[0]["throughput_tiles_per_s"]
            print(f"throughput {results[1]['workers']} vs {results[0]['workers']} workers: {ratio:.2f}x")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average at the end: {load} on {os.cpu_count()} CPUs (other processes share them)")
        if args.json:
            # The calendar runs carry their "cadence"; the others do not.
            args.json.write_text(json.dumps(results + calendars, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
