"""Python client of the mlstockprediction service.

    >>> from mlstock.client import Client
    >>> with Client("http://127.0.0.1:8000") as api:
    ...     frame = api.predict("TEC01", horizon=5).wait(timeout=60)

Every error the service or the network can produce is one of the `ClientError` subclasses
below, so a caller can catch the whole family or the one case it cares about.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from types import TracebackType
from typing import Any

import httpx
import pandas as pd

DEFAULT_URL = "http://127.0.0.1:8000"
#: Longest single long-poll the client asks for; the server caps it at WAIT_MAX anyway.
LONG_POLL_SECONDS = 25.0
FINAL = ("succeeded", "failed", "cancelled")
FORECAST_COLUMNS = [
    "ticker", "step", "date", "close", "lower_80", "upper_80", "lower_95", "upper_95",
]  # fmt: skip


# --- errors ----------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error of this client."""

    def __init__(
        self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.problem = problem or {}


class Unavailable(ClientError):
    """The service cannot be reached or answered 503; try again after `retry_after` s."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimited(ClientError):
    """Too many requests (429); `retry_after` says how many seconds to wait."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class NotFound(ClientError):
    """No such job, model or version (404): never issued, or expired."""


class ValidationFailed(ClientError):
    """The request was refused (422); `errors` lists `{field, message, type}` per field."""

    def __init__(self, message: str, *, errors: list[dict[str, Any]], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.errors = errors


class Unauthorized(ClientError):
    """No valid API key (401), or the key's role may not do this (403)."""


class Conflict(ClientError):
    """The request conflicts with the current state (409), e.g. cancelling a finished job."""


class JobFailed(ClientError):
    """The job ended `failed` or `cancelled`; `record` is its final job record."""

    def __init__(self, message: str, *, record: dict[str, Any], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.record = record
        self.error = record.get("error") or {}


class WaitTimeout(ClientError):
    """The job did not finish within the time the caller was willing to wait."""

    def __init__(self, message: str, *, record: dict[str, Any], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.record = record


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("Retry-After")
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


def raise_for_problem(resp: httpx.Response) -> None:
    """Raise the ClientError matching an error response; return quietly on success."""
    if resp.status_code < 400:
        return
    try:
        problem = resp.json()
        if not isinstance(problem, dict):
            problem = {}
    except ValueError:
        problem = {}
    detail = str(problem.get("detail") or problem.get("title") or resp.reason_phrase)
    status = resp.status_code
    message = f"{status} {problem.get('title') or resp.reason_phrase}: {detail}"
    kw: dict[str, Any] = {"status": status, "problem": problem}
    if status == 422:
        raise ValidationFailed(message, errors=list(problem.get("errors") or []), **kw)
    if status == 404:
        raise NotFound(message, **kw)
    if status == 429:
        raise RateLimited(message, retry_after=_retry_after(resp), **kw)
    if status in (401, 403):
        raise Unauthorized(message, **kw)
    if status == 409:
        raise Conflict(message, **kw)
    if status in (502, 503, 504):
        raise Unavailable(message, retry_after=_retry_after(resp), **kw)
    raise ClientError(message, **kw)


# --- results as frames -----------------------------------------------------------------------


def forecast_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Return a predict result as one row per ticker and step (dates as timestamps)."""
    rows = [
        {"ticker": f["ticker"], **step}
        for f in result.get("forecasts", [])
        for step in f.get("steps", [])
    ]
    frame = pd.DataFrame(rows, columns=FORECAST_COLUMNS)
    frame["date"] = pd.to_datetime(frame["date"])
    frame.attrs["model_version"] = result.get("model_version")
    frame.attrs["last"] = {
        f["ticker"]: {"date": f.get("last_date"), "close": f.get("last_close")}
        for f in result.get("forecasts", [])
    }
    return frame


def segment_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Return a segment result as one row per ticker (or row of features)."""
    frame = pd.DataFrame(result.get("assignments", []))
    frame.attrs["model_version"] = result.get("model_version")
    frame.attrs["segments"] = result.get("segments", [])
    return frame


# --- jobs ------------------------------------------------------------------------------------


class Job:
    """A submitted job: poll it, wait for it, cancel it."""

    def __init__(self, client: Client, job_id: str, job_type: str | None = None) -> None:
        self.client = client
        self.id = job_id
        self.type = job_type
        self.record: dict[str, Any] = {"job_id": job_id, "status": "queued"}

    def __repr__(self) -> str:
        return f"Job({self.id!r}, type={self.type!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        """Return the status last seen."""
        return str(self.record.get("status"))

    def refresh(self, wait: float = 0) -> dict[str, Any]:
        """Fetch the job's record, holding up to `wait` s for it to end; return it."""
        self.record = self.client.result(self.id, wait=wait)
        self.type = self.record.get("type") or self.type
        return self.record

    def wait_record(
        self,
        timeout: float | None = None,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.5,
    ) -> dict[str, Any]:
        """Wait until the job ends; return its final record, whatever the status.

        With `on_progress` the record is fetched every `poll` s and passed to it (for
        progress bars); without, one long-poll at a time waits for the end. A job already
        seen final (e.g. submitted with `wait=`) is answered without a request.
        """
        if self.status in FINAL:
            if on_progress is not None:
                on_progress(self.record)
            return self.record
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if on_progress is None:
                self.refresh(
                    wait=min(left if left is not None else LONG_POLL_SECONDS, LONG_POLL_SECONDS)
                )
            else:
                self.refresh()
                on_progress(self.record)
            if self.status in FINAL:
                return self.record
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"job {self.id} is still {self.status} after {timeout:g}s",
                    record=self.record,
                )
            if on_progress is not None:
                time.sleep(poll)

    def wait(
        self,
        timeout: float | None = None,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        """Wait until the job ends and return its result: a DataFrame for predict and
        segment, the result dict otherwise. Raise JobFailed if it failed or was cancelled."""
        record = self.wait_record(timeout, on_progress=on_progress)
        if record["status"] != "succeeded":
            error = record.get("error") or {}
            reason = (
                f"{error.get('type', 'Error')}: {error.get('message', '')}"
                if error
                else str(record.get("stage") or record["status"])
            )
            raise JobFailed(f"job {self.id} {record['status']}: {reason}", record=record)
        result: dict[str, Any] = record.get("result") or {}
        if record.get("type") == "predict":
            return forecast_frame(result)
        if record.get("type") == "segment":
            return segment_frame(result)
        return result

    def cancel(self) -> dict[str, Any]:
        """Cancel the job; return its record."""
        self.record = self.client.cancel(self.id)
        return self.record


# --- the client ------------------------------------------------------------------------------


class Client:
    """Talk to a running service at `url` (default: MLSTOCK_URL, else localhost:8000)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("MLSTOCK_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("MLSTOCK_API_KEY")
        headers = {"Accept": "application/json", "User-Agent": "mlstock-client"}
        if api_key:
            headers["X-API-Key"] = api_key
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; return the parsed JSON body or raise a ClientError."""
        try:
            resp = self._http.request(
                method,
                path,
                json=json,
                params={k: v for k, v in (params or {}).items() if v is not None},
                timeout=timeout if timeout is not None else self.timeout,
                headers=headers,
            )
        except httpx.TimeoutException as exc:
            raise Unavailable(f"{self.url} did not answer in time: {exc}") from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc}") from exc
        raise_for_problem(resp)
        try:
            return resp.json()
        except ValueError as exc:
            raise ClientError(
                f"{resp.status_code}: the answer is not JSON", status=resp.status_code
            ) from exc

    def ready(self) -> dict[str, Any]:
        """Return the service's readiness checks (`/ready`), ready or not."""
        try:
            resp = self._http.get("/ready")
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc}") from exc
        if resp.status_code not in (200, 503):
            raise_for_problem(resp)
        body: dict[str, Any] = resp.json()
        return body

    def submit(
        self,
        job_type: str,
        body: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: float = 0,
    ) -> Job:
        """Submit a job of `job_type` with `body`; return its handle. With `wait` the service
        holds the answer up to that many seconds (at most its WAIT_MAX) for the job to end:
        one request instead of a submit and a poll, and the handle holds the final record."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        data = self.request(
            "POST",
            f"/jobs/{job_type}",
            json=body,
            headers=headers,
            params={"wait": f"{wait:g}"} if wait > 0 else None,
            timeout=self.timeout + wait,
        )
        job = Job(self, str(data["job_id"]), job_type)
        job.record = dict(data)
        return job

    def predict(
        self,
        ticker: str | Sequence[str] | None = None,
        horizon: int = 5,
        as_of: str | date | None = None,
        *,
        prices: Iterable[float] | None = None,
        last_date: str | date | None = None,
        history: int | None = None,
        idempotency_key: str | None = None,
        wait: float = 0,
    ) -> Job:
        """Forecast one ticker, several (a list), or an ad-hoc `prices` series (`wait`: see
        `submit`)."""
        body: dict[str, Any] = {"horizon": horizon}
        if isinstance(ticker, str):
            body["ticker"] = ticker
        elif ticker is not None:
            body["tickers"] = list(ticker)
        if prices is not None:
            body["prices"] = [float(p) for p in prices]
        if as_of is not None:
            body["as_of"] = str(as_of)
        if last_date is not None:
            body["last_date"] = str(last_date)
        if history is not None:
            body["history"] = history
        return self.submit("predict", body, idempotency_key=idempotency_key, wait=wait)

    def segment(
        self,
        tickers: Sequence[str] | None = None,
        *,
        data: Sequence[Sequence[float]] | None = None,
        idempotency_key: str | None = None,
        wait: float = 0,
    ) -> Job:
        """Segment some tickers (none: all of them), or rows of features (`wait`: see
        `submit`)."""
        body: dict[str, Any] = {}
        if tickers is not None:
            body["tickers"] = list(tickers)
        if data is not None:
            body["data"] = [list(map(float, row)) for row in data]
        return self.submit("segment", body, idempotency_key=idempotency_key, wait=wait)

    def retrain(
        self,
        models: Sequence[str] | None = None,
        *,
        through: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Retrain some models (none: all of them); `through` (YYYY-MM-DD) trains on prices
        through that day only, a point-in-time model for replays that is never promoted."""
        body: dict[str, Any] = {} if models is None else {"models": list(models)}
        if through is not None:
            body["through"] = through
        return self.submit("retrain", body, idempotency_key=idempotency_key)

    def result(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        """Return a job's record, holding up to `wait` s for it to end."""
        params = {"wait": f"{wait:g}"} if wait > 0 else None
        record: dict[str, Any] = self.request(
            "GET", f"/result/{job_id}", params=params, timeout=self.timeout + wait
        )
        return record

    def job(self, job_id: str) -> Job:
        """Return a handle on an existing job (its record fetched now)."""
        handle = Job(self, job_id)
        handle.refresh()
        return handle

    def jobs(
        self,
        *,
        type: str | None = None,  # noqa: A002 (the API's own name for the filter)
        status: str | None = None,
        since: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """List recent jobs, newest first: `{"jobs": [...], "next_cursor": ...}`."""
        params = {"type": type, "status": status, "since": since, "limit": limit, "cursor": cursor}
        listing: dict[str, Any] = self.request("GET", "/jobs", params=params)
        return listing

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; return its record."""
        record: dict[str, Any] = self.request("DELETE", f"/jobs/{job_id}")
        return record

    def models(self) -> dict[str, Any]:
        """List the models and their current versions."""
        listing: dict[str, Any] = self.request("GET", "/models")
        return listing

    def model(self, name: str) -> dict[str, Any]:
        """Return one model's versions with their cards."""
        entry: dict[str, Any] = self.request("GET", f"/models/{name}")
        return entry

    def accuracy(self, name: str = "forecast") -> dict[str, Any]:
        """Return the realized accuracy of served forecasts, by model version and step."""
        report: dict[str, Any] = self.request("GET", f"/models/{name}/accuracy")
        return report

    def promote(self, name: str, version: str, reason: str | None = None) -> dict[str, Any]:
        """Make `version` the current version of model `name` (also a rollback)."""
        body: dict[str, Any] = {"version": version}
        if reason:
            body["reason"] = reason
        outcome: dict[str, Any] = self.request(
            "POST", f"/models/{name}/promote", json=body, timeout=self.timeout + 30
        )
        return outcome
