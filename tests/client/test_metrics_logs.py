"""`/metrics` moves with the jobs run; a job's id is in the API's and the worker's logs;
a line per HTTP request only with ACCESS_LOG on."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlstock.client import Client
from tests.conftest import Stack
from tests.procs import stop
from tests.served import Served, api_server, serve_api  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


def lines(text: str) -> list[dict[str, object]]:
    """Return the JSON lines of a log."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_jobs(api_server: Served, stack: Stack) -> None:  # noqa: F811
    before = scrape(api_server.url)
    tickers = stack.tickers()
    with Client(api_server.url) as api:
        for ticker in tickers[:3]:
            api.predict(ticker, horizon=2).wait(timeout=60)
        api.segment(tickers[:2]).wait(timeout=60)
    after = before

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # The worker counts a job just after it records it final: allow it a moment.
    deadline = time.monotonic() + 10
    finished = "mlstock_jobs_finished_total"
    while time.monotonic() < deadline:
        after = scrape(api_server.url)
        predicts = moved(finished, type="predict", status="succeeded")
        if predicts >= 3 and moved(finished, type="segment", status="succeeded") >= 1:
            break
        time.sleep(0.2)

    assert moved("mlstock_jobs_submitted_total", type="predict") == 3
    assert moved("mlstock_jobs_submitted_total", type="segment") == 1
    assert moved("mlstock_jobs_finished_total", type="predict", status="succeeded") == 3
    assert moved("mlstock_jobs_finished_total", type="segment", status="succeeded") == 1
    assert moved("mlstock_predictions_total", type="predict") == 3
    assert moved("mlstock_predictions_total", type="segment") == 2
    assert moved("mlstock_job_duration_seconds_count", type="predict") == 3
    assert moved("mlstock_job_queue_wait_seconds_count", type="predict") == 3
    assert value(after, "mlstock_job_duration_seconds_bucket", type="predict", le="+Inf") == (
        value(after, "mlstock_job_duration_seconds_count", type="predict")
    )
    assert moved("mlstock_http_requests_total", endpoint="api.create_job", method="POST",
                 status="202") == 4  # fmt: skip
    assert ("mlstock_queue_depth", (("queue", "inference"),)) in after
    assert ("mlstock_queue_depth", (("queue", "training"),)) in after
    served = [k for k in after if k[0] == "mlstock_model_served"]
    assert {dict(k[1])["model"] for k in served} == {"forecast", "segment"}
    assert value(after, "mlstock_redis_up") == 1


def test_a_predict_jobs_id_is_in_the_api_and_worker_logs(
    api_server: Served,  # noqa: F811
    stack: Stack,
) -> None:
    with Client(api_server.url) as api:
        job = api.predict(stack.tickers()[0], horizon=1)
        job.wait(timeout=60)
    deadline = time.monotonic() + 10

    while True:
        api_lines = [e for e in lines(api_server.log()) if e.get("job_id") == job.id]
        worker_lines = [
            e for e in lines(stack.log("worker-inference")) if e.get("job_id") == job.id
        ]
        if (api_lines and any(e["msg"] == "job succeeded" for e in worker_lines)) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    assert api_lines and api_lines[0]["msg"] == "job submitted"
    assert api_lines[0]["type"] == "predict"
    [done] = [e for e in worker_lines if e["msg"] == "job succeeded"]
    assert done["type"] == "predict" and done["status"] == "succeeded"
    assert done["model_version"] == job.record["model_version"]
    assert isinstance(done["duration"], float) and isinstance(done["queue_wait"], float)


def test_access_lines_only_with_access_log_on(
    api_server: Served,  # noqa: F811
    stack: Stack,
    tmp_path: Path,
) -> None:
    def access_lines(served: Served) -> list[dict[str, object]]:
        urllib.request.urlopen(served.url + "/health", timeout=5).close()
        deadline = time.monotonic() + 5
        while True:
            found = [e for e in lines(served.log()) if e["logger"] == "gunicorn.access"]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    assert access_lines(api_server) == []
    logging = serve_api(stack.redis_url, stack.artifacts, tmp_path, ACCESS_LOG="true")
    try:
        assert any("GET /health" in str(e["msg"]) for e in access_lines(logging))
    finally:
        stop(logging.proc)
