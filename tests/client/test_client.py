"""The Python client against a real API (gunicorn) on the suite's Redis and workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest

from mlstock.client import (
    FORECAST_COLUMNS,
    Client,
    ClientError,
    Conflict,
    JobFailed,
    NotFound,
    RateLimited,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
    raise_for_problem,
)
from mlstock.launcher import free_port
from tests.conftest import Stack
from tests.served import Served, api_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def api(api_server: Served) -> Iterator[Client]:  # noqa: F811
    with Client(api_server.url) as client:
        yield client


def test_predict_wait_returns_a_forecast_frame(api: Client, stack: Stack) -> None:
    ticker = stack.tickers()[0]
    job = api.predict(ticker, horizon=5)
    assert job.status == "queued" and job.type == "predict"
    frame = job.wait(timeout=60)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == FORECAST_COLUMNS
    assert len(frame) == 5 and set(frame["ticker"]) == {ticker}
    assert list(frame["step"]) == [1, 2, 3, 4, 5]
    assert pd.api.types.is_datetime64_any_dtype(frame["date"])
    ordered = frame[["lower_95", "lower_80", "close", "upper_80", "upper_95"]].to_numpy()
    assert (ordered[:, :-1] <= ordered[:, 1:]).all()
    assert frame.attrs["model_version"] == job.record["model_version"]


def test_a_submit_with_wait_is_one_request_holding_the_final_record(
    api: Client, stack: Stack
) -> None:
    sent: list[str] = []
    api._http.event_hooks["request"].append(lambda r: sent.append(f"{r.method} {r.url.path}"))
    job = api.predict(stack.tickers()[0], horizon=2, wait=30)
    assert job.status == "succeeded"
    assert len(job.wait(timeout=5)) == 2
    segments = api.segment(wait=30)
    assert segments.status == "succeeded" and segments.wait(timeout=5) is not None
    assert sent == ["POST /jobs/predict", "POST /jobs/segment"]


def test_several_tickers_as_of_and_segment(api: Client, stack: Stack) -> None:
    some = stack.tickers()[:3]
    frame = api.predict(some, horizon=2, as_of="2025-06-02").wait(timeout=60)
    assert list(frame["ticker"].unique()) == some and len(frame) == 6
    assert all(v["date"] <= "2025-06-02" for v in frame.attrs["last"].values())
    segments = api.segment(some).wait(timeout=60)
    assert list(segments["ticker"]) == some
    assert {"segment", "label"} <= set(segments.columns)


def test_jobs_result_and_cancel(api: Client, stack: Stack) -> None:
    job = api.predict(stack.tickers()[0], horizon=1)
    job.wait(timeout=60)
    listed = api.jobs(type="predict", limit=5)["jobs"]
    assert job.id in [j["job_id"] for j in listed]
    record = api.result(job.id)
    assert record["status"] == "succeeded" and record["result"]["forecasts"]
    assert api.job(job.id).status == "succeeded"
    with pytest.raises(Conflict) as info:
        api.cancel(job.id)
    assert info.value.status == 409


def test_errors_are_typed(api: Client) -> None:
    with pytest.raises(NotFound):
        api.result(str(uuid.uuid4()))
    with pytest.raises(ValidationFailed) as bad:
        api.predict("NO_SUCH", horizon=5)
    assert bad.value.errors[0]["field"] == "ticker"
    with pytest.raises(ValidationFailed) as bad:
        api.predict("ANY", horizon=0)
    assert [e["field"] for e in bad.value.errors] == ["horizon"]
    assert isinstance(bad.value, ClientError)


def test_a_failed_job_raises_job_failed(api: Client, stack: Stack) -> None:
    # History through 1990 is far too short for the model's feature windows.
    job = api.predict(stack.tickers()[0], horizon=2, as_of="1990-01-02")
    with pytest.raises(JobFailed) as info:
        job.wait(timeout=60)
    assert info.value.record["status"] == "failed"
    assert info.value.error["type"] == "InsufficientHistoryError"
    assert "no prices to forecast from through 1990-01-02" in info.value.error["message"]


def test_wait_timeout_then_cancel(api: Client) -> None:
    job = api.retrain(["segment"])
    with pytest.raises(WaitTimeout):
        job.wait(timeout=0.01)
    seen: list[float] = []
    try:
        job.wait(timeout=0.3, on_progress=lambda r: seen.append(r["progress"]))
    except WaitTimeout:
        job.cancel()
    record = job.wait_record(timeout=120)
    assert record["status"] in ("cancelled", "succeeded")
    assert seen


def test_unreachable_service_is_unavailable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}") as api, pytest.raises(Unavailable):
        api.jobs()


def test_problem_statuses_map_to_errors() -> None:
    """Each problem status maps to its typed error, whatever the server sends with it."""
    request = httpx.Request("GET", "http://x/jobs")
    problem = {"type": "/problems/rate-limited", "title": "Too many requests", "status": 429,
               "detail": "slow down"}  # fmt: skip
    resp = httpx.Response(429, json=problem, headers={"Retry-After": "7"}, request=request)
    with pytest.raises(RateLimited) as info:
        raise_for_problem(resp)
    assert info.value.retry_after == 7.0 and "slow down" in str(info.value)
    with pytest.raises(Unavailable) as down:
        raise_for_problem(httpx.Response(503, json={}, headers={"Retry-After": "5"},
                                         request=request))  # fmt: skip
    assert down.value.retry_after == 5.0
    raise_for_problem(httpx.Response(200, json={}, request=request))


def test_predict_history_is_opt_in(api: Client, stack: Stack) -> None:
    ticker = stack.tickers()[0]
    plain = api.predict(ticker, horizon=1)
    plain.wait(timeout=60)
    assert "history" not in plain.record["result"]["forecasts"][0]
    job = api.predict(ticker, horizon=1, as_of="2025-06-02", history=30)
    job.wait(timeout=60)
    [forecast] = job.record["result"]["forecasts"]
    history = forecast["history"]
    assert len(history) == 30
    assert history[-1] == {"date": forecast["last_date"], "close": forecast["last_close"]}
    assert all(a["date"] < b["date"] for a, b in zip(history, history[1:], strict=False))
