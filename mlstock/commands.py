"""`mlstock` commands that talk to a running service (MLSTOCK_URL) through the Python client.

Tables for people, `--json` for scripts; any error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar

import click

from mlstock.client import (
    DEFAULT_URL,
    FORECAST_COLUMNS,
    LONG_POLL_SECONDS,
    Client,
    ClientError,
    Job,
    ValidationFailed,
    WaitTimeout,
)

F = TypeVar("F", bound=Callable[..., Any])


def service_options(func: F) -> F:
    """Add --url, --api-key and --json; turn a ClientError into one line and exit 1."""

    @click.option("--url", envvar="MLSTOCK_URL", default=DEFAULT_URL, show_default=True,
                  help="The service (env MLSTOCK_URL).")  # fmt: skip
    @click.option("--api-key", envvar="MLSTOCK_API_KEY", default=None,
                  help="API key (env MLSTOCK_API_KEY).")  # fmt: skip
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @wraps(func)
    def wrapper(url: str, api_key: str | None, as_json: bool, **kwargs: Any) -> Any:
        try:
            with Client(url, api_key) as client:
                return func(client, as_json, **kwargs)
        except ValidationFailed as exc:
            fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in exc.errors)
            _fail(f"invalid request: {fields or exc.message}")
        except ClientError as exc:
            _fail(exc.message)

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Return rows as a plain-text table with one column per name."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.0f}"
        return str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]  # fmt: skip
    return "\n".join(lines)


def duration(record: dict[str, Any]) -> str | None:
    """Return how long a job ran (or has been running), e.g. `1.25s`."""
    start = record.get("started_at")
    if not start:
        return None
    end = record.get("finished_at")
    began = datetime.fromisoformat(start)
    ended = datetime.fromisoformat(end) if end else datetime.now(began.tzinfo)
    return f"{(ended - began).total_seconds():.2f}s"


def _submitted(job: Job, as_json: bool) -> None:
    if as_json:
        _dump(job.record)
    else:
        click.echo(f"job {job.id} {job.status}: mlstock result {job.id} [--wait]")


def _progress_printer(job: Job) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """Return a callback drawing the job's progress, and a function closing the display.

    On a terminal it is a progress bar with the stage; elsewhere one line per change.
    """
    if sys.stdout.isatty():
        stage = {"text": ""}
        bar: Any = click.progressbar(
            length=1000,
            label=f"{job.type} {job.id[:8]}",
            show_eta=False,
            item_show_func=lambda _: stage["text"],
        )
        bar.__enter__()
        done = {"n": 0}

        def draw(record: dict[str, Any]) -> None:
            stage["text"] = str(record.get("stage") or record.get("status"))
            target = int(1000 * float(record.get("progress") or 0))
            if record.get("status") == "succeeded":
                target = 1000
            bar.update(max(0, target - done["n"]))
            done["n"] = max(done["n"], target)
            bar.render_progress()

        return draw, lambda: bar.__exit__(None, None, None)

    last = {"line": ""}

    def show(record: dict[str, Any]) -> None:
        line = f"{float(record.get('progress') or 0):4.0%}  {record.get('status')}: " + str(
            record.get("stage") or ""
        )
        if line != last["line"]:
            click.echo(line)
            last["line"] = line

    return show, lambda: None


def _held(wait: bool, timeout: float) -> float:
    """Return how long a submit asks the service to hold its answer for the job's end (one
    request instead of a submit and a poll when the job ends in time); 0 without --wait."""
    return min(timeout, LONG_POLL_SECONDS) if wait else 0


def _wait(job: Job, timeout: float | None, *, progress: bool) -> Any:
    if not progress:
        return job.wait(timeout)
    draw, close = _progress_printer(job)
    try:
        return job.wait(timeout, on_progress=draw)
    finally:
        close()


def _forecast_table(frame: Any) -> str:
    rows = frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d")).to_dict("records")
    return table(rows, FORECAST_COLUMNS)


def _print_segments(result: dict[str, Any]) -> None:
    click.echo(table(result.get("assignments", []), ["ticker", "segment", "label"]))
    click.echo("")
    click.echo(table(result.get("segments", []), ["segment", "label", "size"]))


def _print_retrain(result: dict[str, Any]) -> None:
    rows = [
        {
            "model": name,
            **entry,
            "metrics": ", ".join(
                f"{k}={v:.3g}"
                for k, v in (entry.get("metrics") or {}).items()
                if isinstance(v, int | float)
            ),
        }  # fmt: skip
        for name, entry in (result.get("models") or {}).items()
    ]
    click.echo(table(rows, ["model", "version", "promoted", "reason", "previous"]))


def register(main: click.Group) -> None:
    """Add the client commands to the `mlstock` group."""

    @main.command()
    @click.argument("tickers", nargs=-1, required=True)
    @click.option("--horizon", "-h", default=5, show_default=True, type=int,
                  help="Business days ahead.")  # fmt: skip
    @click.option("--as-of", default=None, help="Forecast from the history through this date.")
    @click.option("--wait/--no-wait", default=False, help="Wait and print the forecast.")
    @click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
    @service_options
    def predict(
        client: Client,
        as_json: bool,
        tickers: tuple[str, ...],
        horizon: int,
        as_of: str | None,
        wait: bool,
        timeout: float,
    ) -> None:
        """Forecast TICKERS' closing prices with 80% and 95% intervals."""
        subject: str | list[str] = tickers[0] if len(tickers) == 1 else list(tickers)
        deadline = time.monotonic() + timeout
        job = client.predict(subject, horizon=horizon, as_of=as_of, wait=_held(wait, timeout))
        if not wait:
            return _submitted(job, as_json)
        frame = _wait(job, max(0.0, deadline - time.monotonic()), progress=False)
        if as_json:
            return _dump(job.record)
        click.echo(_forecast_table(frame))
        click.echo(f"model {frame.attrs.get('model_version')}  job {job.id}")

    @main.command()
    @click.argument("tickers", nargs=-1)
    @click.option("--wait/--no-wait", default=False, help="Wait and print the segments.")
    @click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
    @service_options
    def segment(
        client: Client, as_json: bool, tickers: tuple[str, ...], wait: bool, timeout: float
    ) -> None:
        """Assign TICKERS (none: all) to segments."""
        deadline = time.monotonic() + timeout
        job = client.segment(list(tickers) or None, wait=_held(wait, timeout))
        if not wait:
            return _submitted(job, as_json)
        _wait(job, max(0.0, deadline - time.monotonic()), progress=False)
        if as_json:
            return _dump(job.record)
        _print_segments(job.record.get("result") or {})

    @main.command()
    @click.option("--model", "models", multiple=True, type=click.Choice(["forecast", "segment"]),
                  help="Model to retrain (repeat; default: all).")  # fmt: skip
    @click.option("--through", default=None, metavar="YYYY-MM-DD",
                  help="Train on prices through this day only: a point-in-time model "
                  "for replays (`predict --as-of`), never promoted.")  # fmt: skip
    @click.option("--wait/--no-wait", default=False, help="Show progress until it ends.")
    @click.option("--timeout", default=None, type=float, help="Seconds to wait (default: ever).")
    @service_options
    def retrain(
        client: Client,
        as_json: bool,
        models: tuple[str, ...],
        through: str | None,
        wait: bool,
        timeout: float | None,
    ) -> None:
        """Retrain the models; each new version is promoted only if it passes the gate."""
        job = client.retrain(list(models) or None, through=through)
        if not wait:
            return _submitted(job, as_json)
        result = _wait(job, timeout, progress=not as_json)
        if as_json:
            return _dump(job.record)
        _print_retrain(result)

    @main.command()
    @click.option("--type", "job_type", type=click.Choice(["predict", "segment", "retrain"]))
    @click.option("--status", type=click.Choice(
        ["queued", "running", "retrying", "succeeded", "failed", "cancelled"]))  # fmt: skip
    @click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
    @service_options
    def jobs(
        client: Client, as_json: bool, job_type: str | None, status: str | None, limit: int
    ) -> None:
        """List recent jobs, newest first."""
        listing = client.jobs(type=job_type, status=status, limit=limit)
        if as_json:
            return _dump(listing)
        rows = [
            {**r, "duration": duration(r), "progress": f"{float(r.get('progress') or 0):.0%}"}
            for r in listing["jobs"]
        ]
        click.echo(table(rows, ["job_id", "type", "status", "progress", "stage", "submitted_at",
                                "duration"]))  # fmt: skip

    @main.command()
    @click.argument("job_id")
    @click.option("--wait", "wait_s", default=0.0, type=click.FloatRange(0),
                  help="Hold up to S seconds for the job to end.")  # fmt: skip
    @service_options
    def result(client: Client, as_json: bool, job_id: str, wait_s: float) -> None:
        """Show a job's record and result."""
        record = client.result(job_id, wait=wait_s)
        if as_json:
            return _dump(record)
        click.echo(
            f"job {record['job_id']} {record['type']}: {record['status']} "
            f"({float(record.get('progress') or 0):.0%} {record.get('stage') or ''})"
            + (f" in {duration(record)}" if record.get("finished_at") else "")
        )
        if record.get("error"):
            click.echo(f"error: {record['error'].get('type')}: {record['error'].get('message')}")
        res = record.get("result")
        if not res:
            return
        if record["type"] == "predict":
            from mlstock.client import forecast_frame

            click.echo(_forecast_table(forecast_frame(res)))
        elif record["type"] == "segment":
            _print_segments(res)
        elif record["type"] == "retrain":
            _print_retrain(res)
        else:
            _dump(res)
        return None

    @main.command()
    @click.argument("job_id")
    @service_options
    def cancel(client: Client, as_json: bool, job_id: str) -> None:
        """Cancel a queued or running job."""
        record = client.cancel(job_id)
        if as_json:
            return _dump(record)
        click.echo(f"job {job_id} {record['status']}")

    @main.command()
    @service_options
    def models(client: Client, as_json: bool) -> None:
        """List the models and their current versions."""
        listing = client.models()
        if as_json:
            return _dump(listing)
        click.echo(table(listing.get("models") or [], ["name", "current", "versions", "latest"]))

    @main.command()
    @service_options
    def accuracy(client: Client, as_json: bool) -> None:
        """Show how served forecasts fared once later prices arrived, by version and step."""
        report = client.accuracy()
        if as_json:
            return _dump(report)
        if report.get("computed_at"):
            click.echo(
                f"scored {report['computed_at']} on dataset {report['data_version']} "
                f"(prices through {report['actuals_through']})"
            )
        else:
            click.echo(str(report.get("detail", "not computed yet")))
        rows = [
            {"model_version": v["model_version"], **step}
            for v in report.get("versions", [])
            for step in v["steps"]
        ]
        if rows:
            columns = ["model_version", "step", "n", "mase", "naive_mase", "relative_mase",
                       "coverage_80", "coverage_95"]  # fmt: skip
            click.echo(table(rows, columns))
        for entry in report.get("ledger", []):
            click.echo(f"ledger: {entry['model_version']} holds {entry['recorded']} forecast steps")
        return None

    @main.command()
    @click.argument("name")
    @click.argument("version")
    @click.option("--reason", default=None, help="Why (kept in the model's history).")
    @service_options
    def promote(client: Client, as_json: bool, name: str, version: str, reason: str | None) -> None:
        """Make VERSION the current version of model NAME (also a rollback)."""
        outcome = client.promote(name, version, reason)
        if as_json:
            return _dump(outcome)
        click.echo(f"{name}: {outcome.get('status', 'done')} (current version {version})")

    @main.command()
    @service_options
    def doctor(client: Client, as_json: bool) -> None:
        """Check what the running service needs; say how to fix what fails (exit 1 if not ready)."""
        report = client.ready()
        if as_json:
            _dump(report)
        else:
            for check in report["checks"]:
                mark = "ok  " if check["ok"] else ("FAIL" if check.get("blocking") else "warn")
                click.echo(f"{mark} {check['name']}: {check['detail']}")
                if not check["ok"] and check.get("fix"):
                    click.echo(f"     fix: {check['fix']}")
            click.echo(report["status"])
        if report["status"] != "ready":
            sys.exit(1)


__all__ = ["register", "table", "WaitTimeout"]
