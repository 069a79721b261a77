"""`declouder fit` and `declouder evaluate`: one tile's fit, and the paper's evaluation protocol."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)
#: The evaluation table has 13 columns: printed no narrower than this where the output is not a terminal.
TABLE_WIDTH = 150


def print_table(table: Table) -> None:
    """Print to stdout; a pipe or a file gets the whole table instead of an 80-column squeeze."""
    out = Console()
    if not out.is_terminal:
        out = Console(width=max(out.width, TABLE_WIDTH))
    out.print(table)


@contextmanager
def fit_progress() -> Iterator[Callable[[str, Any], None]]:
    """A rich progress bar fed by the fit's progress events: iteration, loss and ETA."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("it  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    # Started on the first event, so an error raised before the fit begins (a missing or corrupt tile
    # store) prints as one line, without an empty progress display before it.
    bar = Progress(*columns, console=console, transient=False)
    tasks: dict[str, Any] = {}

    def update(stage: str, event: Any) -> None:
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=event.total, loss="-")
        bar.update(tasks[stage], completed=event.iteration, loss=f"{event.loss:.5f}")

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


def parse_dates(value: str | None, n_dates: int) -> tuple[int, int]:
    """``START:STOP`` (either may be empty) -> indices; default: the first 30 dates (the paper's N)."""
    from fit.errors import FitConfigError
    from fit.evaluate import PAPER_SERIES

    if value is None:
        return 0, min(n_dates, PAPER_SERIES)
    try:
        start_text, stop_text = value.split(":")
        start = int(start_text) if start_text else 0
        stop = int(stop_text) if stop_text else n_dates
    except ValueError:
        raise FitConfigError(f"--dates {value!r}: expected START:STOP date indices, e.g. 0:30") from None
    return start, stop


def storage_options_option(value: str | None) -> dict[str, Any] | None:
    from fit.errors import FitConfigError

    if not value:
        return None
    try:
        options = json.loads(value)
    except json.JSONDecodeError as err:
        raise FitConfigError(f"--storage-options is not JSON: {err}") from None
    if not isinstance(options, dict):
        raise FitConfigError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return options


def fit_command(
    tile: str = typer.Argument(..., help="Tile store to fit (local path or fsspec URL)."),
    out: str = typer.Option(..., "--out", "-o", help="Output tile store (input variables + s2_declouded)."),
    preset: str = typer.Option("fast", help="Fit settings: paper, fast or smoke (docs/fit.md)."),
    input: str = typer.Option("s1", "--input", help="Network input: s1 (the paper's model) or noise."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda, cuda:N."),
    seed: int = typer.Option(0, help="Random seed (initialisation, window order, noise input)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output store."),
    vgg_weights: str | None = typer.Option(
        None, "--vgg-weights", help="torchvision's vgg16-397923af.pth, for presets with a perceptual loss."
    ),
    storage_options: str | None = typer.Option(
        None, "--storage-options", help="fsspec options for both stores, as JSON."
    ),
    init_weights: str | None = typer.Option(
        None, "--init-weights", help="Warm start from a fitted neighbour's OUT.weights.pt (docs/fit.md)."
    ),
    save_weights: bool = typer.Option(
        False, "--save-weights", help="Also write the final weights to OUT.weights.pt for warm starts."
    ),
) -> None:
    """Fit one tile: write its declouded series (s2_declouded) next to its inputs, in the tile schema."""
    from fit.tile import fit_tile

    with fit_progress() as update:
        result = fit_tile(
            tile,
            out,
            preset=preset,
            input=input,
            device=device,
            seed=seed,
            overwrite=overwrite,
            storage_options=storage_options_option(storage_options),
            vgg_weights=vgg_weights,
            progress=lambda event: update(f"fit {input}", event),
            init_weights=init_weights,
            save_weights=save_weights,
        )
    console.print(
        f"[green]wrote[/] {result.out_url}: {result.iterations} iterations over {result.windows} windows "
        f"in {result.seconds:.1f} s on {result.device}, final loss {result.final_loss:.5f}, "
        f"{result.clear_fraction:.0%} of pixels clear ({result.refined_away_fraction:.0%} of SCL-clear "
        "pixels re-marked by the refined masks)",
        highlight=False,
    )


def evaluation_table(evaluation: Any) -> Table:
    """The evaluation as a rich table: every method, painted region and whole image."""
    table = Table(
        title=(
            f"{evaluation.tile}: {evaluation.dates[0]}..{evaluation.dates[1]}, preset {evaluation.preset}, "
            f"paint {evaluation.paint} (clouds of {evaluation.source}, {evaluation.painted_fraction:.0%} of "
            f"the image) onto {', '.join(evaluation.targets)}, protocol {evaluation.protocol}"
        ),
        title_justify="left",
    )
    table.add_column("method")
    table.add_column("masks / input")
    for region in ("painted", "whole"):
        for metric in ("PSNR", "SSIM", "SAM°", "RMSE", "MAE"):
            table.add_column(f"{region}\n{metric}", justify="right")
    table.add_column("seam", justify="right")
    table.add_column("s", justify="right")
    best = evaluation.best_baseline()
    for row in evaluation.rows:
        cells = []
        for scores in (row.painted, row.whole):
            cells += [f"{scores.psnr:.2f}", f"{scores.ssim:.3f}", f"{scores.sam:.2f}",
                      f"{scores.rmse:.4f}", f"{scores.mae:.4f}"]  # fmt: skip
        style = "bold" if row.method == "fit" else ("cyan" if row is best else None)
        table.add_row(row.method, row.variant, *cells, f"{row.seam:.2f}", f"{row.seconds:.1f}", style=style)
    return table


def evaluate_command(
    tile: str = typer.Argument(..., help="Tile store to evaluate on (local path or fsspec URL)."),
    preset: str = typer.Option("fast", help="Fit settings: paper, fast or smoke."),
    targets: int = typer.Option(1, "--targets", "-k", min=1, help="How many clear dates to paint."),
    paint: str = typer.Option("cloudiest", help="Clouds to paint: cloudiest (the paper's) or partial."),
    protocol: str = typer.Option(
        "realistic", help="realistic (painted pixels keep the source's SCL classes) or oracle (marked cloud)."
    ),
    dates: str | None = typer.Option(None, help="START:STOP date indices to use (default: the first 30)."),
    inputs: str = typer.Option("s1,noise", help="Comma-separated fit inputs to score: s1, noise."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda, cuda:N."),
    seed: int = typer.Option(0, help="Random seed."),
    vgg_weights: str | None = typer.Option(None, "--vgg-weights", help="torchvision's vgg16-397923af.pth."),
    json_path: str | None = typer.Option(None, "--json", help="Also write the results as JSON here."),
    storage_options: str | None = typer.Option(None, "--storage-options", help="fsspec options, JSON."),
) -> None:
    """Paint real clouds onto clear dates, fit, and score against the originals next to the baselines."""
    from fit.arrays import TileArrays
    from fit.config import resolve_config
    from fit.errors import FitConfigError
    from fit.evaluate import calibration_lines, evaluate
    from fit.vgg import load_vgg16
    from tiler.store import open_tile

    config = resolve_config(preset)
    kinds = tuple(k.strip() for k in inputs.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ("s1", "noise")]
    if unknown:
        raise FitConfigError(f"--inputs {inputs!r}: unknown input(s) {unknown}; use s1 and/or noise")
    vgg = load_vgg16(vgg_weights) if config.perceptual_weight > 0 else None
    ds = open_tile(tile, storage_options=storage_options_option(storage_options)).load()
    arrays = TileArrays.from_dataset(ds, name=str(ds.attrs.get("tile_id", tile)))
    start, stop = parse_dates(dates, arrays.n_dates)
    with fit_progress() as update:
        evaluation = evaluate(
            arrays.dates(start, stop),
            config,
            paint_mode=paint,
            protocol=protocol,
            targets=targets,
            inputs=kinds,
            device=device,
            seed=seed,
            vgg=vgg,
            progress=update,
        )
    print_table(evaluation_table(evaluation))
    for line in calibration_lines(evaluation):
        console.print(line, highlight=False)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
        console.print(f"[green]wrote[/] {json_path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("fit")(fit_command)
    app.command("evaluate")(evaluate_command)
