"""The life of a job, through the API and real workers: history, cancel, progress,
long-poll, idempotency, retention, duplicate deliveries, lost workers, callbacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from api import create_app
from tests.conftest import WEBHOOK, Stack
from tests.jobs import FINAL, run, submit, wait
from worker.contract import JobStore, create_celery
from worker.lifecycle import sign

pytestmark = pytest.mark.integration


def versions(stack: Stack, name: str) -> set[str]:
    folder = Path(stack.artifacts) / "models" / name
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def wait_for(predicate: Any, timeout: float = 120, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def test_jobs_lists_newest_first_with_filters_and_pages(client: FlaskClient, stack: Stack) -> None:
    ticker = stack.tickers()[0]
    ids = [submit(client, "/jobs/predict", {"ticker": ticker, "horizon": 1}) for _ in range(3)]
    for job_id in ids:
        wait(client, job_id)
    page = client.get("/jobs?type=predict&limit=2").get_json()
    assert [j["job_id"] for j in page["jobs"]] == ids[::-1][:2]
    assert all("result" not in j for j in page["jobs"])
    rest = client.get(f"/jobs?type=predict&limit=2&cursor={page['next_cursor']}").get_json()
    assert rest["jobs"][0]["job_id"] == ids[0]
    assert client.get("/jobs?type=segment&status=succeeded").status_code == 200
    assert all(j["type"] == "retrain" for j in client.get("/jobs?type=retrain").get_json()["jobs"])
    assert client.get("/jobs?status=exploded").status_code == 422
    assert client.get("/jobs?cursor=nonsense").status_code == 422
    # A new API process (a restart) sees the same history: it lives in Redis.
    fresh = create_app(stack.settings()).test_client()
    listed = {j["job_id"] for j in fresh.get("/jobs?limit=200").get_json()["jobs"]}
    assert set(ids) <= listed


def test_wait_returns_as_soon_as_the_job_ends(client: FlaskClient, stack: Stack) -> None:
    job_id = submit(client, "/jobs/predict", {"ticker": stack.tickers()[0], "horizon": 5})
    started = time.monotonic()
    record = client.get(f"/result/{job_id}?wait=25").get_json()
    held = time.monotonic() - started
    assert record["status"] == "succeeded"
    assert held < 25  # it did not sit out the whole wait
    print(f"?wait answered {held * 1000:.0f} ms after submit")


def test_idempotency_key_returns_the_same_job(client: FlaskClient, stack: Stack) -> None:
    body = {"ticker": stack.tickers()[0], "horizon": 2}
    headers = {"Idempotency-Key": f"order-{time.time()}"}
    first = client.post("/jobs/predict", json=body, headers=headers)
    again = client.post("/jobs/predict", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["job_id"] == again.get_json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/jobs/predict", json={**body, "horizon": 3}, headers=headers)
    assert other.status_code == 409
    assert other.mimetype == "application/problem+json"
    assert other.get_json()["job_id"] == first.get_json()["job_id"]


def test_identical_retrains_in_flight_collapse_into_one(client: FlaskClient) -> None:
    first = submit(client, "/jobs/retrain", {"models": ["segment"]})
    second = client.post("/jobs/retrain", json={"models": ["segment"]})
    assert second.get_json()["job_id"] == first
    wait(client, first)
    third = submit(client, "/jobs/retrain", {"models": ["segment"]})
    assert third != first  # the first has finished: a new request makes a new job
    wait(client, third)


def test_cancel_a_queued_job_it_never_runs(client: FlaskClient, stack: Stack) -> None:
    r = redis.Redis.from_url(stack.redis_url)

    def cancelled_count() -> float:
        return float(r.hget("mlstock:metrics", "finished|retrain|cancelled") or 0)

    counted = cancelled_count()
    running = submit(client, "/jobs/retrain", {"models": ["forecast"]})
    queued = submit(client, "/jobs/retrain", {"models": ["segment", "forecast"]})
    resp = client.delete(f"/jobs/{queued}")
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "cancelled"
    assert cancelled_count() == counted + 1  # counted with its end, by the cancel
    wait(client, running, timeout=600)
    time.sleep(1)  # the training worker now takes the cancelled message off the queue
    record = client.get(f"/result/{queued}").get_json()
    assert record["status"] == "cancelled"
    assert record["attempts"] == 0 and record["started_at"] is None
    assert cancelled_count() == counted + 1  # and never again
    again = client.delete(f"/jobs/{queued}")
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    assert client.delete("/jobs/00000000-0000-4000-8000-000000000000").status_code == 404


def test_cancel_a_running_retrain_at_a_checkpoint(client: FlaskClient, stack: Stack) -> None:
    before = versions(stack, "forecast")
    job_id = submit(client, "/jobs/retrain", {"models": ["forecast"]})
    seen: list[float] = []

    def progressed() -> bool:
        record = client.get(f"/result/{job_id}").get_json()
        if record["status"] == "running":
            seen.append(record["progress"])
        return len(set(seen)) >= 3

    wait_for(progressed, timeout=120, every=0.05)
    assert seen == sorted(seen) and 0 < seen[-1] < 1  # progress rises while it runs
    assert client.delete(f"/jobs/{job_id}").get_json()["status"] == "cancelled"
    stopped = wait_for(
        lambda: (
            (r := client.get(f"/result/{job_id}").get_json())["stage"].startswith("cancelled while")
            and r
        ),
        timeout=120,
    )
    assert stopped["status"] == "cancelled"
    assert versions(stack, "forecast") == before  # no model from the cancelled run
    staging = Path(stack.artifacts) / "models" / "forecast"
    assert not [p for p in staging.iterdir() if p.name.startswith(".tmp")]


def test_a_late_duplicate_delivery_changes_nothing(client: FlaskClient, stack: Stack) -> None:
    body = {"ticker": stack.tickers()[0], "horizon": 1}
    record = run(client, "/jobs/predict", body)
    celery = create_celery(stack.settings())
    celery.send_task("worker.predict", kwargs={"request": body}, task_id=record["job_id"])
    wait_for(lambda: f"job {record['job_id']} is already final" in stack.log("worker-inference"))
    after = client.get(f"/result/{record['job_id']}").get_json()
    assert after == record


def test_a_job_its_worker_starts_before_its_record_is_written_keeps_its_record(
    client: FlaskClient, stack: Stack
) -> None:
    """The API sends a job, then writes its record: a worker can start it first. It then
    writes the record itself, and the API's write that comes late changes nothing."""
    body = {"ticker": stack.tickers()[0], "horizon": 1}
    job_id = "22222222-2222-4222-8222-222222222222"
    store = JobStore(redis.Redis.from_url(stack.redis_url), stack.settings())
    create_celery(stack.settings()).send_task(
        "worker.predict", kwargs={"request": body}, task_id=job_id, queue="inference"
    )
    wait_for(lambda: store.get(job_id) is not None)  # written by the worker
    record = wait(client, job_id)
    assert record["status"] == "succeeded" and record["attempts"] == 1
    assert record["params"] == body and record["result"]["forecasts"]
    store.create(job_id, "predict", body)  # the late write of the submit
    assert client.get(f"/result/{job_id}").get_json() == record
    listed = client.get("/jobs?type=predict&limit=100").get_json()["jobs"]
    assert [r["job_id"] for r in listed].count(job_id) == 1


def test_records_outlive_their_jobs_then_expire_to_404(stack: Stack) -> None:
    """A record lives RESULT_TTL after its job ends; until then each change, a progress
    checkpoint too, gives it that long plus the job's time limit."""
    settings = stack.settings(result_ttls={"predict": 1}, inference_time_limit=60)
    client_redis = redis.Redis.from_url(stack.redis_url)
    store = JobStore(client_redis, settings)
    job_id = "11111111-1111-4111-8111-111111111111"
    key = store.key(job_id)
    store.create(job_id, "predict", {"ticker": "X"})
    assert 1 < client_redis.ttl(key) <= 61
    store.start(job_id, "predict", {"ticker": "X"})
    client_redis.expire(key, 5)  # as if the job had run for a while since
    assert store.progress(job_id, "predict", 0.5, "halfway") == "running"
    assert 5 < client_redis.ttl(key) <= 61
    expires_at = datetime.fromisoformat(store.get(job_id)["expires_at"])  # type: ignore[index]
    assert expires_at > datetime.now(UTC) + timedelta(seconds=50)
    assert store.transition(job_id, "predict", "succeeded", result={}, stage="done")
    assert client_redis.ttl(key) <= 1
    client = create_app(settings).test_client()
    assert client.get(f"/result/{job_id}").status_code == 200
    time.sleep(1.5)
    assert client.get(f"/result/{job_id}").status_code == 404


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_retrain_whose_worker_is_killed_is_delivered_again(
    client: FlaskClient, stack: Stack
) -> None:
    job_id = submit(client, "/jobs/retrain", {"models": ["segment", "forecast"]})
    # Killed in the forecaster's backtest (seconds long), after the segmenter was saved: a
    # kill timed by progress alone could land in a save and leave its staging folder.
    stage = lambda: str(client.get(f"/result/{job_id}").get_json()["stage"])  # noqa: E731
    wait_for(lambda: stage().startswith("forecast: backtesting"), every=0.05)
    [child] = _children(stack.procs["worker-training"].pid)
    killed_at = time.monotonic()
    os.kill(child, signal.SIGKILL)
    record = wait(client, job_id, timeout=600)
    print(f"retrain redelivered after SIGKILL, ended {record['status']} "
          f"{time.monotonic() - killed_at:.1f}s later, attempts {record['attempts']}")  # fmt: skip
    assert record["status"] == "succeeded", record["error"]
    assert record["attempts"] == 2
    for name in ("segment", "forecast"):  # killed between saves: nothing left staged
        staging = Path(stack.artifacts) / "models" / name
        assert not [p for p in staging.iterdir() if p.name.startswith(".tmp")]


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Receiver.received
    server.shutdown()
    server.server_close()


def test_callback_receives_the_signed_final_record(
    client: FlaskClient, stack: Stack, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    job_id = submit(
        client, "/jobs/predict", {"ticker": stack.tickers()[0], "horizon": 2, "callback_url": url}
    )
    wait(client, job_id)
    wait_for(lambda: received, timeout=30)
    headers, body = received[0]
    assert headers["X-Signature"] == sign(WEBHOOK["WEBHOOK_SECRET"], body)
    delivered = json.loads(body)
    assert delivered["job_id"] == job_id and delivered["status"] in FINAL
    record = wait_for(lambda: (r := client.get(f"/result/{job_id}").get_json())["callback"] and r)
    assert record["callback"]["status_code"] == 204 and record["callback"]["attempts"] == 1


def test_callback_url_must_be_public_unless_allowed(stack: Stack) -> None:
    strict = create_app(stack.settings(webhook_allow_private=False)).test_client()
    body = {"ticker": stack.tickers()[0], "callback_url": "http://127.0.0.1:9/hook"}
    resp = strict.post("/jobs/predict", json=body)
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["field"] == "callback_url"
    off = create_app(stack.settings(webhook_secret="")).test_client()
    assert off.post("/jobs/predict", json=body).status_code == 422
    bad = strict.post("/jobs/predict", json={**body, "callback_url": "ftp://example.com/x"})
    assert bad.status_code == 422


def test_schedule_is_visible(client: FlaskClient) -> None:
    body = client.get("/schedule").get_json()
    assert body["timezone"] == "UTC"
    assert {"retrain_schedule", "next_run_at", "last_tick_at"} <= set(body)
