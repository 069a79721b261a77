"""`declouder run`, `estimate` and `status`: a whole campaign from one config file."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

ConfigArg = Annotated[
    Path, typer.Argument(help="Campaign config (TOML): area, period, catalogue, output, preset, resources.")
]
#: Exit status of a process stopped by SIGINT (128 + signal 2), the shell convention Ctrl-C follows.
EXIT_INTERRUPTED = 130


def _interrupt_on_sigterm() -> None:
    """Treat SIGTERM (``ray job stop``, a pod's eviction) like Ctrl-C: stop cleanly and keep the ledger."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run(
    config: ConfigArg,
    address: Annotated[
        str | None,
        typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join; default: start Ray here."),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="Give failed tiles a fresh set of attempts (bad input too)."),
    ] = False,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Redraw a live view on a terminal.")] = True,
    report_json: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report to this file.")
    ] = None,
) -> None:
    """Run a campaign: plan tiles, ingest, fit on GPU-pinned Ray actors, mosaic. Rerun to resume."""
    from campaign.config import load_config
    from campaign.driver import run_campaign
    from campaign.errors import CampaignInterrupted
    from campaign.live import LiveView
    from campaign.report import summary_lines

    cfg = load_config(config)
    console = Console(stderr=True, force_terminal=None if live else False)
    _interrupt_on_sigterm()
    try:
        with LiveView(console, cfg.name) as view:
            report = run_campaign(cfg, address=address, retry_failed=retry_failed, progress=view)
    except CampaignInterrupted as stop:
        console.print(f"[yellow]stopped:[/] {stop}", highlight=False, soft_wrap=True)
        if stop.report is not None:
            for line in summary_lines(stop.report):
                typer.echo(line)
        sys.exit(EXIT_INTERRUPTED)
    for line in summary_lines(report):
        typer.echo(line)
    typer.echo(f"report: {cfg.output.rstrip('/')}/report.json")
    if report_json is not None:
        report_json.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    raise typer.Exit(report.exit_code)


def estimate(
    config: ConfigArg,
    gpu_hour_price: Annotated[
        float | None, typer.Option("--gpu-hour-price", min=0, help="Price of one GPU-hour, to print a cost.")
    ] = None,
    dates_per_tile: Annotated[
        int | None,
        typer.Option("--dates-per-tile", min=1, help="S2 dates per tile; default: one per 5 days."),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", min=1, help="GPUs of the cluster, to print the wall time.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
) -> None:
    """Tiles, km², GPU-hours and cost of a campaign, before running it."""
    from campaign.config import load_config
    from campaign.estimate import estimate_campaign, estimate_lines

    cfg = load_config(config)
    result = estimate_campaign(cfg, gpu_hour_price=gpu_hour_price, dates_per_tile=dates_per_tile, gpus=gpus)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    for line in estimate_lines(result, cfg):
        typer.echo(line)


def status(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Where a campaign stands, from its ledger (no Ray needed)."""
    from campaign.config import load_config
    from campaign.driver import campaign_status
    from campaign.report import summary_lines

    report = campaign_status(load_config(config))
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        for line in summary_lines(report):
            typer.echo(line)
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("estimate")(estimate)
    app.command("status")(status)
