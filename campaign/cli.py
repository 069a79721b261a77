"""The `declouder` command line: a thin shell over the library.

Logging and progress bars are set up here and only here; library functions take a ``progress``
callback. Each stage's commands live in ``campaign/commands/<stage>.py`` and register themselves on the
app with ``register(app)``; heavy imports (torch, ray) happen inside the commands, so ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from campaign import __version__
from tiler.errors import DeclouderError

#: Command modules under campaign/commands, in the order their commands appear in --help.
COMMAND_MODULES = ("ingest", "tiles", "fit", "run", "demo")

console = Console(stderr=True)
app = typer.Typer(
    name="declouder",
    help="Remove clouds from Sentinel-2 time series over whole regions, guided by Sentinel-1 radar.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"declouder {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"campaign.commands.{_name}")
    except ModuleNotFoundError as _err:  # a stage whose commands are not installed in this build
        if _err.name != f"campaign.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    """Console-script entry point: runs the app, turning declouder's own errors into one clear line."""
    try:
        app()
    except DeclouderError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
