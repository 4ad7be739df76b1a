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
@click.option("--host", default=None, help="API address  [default: HOST, else 127.0.0.1]")
@click.option("--port", default=None, type=int, help="API port  [default: PORT, else 8000]")
@click.option("--flower", is_flag=True, help="Also run Flower on port 5555.")
def up(host: str | None, port: int | None, flower: bool) -> None:
    """Run Redis (unless REDIS_URL is set), the API, both workers and beat until Ctrl-C.

    Settings come from the environment and `.env`, as for every process of the service.
    """
    from mlstock.launcher import up as run_stack

    if flower and importlib.util.find_spec("flower") is None:
        click.echo("error: Flower is not installed: pip install -e '.[flower]'", err=True)
        sys.exit(1)
    conf = Settings()
    sys.exit(run_stack(conf, host or conf.host, port or conf.port, flower=flower))


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


@main.command()
@click.option("--data", "data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prices CSV (plain or gzip); default: the seeded synthetic market.")  # fmt: skip
@click.option("--horizon", default=5, show_default=True, type=click.IntRange(1, 60))
@click.option("--origins", default=None, type=click.IntRange(1), help="Walk-forward refits.")
@click.option("--step", default=None, type=click.IntRange(1), help="Business days between refits.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the full report here.")  # fmt: skip
def backtest(
    data: Path | None, horizon: int, origins: int | None, step: int | None, json_out: Path | None
) -> None:
    """Walk-forward backtest of the forecaster vs naive and drift: print a table, write JSON."""
    import json

    from ml.backtest import DEFAULT_ORIGINS, DEFAULT_STEP, backtest_forecaster, format_table
    from ml.data import read_prices_csv, synthetic_market
    from ml.errors import DataValidationError, MLError
    from ml.forecast import Forecaster

    try:
        prices = read_prices_csv(data) if data is not None else synthetic_market()
        report = backtest_forecaster(
            prices,
            Forecaster(horizon=horizon),
            n_origins=origins or DEFAULT_ORIGINS,
            step=step or DEFAULT_STEP,
        )
    except DataValidationError as exc:
        click.echo(f"error: {data} is not a valid prices file:", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    except MLError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    report["data"] = str(data) if data is not None else "synthetic seed=0"
    click.echo(format_table(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1, allow_nan=False))
        click.echo(f"wrote {json_out}")


# Commands that talk to a running service (predict, segment, retrain, jobs, result, ...).
from mlstock.commands import register  # noqa: E402

register(main)
