"""`GET /metrics` for Prometheus, and a log line per submitted job.

The API counts what it sees (jobs submitted, HTTP requests and their latency) in
prometheus-client metrics, in multiprocess mode under gunicorn (PROMETHEUS_MULTIPROC_DIR,
made fresh by `api.gunicorn_conf`). What the workers do (jobs finished by type and status,
durations, queue waits, predictions) they count in Redis (`worker.observe`); the scrape
reads those, the queue depths and the served model versions from Redis as well.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.submits import submitted_type
from worker.contract import CATALOG_KEY, WORKERS_KEY, live_workers
from worker.observe import DURATION_BUCKETS, WAIT_BUCKETS, queue_depths, read_job_metrics

bp = Blueprint("metrics", __name__)
log = logging.getLogger("api.jobs")


class ApiMetrics:
    """The API process's own metrics."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.submitted = Counter(
            "mlstock_jobs_submitted", "Jobs accepted (202), by type.", ["type"], registry=registry
        )
        self.requests = Counter(
            "mlstock_http_requests",
            "HTTP requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "mlstock_http_request_duration_seconds",
            "Time to answer an HTTP request (long-polls included), by endpoint.",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )


class RedisCollector(Collector):
    """Collect at scrape time what lives in Redis: worker-side job counters, queue depths,
    live workers and the model versions served."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families read from Redis."""
        try:
            counters = read_job_metrics(self.client)
            depths = queue_depths(self.client)
            raw_catalog = self.client.get(CATALOG_KEY)
            workers = self.client.hgetall(WORKERS_KEY)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            up = GaugeMetricFamily("mlstock_redis_up", "Redis answered the scrape.")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("mlstock_redis_up", "Redis answered the scrape.")
        up.add_metric([], 1)
        yield up
        yield from _job_families(counters)
        depth = GaugeMetricFamily(
            "mlstock_queue_depth", "Messages waiting in each queue.", labels=["queue"]
        )
        for queue, n in depths.items():
            depth.add_metric([queue], n)
        yield depth
        yield _workers_family(workers)
        catalog = json.loads(raw_catalog) if raw_catalog else {}
        info = GaugeMetricFamily(
            "mlstock_model_served",
            "1 for the version of each model the workers serve.",
            labels=["model", "version"],
        )
        for name, entry in catalog.items():
            info.add_metric([name, str(entry.get("version"))], 1)
        yield info


def _job_families(counters: dict[str, float]) -> Iterator[Metric]:
    finished = CounterMetricFamily(
        "mlstock_jobs_finished", "Jobs that ended, by type and status.", labels=["type", "status"]
    )
    predictions = CounterMetricFamily(
        "mlstock_predictions",
        "Forecasts (per ticker) and segment assignments returned by succeeded jobs.",
        labels=["type"],
    )
    for key, value in sorted(counters.items()):
        parts = key.split("|")
        if parts[0] == "finished":
            finished.add_metric(parts[1:3], value)
        elif parts[0] == "predictions":
            predictions.add_metric(parts[1:2], value)
    yield finished
    yield predictions
    yield _histogram(
        counters,
        "duration",
        "mlstock_job_duration_seconds",
        "Time a job ran, from start to end, by type.",
        DURATION_BUCKETS,
    )
    yield _histogram(
        counters,
        "wait",
        "mlstock_job_queue_wait_seconds",
        "Time a job waited in its queue, from submit to start, by type.",
        WAIT_BUCKETS,
    )


def _histogram(
    counters: dict[str, float], prefix: str, name: str, doc: str, bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["type"])
    types = sorted({k.split("|")[1] for k in counters if k.startswith(f"{prefix}_count|")})
    for job_type in types:
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in (*bounds, float("inf")):
            label = "+Inf" if bound == float("inf") else repr(bound)
            running += counters.get(f"{prefix}_bucket|{job_type}|{label}", 0.0)
            buckets.append((label, running))
        family.add_metric([job_type], buckets, counters.get(f"{prefix}_sum|{job_type}", 0.0))
    return family


def _workers_family(workers: dict[Any, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "mlstock_workers", "Workers that announced themselves lately, by queue.", labels=["queue"]
    )
    live: dict[str, int] = {}
    for entry in live_workers(workers).values():
        for queue in entry["queues"]:
            live[queue] = live.get(queue, 0) + 1
    for queue, n in sorted(live.items()):
        family.add_metric([queue], n)
    return family


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def init_metrics(app: Flask) -> None:
    """Create the app's metrics and register the hooks that feed them."""
    # Under gunicorn every process writes its values to files the scrape merges; without a
    # multiprocess directory (tests, `flask run`) the app keeps them in its own registry.
    own = None if _multiprocess_dir() else CollectorRegistry()
    app.extensions["metrics"] = ApiMetrics(own)
    if own is not None:
        own.register(RedisCollector(app.extensions["redis"]))
    app.extensions["metrics_registry"] = own
    app.before_request(_started)
    app.after_request(_observe)
    app.register_blueprint(bp)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _observe(resp: Response) -> Response:
    metrics: ApiMetrics = current_app.extensions["metrics"]
    endpoint = request.endpoint or "unmatched"
    metrics.requests.labels(endpoint, request.method, str(resp.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
    # 202, or 200 with the final record for a submit with `?wait=`.
    job_type = submitted_type()
    if job_type is not None and resp.status_code in (200, 202):
        replayed = resp.headers.get("Idempotent-Replayed") == "true"
        if not replayed:
            metrics.submitted.labels(str(job_type)).inc()
        # What `submit` answered with, without parsing the body (with `?wait=` it can be
        # the final record, result and all).
        job_id, status = g.get("submitted", (None, None))
        log.info(
            "job submitted" if not replayed else "job submitted again (same job)",
            extra={"job_id": job_id, "type": job_type, "status": status},
        )
    return resp


@bp.get("/metrics")
def metrics() -> Response:
    """Expose the metrics in Prometheus's text format."""
    registry: CollectorRegistry | None = current_app.extensions["metrics_registry"]
    if registry is None:  # multiprocess: merge every gunicorn worker's files at scrape time
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=_multiprocess_dir())  # type: ignore[no-untyped-call]
        registry.register(RedisCollector(current_app.extensions["redis"]))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
