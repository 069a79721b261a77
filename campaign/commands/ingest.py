"""`declouder ingest`: one tile's paired S1/S2 time series from a STAC catalogue into a tile store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import cast

import typer

from ingest.catalogs import PLANETARY_COMPUTER_URL, S2_L2A_BANDS
from ingest.config import (
    DEFAULT_MASK_DILATION_PX,
    DEFAULT_RETRIES,
    DEFAULT_S1_WINDOW_DAYS,
    IngestConfig,
    S1Orbit,
    TileBox,
)
from ingest.errors import IngestConfigError
from tiler.grid import DEFAULT_OVERLAP, DEFAULT_RESOLUTION, DEFAULT_TILE_SIZE, TileRef


def _numbers(text: str, count: int, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise IngestConfigError(f"option {option}: {text!r} must be {count} comma-separated numbers")
    return values


def _target(
    tile: str | None, bounds: str | None, epsg: int | None, tile_size: str, overlap: int, resolution: float
) -> TileRef | TileBox:
    if (tile is None) == (bounds is None):
        raise IngestConfigError("give either --tile TILE_ID or --bounds MINX,MINY,MAXX,MAXY with --epsg")
    if tile is not None:
        height, width = (int(v) for v in _numbers(tile_size, 2, "--tile-size"))
        try:
            return TileRef.from_id(tile, size=(height, width), overlap=overlap, resolution=resolution)
        except ValueError as err:
            raise IngestConfigError(f"option --tile: {err}") from err
    if epsg is None:
        raise IngestConfigError("option --bounds needs --epsg (the UTM zone the bounds are in, e.g. 32631)")
    return TileBox(epsg, _numbers(bounds or "", 4, "--bounds"), resolution)  # type: ignore[arg-type]


def ingest(
    out: str = typer.Option(
        ..., "--out", help="Tile store to write (path or fsspec URL, e.g. s3://b/t.zarr)."
    ),
    start: str = typer.Option(..., "--start", help="First day, YYYY-MM-DD."),
    end: str = typer.Option(..., "--end", help="Last day (included), YYYY-MM-DD."),
    tile: str | None = typer.Option(None, "--tile", help="Grid tile id, e.g. 32631_c0078_r1597."),
    bounds: str | None = typer.Option(None, "--bounds", help="MINX,MINY,MAXX,MAXY in metres of --epsg."),
    epsg: int | None = typer.Option(None, "--epsg", help="EPSG code of --bounds (a UTM zone)."),
    catalog: str = typer.Option(
        PLANETARY_COMPUTER_URL, "--catalog", help="STAC API URL or ItemCollection file."
    ),
    s1_catalog: str | None = typer.Option(
        None, "--s1-catalog", help="Catalogue for S1 (default: --catalog)."
    ),
    profile: str = typer.Option(
        "auto", "--profile", help="Catalogue conventions: auto, planetary-computer, earth-search."
    ),
    s2_collection: str | None = typer.Option(None, "--s2-collection", help="S2 L2A collection id."),
    s1_collection: str | None = typer.Option(None, "--s1-collection", help="S1 collection id."),
    bands: str = typer.Option(",".join(S2_L2A_BANDS), "--bands", help="S2 bands, comma-separated."),
    max_cloud: float = typer.Option(
        100.0, "--max-cloud", help="Skip items with eo:cloud_cover above this (%)."
    ),
    s1_window: float = typer.Option(DEFAULT_S1_WINDOW_DAYS, "--s1-window", help="S1 pairing window, ± days."),
    s1_orbit: str = typer.Option("auto", "--s1-orbit", help="auto, ascending or descending."),
    cloud_mask: str = typer.Option(
        "scl", "--cloud-mask", help="scl, or fallback for catalogues without SCL."
    ),
    dilation: int = typer.Option(DEFAULT_MASK_DILATION_PX, "--dilation", help="Grow clouds/shadows by N px."),
    refine_bright: bool = typer.Option(
        True, "--refine-bright/--no-refine-bright", help="Re-mark bright clear pixels as cloud."
    ),
    resampling: str = typer.Option(
        "nearest", "--resampling", help="20/60 m bands to 10 m: nearest, bilinear, cubic, average."
    ),
    retries: int = typer.Option(DEFAULT_RETRIES, "--retries", help="Retries of failed requests and reads."),
    tile_size: str = typer.Option(
        ",".join(map(str, DEFAULT_TILE_SIZE)), "--tile-size", help="HEIGHT,WIDTH px of --tile."
    ),
    overlap: int = typer.Option(DEFAULT_OVERLAP, "--overlap", help="Overlap px of --tile's grid."),
    resolution: float = typer.Option(DEFAULT_RESOLUTION, "--resolution", help="Pixel size in metres."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
) -> None:
    """Search a STAC catalogue, pair S1 with S2 and write one tile store (see docs/ingest.md)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from campaign.cli import console
    from ingest import ProgressEvent, ingest_tile

    target = _target(tile, bounds, epsg, tile_size, overlap, resolution)
    config = IngestConfig(
        # IngestConfig parses ISO date strings and checks the orbit itself (__post_init__).
        start=cast(dt.date, start),
        end=cast(dt.date, end),
        catalog=catalog,
        s1_catalog=s1_catalog,
        profile=profile,  # type: ignore[arg-type]
        s2_collection=s2_collection,
        s1_collection=s1_collection,
        bands=tuple(b.strip() for b in bands.split(",") if b.strip()),
        max_cloud=max_cloud,
        s1_window_days=s1_window,
        s1_orbit=cast(S1Orbit, s1_orbit),
        cloud_mask=cloud_mask,  # type: ignore[arg-type]
        mask_dilation_px=dilation,
        refine_bright=refine_bright,
        resampling=resampling,  # type: ignore[arg-type]
        retries=retries,
    )
    if not out.startswith(("s3://", "gs://", "az://", "memory://")) and "://" not in out:
        out = str(Path(out))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(event: ProgressEvent) -> None:
            if event.step not in tasks:
                tasks[event.step] = bars.add_task(event.step, total=event.total)
            bars.update(
                tasks[event.step],
                completed=event.done,
                total=event.total,
                description=f"{event.step}: {event.info}"[:60],
            )

        summary = ingest_tile(target, out, config, overwrite=overwrite, progress=progress)
    typer.echo(summary.table())


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
