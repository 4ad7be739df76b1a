"""`make bench`: what the service costs on top of Celery, against floors from the same run.

Starts its own stack on free ports (redis-server, the gunicorn API, the inference and
training workers with the compose commands, and a worker for a bare no-op Celery task),
trains the first models (or reuses `--artifacts`), measures, prints a table and writes
`bench/results/<name>.json`.

    python -m bench.run [--name NAME] [--artifacts DIR] [--n N] [--soak N] [--skip PHASES]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

from mlstock.launcher import COMMANDS, THREAD_CAPS, free_port, redis_server_binary
from worker.config import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
SIGNING_KEY = os.environ.get("MODEL_SIGNING_KEY") or "bench-signing-key"
NOOP_COMMAND = [
    "celery", "-A", "bench.noop_app", "worker", "-Q", "bench", "-n", "bench@%h",
    "--loglevel", "WARNING",
]  # fmt: skip


# --- statistics -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) of values, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def summary(latencies: list[float], wall: float | None = None) -> dict[str, float]:
    """Return p50/p99/mean in ms, count and (with wall seconds) throughput per second."""
    out = {
        "n": len(latencies),
        "p50_ms": round(pct(latencies, 50) * 1e3, 3),
        "p99_ms": round(pct(latencies, 99) * 1e3, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1e3, 3) if latencies else float("nan"),
    }
    if wall is not None:
        out["throughput_per_s"] = round(len(latencies) / wall, 1)
    return out


def timed(fn: Callable[[], Any], n: int, warmup: int = 5) -> list[float]:
    """Call fn n times after a warm-up; return each call's seconds."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def closed_loop(fn: Callable[[], Any], total: int, concurrency: int) -> dict[str, float]:
    """Run fn `total` times from `concurrency` threads, each call after the previous ends."""
    latencies: list[float] = []
    lock = threading.Lock()
    left = [total]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 (reported after the run)
                errors.append(exc)
                return
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]!r}")
    return {"concurrency": concurrency, **summary(latencies, wall)}


# --- HTTP client: one keep-alive connection per thread --------------------------------------


class Http:
    """A tiny JSON client over one persistent connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.local.conn = conn
        return conn

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send a request; return (status, parsed JSON)."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def job(self, path: str, body: Any) -> dict[str, Any]:
        """Submit a job and long-poll its result; raise unless it succeeded."""
        if "?wait=" in path:  # one request: the submit answers the final record
            status, record = self.call("POST", path, body)
            if status != 200 or record["status"] != "succeeded":
                raise RuntimeError(f"POST {path} -> {status}: {record}")
            return dict(record)
        status, accepted = self.call("POST", path, body)
        if status != 202:
            raise RuntimeError(f"POST {path} -> {status}: {accepted}")
        status, record = self.call("GET", f"/result/{accepted['job_id']}?wait=10")
        if status != 200 or record["status"] != "succeeded":
            raise RuntimeError(f"job {accepted['job_id']} -> {status}: {record}")
        return dict(record)


# --- the stack ------------------------------------------------------------------------------


class BenchStack:
    """Redis, API, workers and the no-op worker, each in its own session, logs in `root`."""

    def __init__(self, root: Path, artifacts: Path, result_ttl: int) -> None:
        self.root = root
        self.artifacts = artifacts
        self.redis_port = free_port()
        self.api_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ)
        for name in Settings.model_fields:  # only what the bench sets
            self.env.pop(name.upper(), None)
        self.env.update(THREAD_CAPS)
        self.env.update(
            REDIS_URL=self.redis_url,
            ARTIFACTS_DIR=str(artifacts),
            MODEL_SIGNING_KEY=SIGNING_KEY,
            HOST="127.0.0.1",
            PORT=str(self.api_port),
            RETRAIN_SCHEDULE="",
            RATE_LIMIT="",  # the bench is one client sending as fast as it can
            RESULT_TTL=str(result_ttl),
            PYTHONPATH=os.pathsep.join([str(ROOT), self.env.get("PYTHONPATH", "")]),
            PATH=os.pathsep.join([str(BIN), self.env.get("PATH", "")]),
        )
        self.redis = redis.Redis.from_url(self.redis_url)

    def settings(self) -> Settings:
        """Return the settings the stack's processes run with."""
        keys = ("REDIS_URL", "ARTIFACTS_DIR", "MODEL_SIGNING_KEY", "RESULT_TTL")
        return Settings(**{k.lower(): self.env[k] for k in keys})  # type: ignore[arg-type]

    def start(self, name: str, cmd: list[str]) -> None:
        """Start one process in its own session."""
        with open(self.root / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                cmd, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def start_redis(self) -> None:
        """Start redis-server as `mlstock up` does, without the append-only file."""
        self.start(
            "redis",
            [redis_server_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.root)],
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                self.redis.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, name: str) -> None:
        """SIGTERM a process's group, SIGKILL what is left after 10 s."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        """Stop everything, newest first."""
        for name in reversed(list(self.procs)):
            self.stop(name)

    def wait_ready(self, client: Http, timeout: float) -> None:
        """Wait for `/ready`: models trained and loaded, workers answering."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited:\n{tail}")
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                status, last = client.call("GET", "/ready")
                if status == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"not ready after {timeout:.0f}s: {last}")

    def worker_rss(self, name: str) -> int:
        """Return the resident memory of a worker and its pool children, in bytes."""
        main = psutil.Process(self.procs[name].pid)
        return sum(p.memory_info().rss for p in [main, *main.children(recursive=True)])

    def loads(self, name: str) -> tuple[int, int]:
        """Return how many first loads (a new pool child's) and reloads (a new current
        version in a living child) a worker's children have logged."""
        text = (self.root / f"{name}.log").read_text(errors="replace")
        reloads = text.count("reloaded model ")
        return text.count("loaded model ") - reloads, reloads


# --- measurements ---------------------------------------------------------------------------


def floor_redis(client: redis.Redis, n: int) -> dict[str, Any]:
    """PING round trips, and pipelined SETs per second."""
    ping = summary(timed(client.ping, n))
    batch, rounds = 1000, 20
    t0 = time.perf_counter()
    for r in range(rounds):
        pipe = client.pipeline(transaction=False)
        for i in range(batch):
            pipe.set(f"bench:pipe:{i}", r, ex=5)
        pipe.execute()
    ops = batch * rounds / (time.perf_counter() - t0)
    return {"ping": ping, "pipelined_ops_per_s": round(ops)}


def interleaved(
    calls: dict[str, Callable[[], Any]], n: int, blocks: int = 10
) -> dict[str, list[float]]:
    """Time each of `calls` n times after a warm-up, in `blocks` alternating blocks: the
    figures a ratio divides see the same state of the machine (a shared VM's speed drifts
    within a run)."""
    for call in calls.values():
        timed(call, 0, warmup=20)
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(blocks):
        for name, call in calls.items():
            out[name] += timed(call, max(1, n // blocks), warmup=0)
    return out


def noop_round_trip(app: Any) -> Callable[[], None]:
    """Return a call that sends the no-op task and waits for its result."""
    from bench.noop_app import TASK_NOOP

    def once() -> None:
        app.send_task(TASK_NOOP).get(timeout=30)

    return once


def floor_celery(app: Any, sequential: list[float], n: int, inflight: int) -> dict[str, Any]:
    """A no-op task's round trip: sequential (timed by the caller), closed-loop at 8, and
    with many in flight."""
    from bench.noop_app import TASK_NOOP

    c8 = closed_loop(noop_round_trip(app), 5 * n, 8)  # as long as the e2e runs at 8
    t0 = time.perf_counter()
    results = [app.send_task(TASK_NOOP) for _ in range(inflight)]
    for res in results:
        res.get(timeout=120)
    wall = time.perf_counter() - t0
    return {
        "sequential": summary(sequential),
        "closed_loop_c8": c8,
        "inflight": {"n": inflight, "throughput_per_s": round(inflight / wall, 1)},
    }


def floor_inproc(settings: Settings, n: int) -> dict[str, Any]:
    """The served models' predict in this process: 1 ticker and all, forecast and segment."""
    from ml.forecast import latest_features
    from ml.registry import DatasetStore, ModelRegistry
    from worker.cache import ModelCache
    from worker.results import LatestForecasts

    cache = ModelCache(
        ModelRegistry(settings.artifacts_dir, signing_key=settings.signing_key),
        DatasetStore(settings.artifacts_dir),
    )
    forecast, segment = cache.get("forecast"), cache.get("segment")
    tickers = sorted(forecast.prices["ticker"].unique())
    one = tickers[:1]
    model, prices = forecast.model, forecast.prices
    out: dict[str, Any] = {"tickers": len(tickers)}
    out["predict_1"] = summary(timed(lambda: model.predict(prices, tickers=one, horizon=5), n))
    out["predict_all"] = summary(timed(lambda: model.predict(prices, horizon=5), n // 4))
    # The path the workers serve from: features of each ticker's last row, once per model.
    t0 = time.perf_counter()
    latest = latest_features(prices)
    out["precompute_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    out["served_1"] = summary(
        timed(lambda: model.forecast_latest(latest, tickers=one, horizon=5), n)
    )
    out["served_all"] = summary(timed(lambda: model.forecast_latest(latest, horizon=5), n))
    # What a live job does instead: read the entries made once per model and horizon.
    table = LatestForecasts(model, latest, forecast.version, 5)
    out["entries_1"] = summary(timed(lambda: table.select(one), n))
    out["entries_all"] = summary(timed(lambda: table.select(None), n))
    seg, seg_prices = segment.model, segment.prices
    out["segment_all"] = summary(timed(lambda: seg.predict(seg_prices), n // 4))
    return out


def floor_http(http: Http, sequential: list[float], n: int) -> dict[str, Any]:
    """GET /health on the same gunicorn/Flask stack: sequential (timed by the caller) and at
    concurrency 8."""
    return {
        "sequential": summary(sequential),
        "closed_loop_c8": closed_loop(lambda: http.call("GET", "/health"), n, 8),
    }


def e2e(
    http: Http,
    path: str,
    body: Any,
    n: int,
    levels: tuple[int, ...],
    sequential: list[float] | None = None,
) -> dict[str, Any]:
    """Submit and long-poll jobs: sequential latency (unless timed by the caller) and
    closed-loop throughput per level."""
    if sequential is None:
        sequential = timed(lambda: http.job(path, body), n, 10)
    return {"sequential": summary(sequential), **under_load(http, path, body, n, levels)}


def under_load(http: Http, path: str, body: Any, n: int, levels: tuple[int, ...]) -> dict[str, Any]:
    """Closed-loop latency and throughput of jobs at each concurrency level."""
    # A few seconds of load each: a shorter burst's rate moved by 10% between runs.
    return {
        f"c{c}": closed_loop(lambda: http.job(path, body), max(5 * n, 100 * c), c) for c in levels
    }


#: A sequential job's stages, as (name, from, to): client clocks around the request and the
#: record's timestamps (one clock: the same machine).
STAGES = (
    ("request to submit time (HTTP in, validation)", "sent", "submitted_at"),
    ("submit time to start (send, queue, delivery)", "submitted_at", "started_at"),
    ("start to end (running, model call, result)", "started_at", "finished_at"),
    ("end to answer read (end, wake, HTTP out)", "finished_at", "received"),
)


def stages(http: Http, path: str, body: Any, n: int) -> dict[str, float]:
    """Mean ms of each of STAGES over n sequential jobs. The record's timestamps are cut to
    whole ms, so each is read as the middle of its ms: the stages' phases are unrelated to
    the ms ticks, so over many jobs the cut averages out, also against the client's clock
    (read as written, the first stage would read 0.5 ms short and the last 0.5 ms long)."""
    from datetime import datetime

    sums = dict.fromkeys((name for name, _, _ in STAGES), 0.0)
    for _ in range(n):
        sent = time.time()
        record = http.job(path, body)
        at = {"sent": sent, "received": time.time()}
        for field in ("submitted_at", "started_at", "finished_at"):
            at[field] = datetime.fromisoformat(record[field]).timestamp() + 0.0005
        for name, start, end in STAGES:
            sums[name] += (at[end] - at[start]) * 1e3
    return {name: round(total / n, 3) for name, total in sums.items()}


def during_retrain(http: Http, body: Any, n: int, limit: float) -> dict[str, Any]:
    """Sequential predicts while a retrain of both models runs, and `n` just before it.

    `n` should be in the thousands: the retrain's window holds over ten thousand predicts,
    and a p99 read off a few hundred is the third-worst of them, not a comparable figure."""
    idle = timed(lambda: http.job("/jobs/predict", body), n, 10)
    status, accepted = http.call("POST", "/jobs/retrain", {"models": ["forecast", "segment"]})
    assert status == 202, accepted
    job_id = accepted["job_id"]
    deadline = time.monotonic() + limit
    while http.call("GET", f"/result/{job_id}")[1]["status"] == "queued":
        time.sleep(0.05)
    latencies: list[float] = []
    t_start = time.perf_counter()
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        http.job("/jobs/predict", body)
        latencies.append(time.perf_counter() - t0)
        if len(latencies) % 20 == 0 and http.call("GET", f"/result/{job_id}")[1]["status"] != (
            "running"
        ):
            break
    window = time.perf_counter() - t_start
    record = http.call("GET", f"/result/{job_id}?wait=30")[1]
    while record["status"] not in ("succeeded", "failed", "cancelled"):
        record = http.call("GET", f"/result/{job_id}?wait=30")[1]
    return {
        "idle": summary(idle),
        "during": summary(latencies),
        "window_s": round(window, 1),
        "retrain_status": record["status"],
        "retrain_seconds": _seconds(record),
    }


def _seconds(record: dict[str, Any]) -> float | None:
    from datetime import datetime

    if not record.get("started_at") or not record.get("finished_at"):
        return None
    start = datetime.fromisoformat(record["started_at"])
    return round((datetime.fromisoformat(record["finished_at"]) - start).total_seconds(), 1)


def batch(http: Http, tickers: list[str], repeats: int) -> dict[str, Any]:
    """One job for all tickers (submitted, then awaited; and in one request) vs one job per
    ticker (all submitted at once, then awaited)."""
    every = {"tickers": tickers}
    one_job = summary(timed(lambda: http.job("/jobs/predict", every), repeats, 3))
    one_request = summary(timed(lambda: http.job("/jobs/predict?wait=10", every), repeats, 3))

    def per_ticker() -> None:
        ids = []
        for t in tickers:
            status, accepted = http.call("POST", "/jobs/predict", {"ticker": t, "horizon": 5})
            assert status == 202, accepted
            ids.append(accepted["job_id"])
        for job_id in ids:
            record = http.call("GET", f"/result/{job_id}?wait=30")[1]
            assert record["status"] == "succeeded", record

    many = summary(timed(per_ticker, max(3, repeats // 4), 1))
    return {
        "tickers": len(tickers),
        "one_job": one_job,
        "one_job_one_request": one_request,
        "job_per_ticker": many,
    }


def without_http(settings: Settings, tickers: list[str], n: int) -> dict[str, Any]:
    """Predict jobs sent by the service's own `enqueue` (Celery, the job record) and awaited
    on their record, decoded as a client would: the service's cost on top of Celery without
    HTTP, for one ticker and for all (what the batch bound, in-process batch + one bare
    Celery round trip, compares with)."""
    from worker.contract import (
        JobStore,
        PredictRequest,
        create_celery,
        enqueue,
        raw_status,
        record_json,
        validation_context,
    )

    celery = create_celery(settings)
    store = JobStore(redis.Redis.from_url(settings.redis_url), settings)

    def job(body: dict[str, Any]) -> Callable[[], None]:
        parsed = PredictRequest.model_validate(body, context=validation_context(settings))
        params = parsed.model_dump(mode="json", exclude_none=True)

        def once() -> None:
            raw = store.wait_raw(enqueue(store, celery, "predict", params)["job_id"], 10)
            if raw is None or raw_status(raw) != "succeeded":
                raise RuntimeError(f"predict without HTTP: {raw}")
            json.loads(record_json(raw))

        return once

    return {
        "predict_1": summary(timed(job({"ticker": tickers[0], "horizon": 5}), n, 10)),
        "predict_all": summary(timed(job({"tickers": tickers, "horizon": 5}), n, 10)),
    }


def soak(
    stack: BenchStack, http: Http, body: Any, total: int, concurrency: int, ttl: int
) -> dict[str, Any]:
    """Many predicts: worker RSS, model loads, Redis keys and memory before and after."""
    # Warm-up: every pool child has the current models, for longer than a child's check
    # of the current version (1 s), so a promotion just before (the retrain's) is taken.
    # Concurrent, as the soak: one job at a time could leave a child without a job.
    warm_until = time.monotonic() + 3
    while time.monotonic() < warm_until:
        closed_loop(lambda: http.job("/jobs/predict", body), 4 * concurrency, concurrency)
    info = stack.redis.info("memory")
    before: dict[str, Any] = {
        "rss_mb": round(stack.worker_rss("worker-inference") / 2**20, 1),
        "loads": stack.loads("worker-inference"),
        "redis_keys": int(stack.redis.dbsize()),
        "redis_used_mb": round(int(info["used_memory"]) / 2**20, 2),
    }
    run = closed_loop(lambda: http.job("/jobs/predict", body), total, concurrency)
    peak_keys = int(stack.redis.dbsize())
    after_run: dict[str, Any] = {
        "rss_mb": round(stack.worker_rss("worker-inference") / 2**20, 1),
        "loads": stack.loads("worker-inference"),
        "redis_keys": peak_keys,
        "redis_used_mb": round(int(stack.redis.info("memory")["used_memory"]) / 2**20, 2),
    }
    # Retention: every job record, result and counter has the stack's RESULT_TTL.
    deadline = time.monotonic() + ttl + 30
    while time.monotonic() < deadline and int(stack.redis.dbsize()) > before["redis_keys"]:
        time.sleep(1)
    after_ttl = {
        "redis_keys": int(stack.redis.dbsize()),
        "redis_used_mb": round(int(stack.redis.info("memory")["used_memory"]) / 2**20, 2),
    }
    return {
        "jobs": total,
        "run": run,
        "before": before,
        "after_run": after_run,
        "after_retention": after_ttl,
        # A reload in a living child is a job's cost; a first load is a new child's, after
        # the prefork pool replaced one (one that died, or passed the memory cap).
        "reloads_after_warmup": after_run["loads"][1] - before["loads"][1],
        "first_loads_after_warmup": after_run["loads"][0] - before["loads"][0],
        "rss_growth_pct": round(100 * (after_run["rss_mb"] / before["rss_mb"] - 1), 1),
    }


def machine() -> dict[str, Any]:
    """Describe the machine and software the figures were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import celery
    import sklearn

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    redis_version = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "scikit_learn": sklearn.__version__,
        "redis_server": redis_version,
        "commit": commit,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --- report ---------------------------------------------------------------------------------


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    """Return the performance targets as ratios, each with whether it is met."""
    floor_p50 = (
        r["floor_celery"]["sequential"]["p50_ms"]
        + r["floor_http"]["sequential"]["p50_ms"]
        + r["floor_inproc"]["served_1"]["p50_ms"]
    )
    floor_p99 = (
        r["floor_celery"]["sequential"]["p99_ms"]
        + r["floor_http"]["sequential"]["p99_ms"]
        + r["floor_inproc"]["served_1"]["p99_ms"]
    )
    celery_tp = r["floor_celery"]["inflight"]["throughput_per_s"]
    celery_c8_tp = r["floor_celery"]["closed_loop_c8"]["throughput_per_s"]
    # The floor a live job pays in process: a read of made forecast entries.
    floor_entries = (
        floor_p50
        - r["floor_inproc"]["served_1"]["p50_ms"]
        + r["floor_inproc"]["entries_1"]["p50_ms"]
    )
    out: dict[str, Any] = {
        "floor_sum_p50_ms": round(floor_p50, 3),
        "floor_sum_p99_ms": round(floor_p99, 3),
    }
    # Each target for both ways of running a job: submit then `GET ?wait` ("e2e", two
    # requests) and a submit with `?wait` ("one_request").
    for prefix, key in (("e2e", "e2e_predict"), ("one_request", "e2e_predict_one_request")):
        seq, c8 = r[key]["sequential"], r[key]["c8"]["throughput_per_s"]
        out |= {
            f"{prefix}_p50_over_floor_sum": (round(seq["p50_ms"] / floor_p50, 2), "<= 1.3"),
            # p99 against the sum of the floors' p50s: a p99 target of 2x those.
            f"{prefix}_p99_over_floor_sum": (round(seq["p99_ms"] / floor_p50, 2), "<= 2.0"),
            f"{prefix}_p99_over_floor_p99_sum": (round(seq["p99_ms"] / floor_p99, 2), "info"),
            f"{prefix}_p50_over_floor_sum_entries": (
                round(seq["p50_ms"] / floor_entries, 2),
                "info",
            ),
            f"{prefix}_c8_tput_over_celery": (round(c8 / celery_tp, 2), ">= 0.7"),
            f"{prefix}_c8_tput_over_celery_c8": (round(c8 / celery_c8_tp, 2), "info"),
        }
    if "batch" in r:
        b = r["batch"]
        inproc_all = r["floor_inproc"]["served_all"]["p50_ms"]
        celery_p50 = r["floor_celery"]["sequential"]["p50_ms"]
        jobs = {"batch": b["one_job"], "batch_one_request": b["one_job_one_request"]}
        if "without_http" in r:
            jobs["batch_without_http"] = r["without_http"]["predict_all"]
        for prefix, figures in jobs.items():
            # The target as written, 2 x in-process batch + one Celery round trip; and, for
            # information, read as 2 x (in-process batch + one Celery round trip).
            out[f"{prefix}_over_2inproc_plus_celery"] = (
                round(figures["p50_ms"] / (2 * inproc_all + celery_p50), 2),
                "<= 1",
            )
            out[f"{prefix}_over_2x_inproc_plus_celery"] = (
                round(figures["p50_ms"] / (2 * (inproc_all + celery_p50)), 2),
                "info",
            )
        out["batch_speedup_vs_job_per_ticker"] = (
            round(b["job_per_ticker"]["p50_ms"] / b["one_job"]["p50_ms"], 1),
            ">= 5",
        )
    if "e2e_predict_2workers" in r:
        two, one = r["e2e_predict_2workers"]["c8"], r["e2e_predict_1worker"]["c8"]
        out["scale_2_over_1_workers_c8"] = (
            round(two["throughput_per_s"] / one["throughput_per_s"], 2),
            "info",
        )
    if "predict_during_retrain" in r:
        d, idle = r["predict_during_retrain"]["during"], r["predict_during_retrain"]["idle"]
        out["retrain_p50_over_idle"] = (round(d["p50_ms"] / idle["p50_ms"], 2), "<= 1.2")
        out["retrain_p99_over_idle"] = (round(d["p99_ms"] / idle["p99_ms"], 2), "<= 1.2")
    if "soak" in r:
        s = r["soak"]
        out["soak_reloads_after_warmup"] = (s["reloads_after_warmup"], "== 0")
        out["soak_new_child_loads"] = (s["first_loads_after_warmup"], "== 0")
        out["soak_rss_growth_pct"] = (s["rss_growth_pct"], "< 10")
        out["soak_keys_after_over_before"] = (
            s["after_retention"]["redis_keys"] - s["before"]["redis_keys"],
            "<= 0",
        )
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = {"value": value[0], "target": value[1], "met": _met(*value)}
    return out


def _met(value: float, target: str) -> bool | None:
    op, _, bound = target.partition(" ")
    if op == "info":
        return None
    b = float(bound)
    return {"<=": value <= b, ">=": value >= b, "<": value < b, "==": value == b}[op]


def table(r: dict[str, Any]) -> str:
    """Render the figures as a plain-text table."""
    rows: list[tuple[str, str]] = []

    def lat(label: str, s: dict[str, Any]) -> None:
        extra = f"  {s['throughput_per_s']:>8.1f}/s" if "throughput_per_s" in s else ""
        rows.append((label, f"p50 {s['p50_ms']:>8.2f} ms  p99 {s['p99_ms']:>8.2f} ms{extra}"))

    lat("floor_redis PING", r["floor_redis"]["ping"])
    rows.append(("floor_redis pipelined", f"{r['floor_redis']['pipelined_ops_per_s']} ops/s"))
    lat("floor_celery sequential", r["floor_celery"]["sequential"])
    lat("floor_celery c8", r["floor_celery"]["closed_loop_c8"])
    rows.append(
        (
            "floor_celery in flight",
            f"{r['floor_celery']['inflight']['throughput_per_s']}/s "
            f"({r['floor_celery']['inflight']['n']} tasks)",
        )
    )
    inproc = r["floor_inproc"]
    for key in (
        "predict_1", "predict_all", "served_1", "served_all", "entries_1", "entries_all",
        "segment_all",
    ):  # fmt: skip
        lat(f"floor_inproc {key}", inproc[key])
    lat("floor_http GET /health", r["floor_http"]["sequential"])
    lat("floor_http c8", r["floor_http"]["closed_loop_c8"])
    for name in (
        "e2e_predict", "e2e_predict_one_request", "e2e_segment", "e2e_predict_price",
        "e2e_predict_1worker", "e2e_predict_2workers",
    ):  # fmt: skip
        for level, s in r.get(name, {}).items():
            lat(f"{name} {level}", s)
    for flow in ("e2e_predict", "e2e_predict_one_request"):
        for name, ms in r.get(f"{flow}_stages_ms", {}).items():
            rows.append((f"{flow} stage: {name}", f"mean {ms:>7.2f} ms"))
    if "predict_during_retrain" in r:
        lat("predict just before a retrain", r["predict_during_retrain"]["idle"])
        lat("predict during retrain", r["predict_during_retrain"]["during"])
    if "batch" in r:
        lat(f"batch: 1 job, {r['batch']['tickers']} tickers", r["batch"]["one_job"])
        lat("batch: the same in one request", r["batch"]["one_job_one_request"])
        lat("batch: 1 job per ticker", r["batch"]["job_per_ticker"])
    for key, figures in r.get("without_http", {}).items():
        lat(f"without HTTP (enqueue, record): {key}", figures)
    if "soak" in r:
        s = r["soak"]
        lat(f"soak {s['jobs']} jobs", s["run"])
        rows.append(
            ("soak worker RSS MB", f"{s['before']['rss_mb']} -> {s['after_run']['rss_mb']}")
        )
        rows.append(
            (
                "soak redis keys",
                f"{s['before']['redis_keys']} -> {s['after_run']['redis_keys']} -> "
                f"{s['after_retention']['redis_keys']} after retention",
            )
        )
        rows.append(
            (
                "soak redis MB",
                f"{s['before']['redis_used_mb']} -> {s['after_run']['redis_used_mb']} -> "
                f"{s['after_retention']['redis_used_mb']}",
            )
        )
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    for key, value in r["ratios"].items():
        if isinstance(value, dict):
            met = {True: "met", False: "MISSED", None: ""}[value["met"]]
            lines.append(f"{key:<{width}}  {value['value']:>8}  ({value['target']}) {met}")
        else:
            lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def new_stack(prefix: str, trained: Path | None, result_ttl: int) -> tuple[BenchStack, Http]:
    """Return a stack in a fresh work directory (serving a copy of `trained`, if given)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    artifacts = root / "artifacts"
    if trained is not None:
        for part in ("models", "datasets"):
            if (trained / part).exists():
                shutil.copytree(trained / part, artifacts / part)
    artifacts.mkdir(exist_ok=True)
    stack = BenchStack(root, artifacts, result_ttl)
    return stack, Http(stack.api_port)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", default="bench", help="results go to bench/results/NAME.json")
    parser.add_argument("--artifacts", type=Path, help="a trained registry to copy and serve")
    parser.add_argument("--n", type=int, default=300, help="samples per latency figure")
    parser.add_argument("--soak", type=int, default=3000, help="predict jobs in the soak (0: off)")
    parser.add_argument("--result-ttl", type=int, default=30, help="RESULT_TTL of the stack")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    stack, http = new_stack("mlstock-bench-", args.artifacts, args.result_ttl)
    root = stack.root
    r: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"artifacts": None}}

    def say(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    try:
        stack.start_redis()
        for name in ("worker-training", "worker-inference", "api"):
            stack.start(name, COMMANDS[name])
        stack.start("worker-noop", NOOP_COMMAND)
        say(f"stack in {root}; waiting for models (the first training takes ~20-60 s)")
        t0 = time.monotonic()
        stack.wait_ready(http, timeout=900)
        say(f"ready after {time.monotonic() - t0:.0f}s")
        settings = stack.settings()
        catalog = json.loads(stack.redis.get("mlstock:catalog") or "{}")
        tickers = list(catalog["forecast"]["tickers"])
        body = {"ticker": tickers[0], "horizon": 5}
        n = args.n

        say("floors: redis, celery, in-process, http")
        r["floor_redis"] = floor_redis(stack.redis, n)
        r["floor_inproc"] = floor_inproc(settings, n)
        from bench.noop_app import create_noop_celery

        noop = create_noop_celery(settings)
        # The sequential figures the e2e ratios divide, timed in alternating blocks.
        seq = interleaved(
            {
                "celery": noop_round_trip(noop),
                "http": lambda: http.call("GET", "/health"),
                "e2e": lambda: http.job("/jobs/predict", body),
                "e2e_one": lambda: http.job("/jobs/predict?wait=10", body),
            },
            n,
        )
        r["floor_celery"] = floor_celery(noop, seq["celery"], n, inflight=max(1000, 10 * n))
        r["floor_http"] = floor_http(http, seq["http"], n)
        say("end to end: predict, segment, /predict_price")
        r["e2e_predict"] = e2e(http, "/jobs/predict", body, n, (1, 8, 32), seq["e2e"])
        r["e2e_predict_stages_ms"] = stages(http, "/jobs/predict", body, n)
        # The same jobs, submitted and awaited in one request (`POST ...?wait=`).
        r["e2e_predict_one_request"] = e2e(
            http, "/jobs/predict?wait=10", body, n, (1, 8, 32), seq["e2e_one"]
        )
        r["e2e_predict_one_request_stages_ms"] = stages(http, "/jobs/predict?wait=10", body, n)
        r["e2e_segment"] = e2e(http, "/jobs/segment", {}, n // 2, (8,))
        series = [100.0 + 0.1 * i for i in range(120)]
        r["e2e_predict_price"] = e2e(http, "/predict_price", {"features": series}, n // 2, (8,))
        if "batch" not in skip:
            say("batch: one job for all tickers vs one per ticker")
            r["batch"] = batch(http, tickers, max(10, n // 10))
            r["without_http"] = without_http(settings, tickers, n // 3)
        if "scale" not in skip:
            say("scale-out: 1 inference worker, then 2")
            # Both measured in this phase, so they see the same state of the machine.
            r["e2e_predict_1worker"] = under_load(http, "/jobs/predict", body, n, (8, 32))
            cmd = [
                a if a != "inference@%h" else "inference2@%h" for a in COMMANDS["worker-inference"]
            ]
            stack.start("worker-inference-2", cmd)
            time.sleep(8)  # it announces itself
            # Its children load the models on their first jobs: not what is measured.
            warm_until = time.monotonic() + 3
            while time.monotonic() < warm_until:
                closed_loop(lambda: http.job("/jobs/predict", body), 64, 8)
            r["e2e_predict_2workers"] = under_load(http, "/jobs/predict", body, n, (8, 32))
            stack.stop("worker-inference-2")
        if "retrain" not in skip:
            say("predict during a retrain")
            r["predict_during_retrain"] = during_retrain(http, body, max(n, 3000), limit=600)
        if args.soak and "soak" not in skip:
            say(f"soak: {args.soak} predict jobs, then retention ({args.result_ttl}s)")
            r["soak"] = soak(stack, http, body, args.soak, 8, args.result_ttl)
        r["ratios"] = ratios(r)
    finally:
        # The no-op task's results unsubscribe when collected: while Redis is still up.
        gc.collect()
        stack.stop_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps(r, indent=2))
    print(table(r))
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
