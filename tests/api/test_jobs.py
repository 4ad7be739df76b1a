"""Each job type end to end: the API, the suite's own Redis and real worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import Stack
from tests.jobs import check_steps, run, submit, wait

pytestmark = pytest.mark.integration


def tickers(client: FlaskClient) -> list[str]:
    """Return the served tickers, via a segment job over all of them."""
    record = run(client, "/jobs/segment", {})
    return [a["ticker"] for a in record["result"]["assignments"]]


def test_predict_one_ticker(client: FlaskClient) -> None:
    ticker = tickers(client)[0]
    record = run(client, "/jobs/predict", {"ticker": ticker, "horizon": 5})
    assert record["status"] == "succeeded", record["error"]
    assert record["type"] == "predict"
    assert record["submitted_at"] <= record["started_at"] <= record["finished_at"]
    [forecast] = record["result"]["forecasts"]
    assert forecast["ticker"] == ticker
    assert forecast["model_version"] == record["model_version"]
    assert record["result"]["trained_through"] == forecast["last_date"]  # served from its data
    assert len(record["result"]["data_version"]) == 16
    check_steps(forecast["steps"], 5)
    assert forecast["steps"][0]["date"] > forecast["last_date"]
    assert forecast["last_close"] > 0


def test_submit_with_wait_answers_the_final_record(client: FlaskClient) -> None:
    ticker = tickers(client)[0]
    resp = client.post("/jobs/predict?wait=30", json={"ticker": ticker, "horizon": 2})
    assert resp.status_code == 200
    record = resp.get_json()
    assert record["status"] == "succeeded", record["error"]
    assert resp.headers["Location"].endswith(f"/result/{record['job_id']}")
    assert client.get(f"/result/{record['job_id']}").get_json() == record
    [forecast] = record["result"]["forecasts"]
    check_steps(forecast["steps"], 2)
    # Without ?wait (or with 0): the 202 as ever. A bad ?wait queues nothing.
    assert client.post("/jobs/predict?wait=0", json={"ticker": ticker}).status_code == 202
    before = [j["job_id"] for j in client.get("/jobs?limit=200").get_json()["jobs"]]
    assert client.post("/jobs/predict?wait=soon", json={"ticker": ticker}).status_code == 422
    assert [j["job_id"] for j in client.get("/jobs?limit=200").get_json()["jobs"]] == before


def test_predict_several_tickers_in_one_job(client: FlaskClient) -> None:
    some = tickers(client)[:4]
    record = run(client, "/jobs/predict", {"tickers": some, "horizon": 3})
    assert record["status"] == "succeeded", record["error"]
    assert [f["ticker"] for f in record["result"]["forecasts"]] == some
    for f in record["result"]["forecasts"]:
        check_steps(f["steps"], 3)


def test_predict_as_of_reads_no_later_history(client: FlaskClient) -> None:
    ticker = tickers(client)[0]
    record = run(client, "/jobs/predict", {"ticker": ticker, "horizon": 2, "as_of": "2025-06-02"})
    assert record["status"] == "succeeded", record["error"]
    assert record["result"]["forecasts"][0]["last_date"] <= "2025-06-02"


def test_predict_an_adhoc_price_series(client: FlaskClient) -> None:
    prices = [100 * (1.001**i) for i in range(80)]
    record = run(
        client, "/jobs/predict", {"prices": prices, "horizon": 4, "last_date": "2026-01-02"}
    )
    assert record["status"] == "succeeded", record["error"]
    [forecast] = record["result"]["forecasts"]
    check_steps(forecast["steps"], 4)
    assert forecast["steps"][0]["date"] == "2026-01-05"  # the next business day


def test_unknown_ticker_is_refused_at_submit(client: FlaskClient) -> None:
    resp = client.post("/jobs/predict", json={"ticker": "NOSUCH", "horizon": 5})
    assert resp.status_code == 422
    problem = resp.get_json()
    assert problem["errors"][0]["field"] == "ticker"
    assert "NOSUCH" in problem["detail"]


def test_segment_covers_every_ticker(client: FlaskClient, stack: Stack) -> None:
    record = run(client, "/jobs/segment", {})
    assert record["status"] == "succeeded", record["error"]
    result = record["result"]
    assert sorted(a["ticker"] for a in result["assignments"]) == sorted(stack.tickers())
    segments = {s["segment"]: s for s in result["segments"]}
    assert len(segments) >= 2
    assert sum(s["size"] for s in segments.values()) == len(result["assignments"])
    for a in result["assignments"]:
        assert a["label"] == segments[a["segment"]]["label"]


def test_segment_rows_of_features(client: FlaskClient, stack: Stack) -> None:
    width = len(stack.catalog()["segment"]["features"])
    record = run(client, "/jobs/segment", {"data": [[0.1] * width, [0.5] * width]})
    assert record["status"] == "succeeded", record["error"]
    assert [a["row"] for a in record["result"]["assignments"]] == [0, 1]
    resp = client.post("/jobs/segment", json={"data": [[0.1] * (width + 1)]})
    assert resp.status_code == 422


def test_legacy_aliases_enqueue_the_same_jobs(client: FlaskClient, stack: Stack) -> None:
    resp = client.post("/predict_price", json={"features": [100 + i * 0.5 for i in range(60)]})
    assert resp.status_code == 202
    record = wait(client, resp.get_json()["job_id"])
    assert record["type"] == "predict" and record["status"] == "succeeded", record["error"]
    check_steps(record["result"]["forecasts"][0]["steps"], 5)
    width = len(stack.catalog()["segment"]["features"])
    resp = client.post("/segment", json={"data": [[0.2] * width]})
    assert resp.status_code == 202
    record = wait(client, resp.get_json()["job_id"])
    assert record["type"] == "segment" and record["status"] == "succeeded", record["error"]


def test_unknown_job_id_is_404(client: FlaskClient) -> None:
    resp = client.get("/result/00000000-0000-4000-8000-000000000000")
    assert resp.status_code == 404
    assert resp.mimetype == "application/problem+json"


def test_invalid_job_enqueues_nothing(client: FlaskClient, stack: Stack) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    before = (r.llen("inference"), len(r.keys("mlstock:job:*")))
    assert client.post("/jobs/predict", json={"ticker": 5}).status_code == 422
    assert client.post("/jobs/predict", json={"ticker": "NOSUCH"}).status_code == 422
    assert (r.llen("inference"), len(r.keys("mlstock:job:*"))) == before


def test_job_record_expires(client: FlaskClient, stack: Stack) -> None:
    settings, r = stack.settings(), redis.Redis.from_url(stack.redis_url)
    job_id = submit(client, "/jobs/segment", {})
    key = f"mlstock:job:{job_id}"
    # Until the job ends (it may have already): its retention plus its time limit.
    assert 0 < r.ttl(key) <= settings.result_ttl + settings.inference_time_limit
    record = wait(client, job_id)
    assert 0 < r.ttl(key) <= settings.result_ttl  # from its end: its retention
    assert record["expires_at"] > record["finished_at"]


def test_retrain_adds_a_version_and_predict_overtakes_it(client: FlaskClient, stack: Stack) -> None:
    models = Path(stack.artifacts) / "models" / "forecast"
    before = {p.name for p in models.iterdir() if p.is_dir()}
    retrain_id = submit(client, "/jobs/retrain", {"models": ["forecast"]})
    wait_running = client.get(f"/result/{retrain_id}").get_json()
    ticker = tickers(client)[0]
    predict = run(client, "/jobs/predict", {"ticker": ticker, "horizon": 5})
    retrain = wait(client, retrain_id, timeout=600)
    assert predict["status"] == "succeeded" and retrain["status"] == "succeeded", retrain["error"]
    assert predict["finished_at"] < retrain["finished_at"], (wait_running, retrain)
    new = retrain["result"]["models"]["forecast"]
    assert new["version"] not in before
    assert (models / new["version"] / "model.joblib").exists()
    assert new["previous"] in before
    assert isinstance(new["promoted"], bool) and new["reason"]
    assert "relative_mae" in new["metrics"]
    assert retrain["progress"] == 1.0


def test_health_and_ready(client: FlaskClient) -> None:
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.get_json()
    names = {c["name"] for c in ready.get_json()["checks"] if c["ok"]}
    assert {"redis", "workers:inference", "workers:training", "model:forecast"} <= names
