"""The `mlstock` command line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click

from worker.config import Settings


@click.group()
def main() -> None:
    """Stock forecasts and segments as asynchronous jobs."""


@main.command()
@click.option("--host", envvar="HOST", default="127.0.0.1", show_default=True, help="API address.")
@click.option("--port", envvar="PORT", default=8000, show_default=True, type=int, help="API port.")
@click.option("--flower", is_flag=True, help="Also run Flower on port 5555.")
def up(host: str, port: int, flower: bool) -> None:
    """Run Redis (unless REDIS_URL is set), the API, both workers and beat until Ctrl-C."""
    from mlstock.launcher import up as run_stack

    if flower and importlib.util.find_spec("flower") is None:
        click.echo("error: Flower is not installed: pip install -e '.[flower]'", err=True)
        sys.exit(1)
    sys.exit(run_stack(host, port, flower=flower))


@main.command(name="import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--activate/--no-activate", default=True, show_default=True,
              help="Train on this dataset from the next retrain on.")  # fmt: skip
def import_(path: Path, activate: bool) -> None:
    """Validate a prices CSV (date,ticker,close[,open,high,low,volume,adj_close]) and store it."""
    from ml.data import read_prices_csv
    from ml.errors import DataValidationError
    from ml.registry import DatasetStore

    try:
        prices = read_prices_csv(path)
    except DataValidationError as exc:
        click.echo(f"error: {path} is not a valid prices file:", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    store = DatasetStore(Settings().artifacts_dir)
    meta = store.save(prices, source=str(path))
    if activate:
        store.activate(meta["version"])
    click.echo(
        f"dataset {meta['version']}: {meta['rows']} rows, {len(meta['tickers'])} tickers, "
        f"{meta['start']} to {meta['end']}" + (" (active)" if activate else "")
    )


# Commands that talk to a running service (predict, segment, retrain, jobs, result, ...).
from mlstock.commands import register  # noqa: E402

register(main)
