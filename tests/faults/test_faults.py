"""Real faults against real processes: an accepted job is always answered, once."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from ml.registry import ModelRegistry
from tests.conftest import Stack
from tests.faults.conftest import FINAL, FaultStack, kill
from tests.procs import served_tickers

pytestmark = [pytest.mark.integration, pytest.mark.faults]


class Stream(threading.Thread):
    """Submit predicts at a steady rate, recording every answer and its latency."""

    def __init__(self, fs: FaultStack, seconds: float, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.fs, self.seconds, self.interval = fs, seconds, interval
        self.ticker = fs.a_ticker()
        self.accepted: list[str] = []
        self.codes: Counter[str] = Counter()
        self.slowest = 0.0
        self.missing_retry_after = 0

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            body = {"ticker": self.ticker, "horizon": random.randint(1, 5)}
            t0 = time.monotonic()
            try:
                status, headers, answer = self.fs.http("POST", "/jobs/predict", body, timeout=20)
                self.codes[str(status)] += 1
                if status == 202:
                    self.accepted.append(answer["job_id"])
                elif status == 503 and not headers.get("Retry-After"):
                    self.missing_retry_after += 1
            except OSError as exc:  # connection refused or reset: not accepted
                self.codes[type(exc).__name__] += 1
            self.slowest = max(self.slowest, time.monotonic() - t0)
            time.sleep(self.interval)


def succeeded(log: str) -> Counter[str]:
    """Count the worker's "job succeeded" lines of predict jobs (one per job), by job id."""
    found: Counter[str] = Counter()
    for line in log.splitlines():
        if '"job succeeded"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "job succeeded" and entry.get("type") == "predict":
            found[str(entry["job_id"])] += 1
    return found


def outcome(fs: FaultStack, stream: Stream, worker: str, timeout: float = 180) -> dict[str, Any]:
    """Settle every accepted job; count lost and duplicated results."""
    records = fs.settle(stream.accepted, timeout)
    statuses = Counter(r.get("status") for r in records.values())
    lost = [j for j, r in records.items() if r.get("status") not in FINAL]
    finished = succeeded(fs.log(worker))
    return {
        "submitted": sum(stream.codes.values()),
        "answers": dict(stream.codes),
        "accepted": len(stream.accepted),
        "final": dict(statuses),
        "lost": len(lost),
        "duplicated": sum(1 for n in finished.values() if n > 1),
        "redelivered": sum(1 for r in records.values() if (r.get("attempts") or 0) > 1),
        "resent_after_lost_message": sum(
            fs.log(name).count("had lost its message")
            for name in ("worker-inference", "worker-training")
        ),
        "failed_reasons": sorted({r["error"]["type"] for r in records.values() if r.get("error")}),
        "slowest_request_s": round(stream.slowest, 3),
    }


def kill_children_during(
    fs: FaultStack, stream: Stream, service: str, *, times: int, every: float
) -> int:
    """SIGKILL a random child process of `service` every `every` s while `stream` runs."""
    kills = 0
    while stream.is_alive() and kills < times:
        time.sleep(every)
        children = fs.children(service)
        if children and kill(random.choice(children)):
            kills += 1
    stream.join()
    return kills


def start_all(fs: FaultStack, **env: str) -> None:
    for name in ("worker-inference", "worker-training", "api"):
        fs.start(name, **env)
    fs.wait_ready()


def test_jobs_sent_before_any_worker_runs_are_run_when_one_starts(
    fault_stack: FaultStack, stack: Stack
) -> None:
    # A fresh Redis that no worker has touched: the API sends without declaring the queue
    # (the worker declares its own), so the jobs must wait in it and be run once one starts.
    fs = fault_stack
    fs.start("api")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _answers(fs, "/health"):
        time.sleep(0.2)
    ticker = served_tickers(stack.redis_url)[0]
    ids = []
    for _ in range(3):
        status, _, job = fs.http("POST", "/jobs/predict", {"ticker": ticker, "horizon": 3})
        assert status == 202, job
        ids.append(job["job_id"])
    client = redis.Redis.from_url(fs.redis_url)
    assert client.llen("inference") == 3
    assert not client.keys("_kombu.binding.*")  # nothing has declared a queue yet
    fs.start("worker-inference")
    records = fs.settle(ids, timeout=120)
    assert [r["status"] for r in records.values()] == ["succeeded"] * 3, records
    assert all(r["result"]["forecasts"][0]["ticker"] == ticker for r in records.values())


def _answers(fs: FaultStack, path: str) -> bool:
    try:
        return fs.http("GET", path, timeout=2)[0] == 200
    except OSError:
        return False


def test_inference_children_killed_20_times(
    fault_stack: FaultStack, figures: dict[str, Any]
) -> None:
    fs = fault_stack
    start_all(fs)
    stream = Stream(fs, seconds=14)
    stream.start()
    kills = kill_children_during(fs, stream, "worker-inference", times=20, every=0.5)
    fig = outcome(fs, stream, "worker-inference") | {"children_killed": kills}
    figures["kill_inference_child"] = fig
    assert kills == 20
    assert fig["lost"] == 0 and fig["duplicated"] == 0, fig
    assert fig["final"].get("succeeded", 0) >= fig["accepted"] * 0.8, fig


def _retrain_running(fs: FaultStack, models: list[str]) -> str:
    status, _, job = fs.http("POST", "/jobs/retrain", {"models": models})
    assert status == 202, job
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = fs.http("GET", f"/result/{job['job_id']}")[2]
        if record["status"] == "running" and record["progress"] > 0.05:
            return str(job["job_id"])
        time.sleep(0.05)
    raise AssertionError("the retrain did not start")


def _registry_sound(artifacts: Path) -> None:
    registry = ModelRegistry(artifacts)
    for name in ("forecast", "segment"):
        registry.load(name)  # the current pointer names a complete, verifiable version
        staging = artifacts / "models" / name
        assert not [p.name for p in staging.iterdir() if p.name.startswith(".tmp")]


def test_training_worker_killed_mid_retrain(
    fault_stack: FaultStack, figures: dict[str, Any]
) -> None:
    fs = fault_stack
    start_all(fs)
    # The pool child dies: its main process has the job delivered again at once.
    job_id = _retrain_running(fs, ["forecast"])
    t0 = time.monotonic()
    [child] = fs.children("worker-training")
    kill(child)
    first = fs.settle([job_id], 600)[job_id]
    child_s = time.monotonic() - t0
    # The whole worker dies: the next start of it takes its orphaned job back.
    job_id = _retrain_running(fs, ["forecast"])
    kill(fs.procs["worker-training"].pid)
    for pid in fs.children("worker-training"):
        kill(pid)
    fs.procs["worker-training"].wait()
    t0 = time.monotonic()
    fs.start("worker-training")
    second = fs.settle([job_id], 600)[job_id]
    figures["kill_training_worker"] = {
        "child_killed": {"status": first["status"], "attempts": first["attempts"],
                         "recovered_s": round(child_s, 1)},
        "worker_killed_and_restarted": {"status": second["status"],
                                        "attempts": second["attempts"],
                                        "recovered_s": round(time.monotonic() - t0, 1)},
    }  # fmt: skip
    for record in (first, second):
        assert record["status"] == "succeeded" and record["attempts"] == 2, record
    _registry_sound(fs.artifacts)


def test_redis_restart_under_submits(fault_stack: FaultStack, figures: dict[str, Any]) -> None:
    fs = fault_stack
    start_all(fs)
    stream = Stream(fs, seconds=16, interval=0.05)
    stream.start()
    time.sleep(4)
    fs.stop_redis()
    down = time.monotonic()
    time.sleep(5)
    fs.start_redis()
    restarted = time.monotonic()
    stream.join()
    fig = outcome(fs, stream, "worker-inference", timeout=240)
    # Recovery: the first job accepted after the restart has succeeded.
    fig |= {"redis_down_s": round(restarted - down, 1)}
    figures["redis_restart"] = fig
    assert "500" not in fig["answers"], fig
    assert fig["answers"].get("503", 0) > 0 and stream.missing_retry_after == 0, fig
    assert stream.slowest < 15, fig  # never a hang past the client's patience
    assert fig["lost"] == 0 and fig["duplicated"] == 0, fig
    assert fig["final"].get("failed", 0) == 0, fig


def test_api_workers_killed_under_load(fault_stack: FaultStack, figures: dict[str, Any]) -> None:
    fs = fault_stack
    start_all(fs, WEB_CONCURRENCY="2")
    stream = Stream(fs, seconds=10)
    stream.start()
    kills = kill_children_during(fs, stream, "api", times=5, every=1.5)
    fig = outcome(fs, stream, "worker-inference") | {"api_workers_killed": kills}
    figures["kill_api_worker"] = fig
    assert kills == 5
    assert fig["lost"] == 0 and fig["duplicated"] == 0, fig


def test_disk_full_during_retrain(fault_stack: FaultStack, figures: dict[str, Any]) -> None:
    fs = fault_stack
    for name in ("worker-inference", "api"):
        fs.start(name)
    # The training worker may write no file past 256 KiB: saving a model fails.
    fs.start("worker-training", file_size_limit=256 * 1024)
    fs.wait_ready()
    before = ModelRegistry(fs.artifacts).current_version("forecast")
    record = fs.run_job("retrain", {"models": ["forecast"]}, 600)
    assert record["status"] == "failed", record
    assert "File too large" in record["error"]["message"], record["error"]
    assert ModelRegistry(fs.artifacts).current_version("forecast") == before
    served = fs.run_job("predict", {"ticker": fs.a_ticker(), "horizon": 2}, 60)
    assert served["status"] == "succeeded" and served["model_version"] == before
    _registry_sound(fs.artifacts)
    figures["disk_full_retrain"] = {"retrain": record["error"], "serving": served["status"]}


def test_job_over_its_time_limit_fails_with_timeout(
    fault_stack: FaultStack, figures: dict[str, Any]
) -> None:
    fs = fault_stack
    start_all(fs, TRAINING_TIME_LIMIT="10")
    record = fs.run_job("retrain", {}, 120)
    assert record["status"] == "failed", record
    assert record["error"]["type"] == "TimeLimitExceeded", record["error"]
    # The worker goes on: the next job runs.
    after = fs.run_job("retrain", {"models": ["segment"]}, 120)
    assert after["status"] == "succeeded", after
    figures["time_limit"] = {"error": record["error"], "next_job": after["status"]}


def test_redis_returns_to_baseline_after_retention(
    fault_stack: FaultStack, figures: dict[str, Any]
) -> None:
    """Sustained submits leave nothing behind once their records expire."""
    fs = fault_stack
    start_all(fs, RESULT_TTL="5")
    client = redis.Redis.from_url(fs.redis_url)
    time.sleep(6)  # heartbeats, catalog and listings are all written
    baseline_keys, baseline_mem = client.dbsize(), client.info("memory")["used_memory"]
    names = set(client.keys("*"))
    stream = Stream(fs, seconds=10, interval=0.02)
    stream.run()
    peak_keys, peak_mem = client.dbsize(), client.info("memory")["used_memory"]
    deadline = time.monotonic() + 60  # every job ends (records expire too soon to poll)
    while client.zcard("mlstock:active") and time.monotonic() < deadline:
        time.sleep(0.2)
    done = succeeded(fs.log("worker-inference"))
    answered = sum(job_id in done for job_id in stream.accepted)
    fig: dict[str, Any] = {"accepted": len(stream.accepted), "answered": answered}
    time.sleep(7)  # every record's TTL runs out
    # One more job trims the submit-time index of the expired ids.
    fs.run_job("predict", {"ticker": fs.a_ticker(), "horizon": 1}, 60)
    time.sleep(7)  # and its record expires too
    after_keys, index = client.dbsize(), client.zcard("mlstock:jobs")
    fig |= {
        "keys": {"baseline": baseline_keys, "peak": peak_keys, "after_ttl": after_keys},
        "used_memory": {"baseline": baseline_mem, "peak": peak_mem,
                        "after_ttl": client.info("memory")["used_memory"]},
        "jobs_index_after_ttl": index,
    }  # fmt: skip
    figures["retention"] = fig
    assert answered == len(stream.accepted) > 100
    assert peak_keys > baseline_keys + 100
    # Nothing of any job is left (the submit-time index keeps one stale id until the next
    # submit); what remains are single keys whatever the load: indexes, counters, listings.
    per_job = [k for k in client.keys("*") if re.search(rb"[0-9a-f]{8}-[0-9a-f]{4}-", k)]
    assert per_job == [], per_job
    # The ledger of served forecasts is one index and one hash per model version (one
    # entry per ticker and step served), however many jobs served them.
    ledger = client.keys("mlstock:ledger:*")
    assert len(ledger) == 2, ledger
    assert after_keys - len(ledger) <= baseline_keys + 3, set(client.keys("*")) - names
    assert index <= 1
