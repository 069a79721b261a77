"""`declouder tiles` (plan the grid over an area) and `declouder mosaic` (fitted tiles -> mosaics)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from tiler.errors import DeclouderError
from tiler.grid import DEFAULT_OVERLAP, DEFAULT_RESOLUTION, DEFAULT_TILE_SIZE

#: Tiles listed by `declouder tiles --format table` before "... and N more" (the GeoJSON has them all).
TABLE_ROWS = 20


class PlanFormat(StrEnum):
    table = "table"
    geojson = "geojson"


class TilesOptionError(DeclouderError):
    """A command-line option of `declouder tiles` or `declouder mosaic` is malformed."""


def _tile_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise TilesOptionError(
            f"option --tile-size: {text!r} must be HEIGHT,WIDTH in pixels, e.g. 384,768"
        ) from None
    return height, width


def _storage_options(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise TilesOptionError(
            f"option --storage-options: not JSON ({err}), e.g. '{{\"anon\": true}}'"
        ) from err
    if not isinstance(options, dict):
        raise TilesOptionError("option --storage-options: must be a JSON object")
    return options


def tiles(
    area: str = typer.Argument(
        ..., help="GeoJSON file, WKT, or MINLON,MINLAT,MAXLON,MAXLAT (e.g. 2.5,49.5,6.4,51.5)."
    ),
    tile_size: str = typer.Option(
        ",".join(map(str, DEFAULT_TILE_SIZE)), "--tile-size", help="HEIGHT,WIDTH px, overlap included."
    ),
    overlap: int = typer.Option(DEFAULT_OVERLAP, "--overlap", help="Overlap between neighbours, px."),
    resolution: float = typer.Option(DEFAULT_RESOLUTION, "--resolution", help="Pixel size in metres."),
    output_format: Annotated[
        PlanFormat, typer.Option("--format", help="table, or geojson (every tile, in lon/lat).")
    ] = PlanFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the plan as GeoJSON here.")
    ] = None,
) -> None:
    """Plan the tiles covering an area: count, km², UTM zones, and the tiles (GeoJSON for a map)."""
    from tiler.grid import load_area, plan_tiles, summarize_plan, tiles_geojson

    try:
        plan = plan_tiles(load_area(area), size=_tile_size(tile_size), overlap=overlap, resolution=resolution)
    except ValueError as err:  # the grid's own geometry checks (size, overlap, resolution)
        raise TilesOptionError(f"tile grid: {err}") from err
    summary = summarize_plan(plan)
    if output is not None or output_format is PlanFormat.geojson:
        document = json.dumps(tiles_geojson(plan))
        if output is not None:
            output.write_text(document)
        if output_format is PlanFormat.geojson:
            typer.echo(document)
            return
    typer.echo(
        f"{summary.n_tiles} tiles, {summary.area_km2:,.1f} km² (tile cells), "
        f"{len(summary.zones)} UTM zone(s): "
        + ", ".join(f"EPSG:{epsg} ({count} tiles)" for epsg, count in summary.zones.items())
    )
    typer.echo(f"{'tile id':<20} {'minx':>9} {'miny':>10} {'maxx':>9} {'maxy':>10}  (zone CRS, metres)")
    for tile in plan[:TABLE_ROWS]:
        minx, miny, maxx, maxy = tile.bounds
        typer.echo(f"{tile.tile_id:<20} {minx:>9.0f} {miny:>10.0f} {maxx:>9.0f} {maxy:>10.0f}")
    if len(plan) > TABLE_ROWS:
        typer.echo(f"... and {len(plan) - TABLE_ROWS} more (--format geojson lists them all)")
    if output is not None:
        typer.echo(f"GeoJSON written to {output}")


def _expand(stores: list[str], storage_options: dict[str, Any] | None) -> list[str]:
    """Tile store URLs; a local directory that is not itself a store stands for the stores inside it."""
    urls: list[str] = []
    for store in stores:
        path = Path(store)
        if "://" not in store and path.is_dir() and not (path / "zarr.json").exists():
            found = sorted(str(p) for p in path.glob("*.zarr") if (p / "zarr.json").exists())
            if not found:
                raise TilesOptionError(f"directory {store!r} holds no tile stores (*.zarr with a zarr.json)")
            urls.extend(found)
        else:
            urls.append(store)
    return urls


def mosaic(
    stores: Annotated[
        list[str], typer.Argument(help="Fitted tile stores (paths or URLs), or directories holding them.")
    ],
    out: str = typer.Option(
        ..., "--out", help="Output folder (path or fsspec URL): mosaic_EPSG.zarr per zone."
    ),
    tile_size: str = typer.Option(
        ",".join(map(str, DEFAULT_TILE_SIZE)),
        "--tile-size",
        help="HEIGHT,WIDTH px the tiles were planned with.",
    ),
    overlap: int = typer.Option(DEFAULT_OVERLAP, "--overlap", help="Overlap px the tiles were planned with."),
    resolution: float = typer.Option(DEFAULT_RESOLUTION, "--resolution", help="Pixel size in metres."),
    ramp: str = typer.Option("cosine", "--ramp", help="Blend ramp across overlaps: cosine or linear."),
    cog: bool = typer.Option(False, "--cog", help="Also write a cloud-optimised GeoTIFF per date."),
    stac: bool = typer.Option(False, "--stac", help="Also write a STAC collection describing the outputs."),
    quicklook: str = typer.Option(
        "none", "--quicklook", help="RGB PNG quicklooks: none, all, or a date (YYYY-MM-DD)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Keep regions already written; do the rest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    storage_options: str | None = typer.Option(
        None, "--storage-options", help="fsspec options as JSON, e.g. '{\"anon\": false}'."
    ),
    cadence: str | None = typer.Option(
        None,
        "--cadence",
        help="Also write a regular calendar (calendar_EPSG.zarr) with steps of 5D, 10D, 1MS, SMS, W, ...",
    ),
) -> None:
    """Blend fitted tiles into one Zarr mosaic per UTM zone, with COGs, STAC and quicklooks on request."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from campaign.cli import console
    from tiler.mosaic import RAMPS, mosaic_tiles
    from tiler.outputs import validate_stac, write_cogs, write_outputs, write_quicklooks, write_stac

    if ramp not in RAMPS:
        raise TilesOptionError(f"option --ramp: {ramp!r} is not one of {', '.join(RAMPS)}")
    options = _storage_options(storage_options)
    urls = _expand(stores, options)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("mosaic", total=None)

        def report(done: int, total: int, info: str) -> None:
            bar.update(task, completed=done, total=total, description=info)

        results = mosaic_tiles(
            out,
            urls,
            size=_tile_size(tile_size),
            overlap=overlap,
            resolution=resolution,
            ramp=ramp,  # type: ignore[arg-type]
            storage_options=options,
            overwrite=overwrite,
            resume=resume,
            progress=report,
            cadence=cadence,
        )
        for epsg, info in results.items():
            dates = None if quicklook in ("none", "all") else [quicklook]
            cogs = (
                write_cogs(
                    info.url,
                    f"{out.rstrip('/')}/cog",
                    storage_options=options,
                    out_storage_options=options,
                    overwrite=overwrite or resume,
                    progress=report,
                )
                if cog
                else {}
            )
            looks = (
                write_quicklooks(
                    info.url,
                    f"{out.rstrip('/')}/quicklook",
                    dates=dates,
                    storage_options=options,
                    out_storage_options=options,
                    overwrite=overwrite or resume,
                    progress=report,
                )
                if quicklook != "none"
                else {}
            )
            typer.echo(
                f"EPSG:{epsg}: {info.url} — {len(info.times)} dates, {len(info.bands)} bands, "
                f"{info.n_regions} regions, {info.grid.shape[0]}×{info.grid.shape[1]} px"
            )
            for day, url in looks.items():
                typer.echo(f"  quicklook {day}: {url}")
            if cogs:
                typer.echo(f"  {len(cogs)} COGs in {out.rstrip('/')}/cog (validated)")
            if stac:
                collection = write_stac(
                    info.url,
                    f"{out.rstrip('/')}/stac_{epsg}",
                    cogs=cogs,
                    quicklooks=looks,
                    storage_options=options,
                    out_storage_options=options,
                    overwrite=overwrite or resume,
                )
                count = validate_stac(collection, storage_options=options)
                typer.echo(f"  STAC: {collection} ({count} items, valid against the STAC core schemas)")
            if info.calendar_url is not None:
                written = write_outputs(
                    info.calendar_url,
                    f"{out.rstrip('/')}/calendar_{epsg}",
                    cogs=cog,
                    quicklooks=quicklook != "none",
                    stac=stac,
                    storage_options=options,
                    out_storage_options=options,
                    overwrite=overwrite or resume,
                    progress=report,
                )
                typer.echo(f"  calendar ({cadence}): {info.calendar_url}")
                for kind, where in written.items():
                    typer.echo(f"    {kind}: {where}")


def register(app: typer.Typer) -> None:
    app.command("tiles")(tiles)
    app.command("mosaic")(mosaic)
