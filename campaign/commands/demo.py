"""`declouder demo`: the whole pipeline on the bundled real sample, offline, through Ray; then the fit's
evaluation on the same sample (painted clouds, metrics against the baselines, a before/after quicklook)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from campaign.commands.fit import evaluation_table, fit_progress, print_table

console = Console(stderr=True)


def demo_command(
    out: Annotated[
        str,
        typer.Option("--out", "-o", help="Folder for the demo's catalogue, campaign, outputs and metrics."),
    ] = "demo-out",
    preset: Annotated[
        str | None,
        typer.Option(
            help="Fit settings: fast, smoke (seconds) or paper; default fast with a GPU, smoke without."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join; default: start Ray here."),
    ] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="Then evaluate the fit on the sample (metrics).")
    ] = True,
    tile: Annotated[
        str | None, typer.Option(help="For the evaluation: a tile store instead of the bundled sample.")
    ] = None,
    device: Annotated[
        str, typer.Option(help="For the evaluation: auto (CUDA when present), cpu, cuda.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="For the evaluation: random seed.")] = 0,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Redraw a live view on a terminal.")] = True,
    cadence: Annotated[
        str | None,
        typer.Option(help="Also write a regular calendar beside the mosaic: 5D, 10D, 1MS, SMS, W, ..."),
    ] = None,
) -> None:
    """Run the whole pipeline on the bundled real sample offline (ingest, fit, mosaic, quicklooks, through
    Ray), then evaluate the fit on it; print where everything is."""
    from campaign.demo import default_preset, run_demo
    from campaign.live import LiveView
    from campaign.report import summary_lines

    chosen = preset or default_preset()
    if preset is None:
        why = (
            "a GPU is here"
            if chosen == "fast"
            else "no GPU here; --preset fast fits take minutes per tile on a CPU"
        )
        console.print(f"fit preset: {chosen} ({why})", highlight=False)
    view_console = Console(stderr=True, force_terminal=None if live else False)
    with LiveView(view_console, "demo") as view:
        result = run_demo(out, preset=chosen, address=address, progress=view, cadence=cadence)
    for line in summary_lines(result.report):
        typer.echo(line)
    typer.echo(f"campaign config: {result.config} (declouder run / status work on it too)")
    if result.quicklooks:
        typer.echo(
            f"quicklooks of the declouded mosaic: {len(result.quicklooks)} PNGs, e.g. {result.quicklooks[0]}"
        )
    if result.calendar_url is not None:
        typer.echo(f"calendar ({cadence}): {result.calendar_url} (xarray.open_zarr reads it)")
        if result.calendar_quicklooks:
            typer.echo(
                f"quicklooks of the calendar: {len(result.calendar_quicklooks)} PNGs, "
                f"e.g. {result.calendar_quicklooks[0]}"
            )
    if evaluate:
        from fit.demo import run_demo as run_evaluation

        with fit_progress() as update:
            evaluation = run_evaluation(
                Path(out) / "evaluation",
                tile_url=tile,
                preset=chosen,
                device=device,
                seed=seed,
                progress=update,
            )
        print_table(evaluation_table(evaluation.evaluation))
        typer.echo(f"evaluation: before/after quicklook {evaluation.quicklook}, metrics {evaluation.metrics}")
    raise typer.Exit(result.report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
