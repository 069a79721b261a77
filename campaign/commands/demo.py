"""`declouder demo`: the offline demo on the bundled real sample."""

from __future__ import annotations

import typer
from rich.console import Console

from campaign.commands.fit import evaluation_table, fit_progress, print_table

console = Console(stderr=True)


def demo_command(
    out: str = typer.Option("demo-out", "--out", "-o", help="Folder for the demo's stores, PNG and JSON."),
    preset: str = typer.Option("fast", help="Fit settings: fast (default), smoke (seconds) or paper."),
    tile: str | None = typer.Option(None, help="Tile store to use instead of the bundled real sample."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda, cuda:N."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Fit and evaluate the bundled real sample offline; write a before/after quicklook and the metrics."""
    from fit.demo import run_demo

    with fit_progress() as update:
        result = run_demo(out, tile_url=tile, preset=preset, device=device, seed=seed, progress=update)
    print_table(evaluation_table(result.evaluation))
    console.print(
        f"[green]demo done[/] in {result.seconds:.0f} s: fitted tile {result.fitted_url}, "
        f"quicklook {result.quicklook}, metrics {result.metrics}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
