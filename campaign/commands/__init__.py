"""One module per stage's commands; each exposes ``register(app: typer.Typer) -> None``."""
