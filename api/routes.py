"""HTTP routes: submit jobs, read their records, report health."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from celery import Celery
from flask import Blueprint, Response, current_app, jsonify, request, url_for

from api.errors import ApiError, unavailable, validation_problem
from worker.config import Settings
from worker.contract import (
    CATALOG_KEY,
    JOB_TYPES,
    QUEUE_INFERENCE,
    QUEUE_TRAINING,
    REQUEST_SCHEMAS,
    WORKERS_KEY,
    JobStore,
    LegacyPredictPrice,
    LegacySegment,
    PredictRequest,
    SegmentRequest,
    new_job_id,
)

bp = Blueprint("api", __name__)
#: A worker that has not announced itself for this long counts as gone.
WORKER_STALE_SECONDS = 20.0


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def _jobs() -> JobStore:
    store: JobStore = current_app.extensions["jobs"]
    return store


def _redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions["redis"]
    return client


def _limits() -> dict[str, int]:
    s = _settings()
    return {"max_horizon": s.max_horizon, "max_batch": s.max_batch}


def _json_body() -> dict[str, Any]:
    """Return the request's JSON object; an empty body is `{}`."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    if not request.is_json:
        raise ApiError(415, "Unsupported media type", "send the body as application/json")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "Malformed JSON", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise validation_problem(
            [{"loc": (), "msg": "the body must be a JSON object", "type": "dict_type"}]
        )
    return body


def _catalog() -> dict[str, Any]:
    raw = _redis().get(CATALOG_KEY)
    return json.loads(raw) if raw else {}


def _check_against_models(job_type: str, parsed: Any) -> None:
    """Refuse at submit what the served models cannot answer, when the workers have said
    what they serve; without a catalog the job runs and fails with the reason instead."""
    catalog = _catalog()
    errors: list[dict[str, Any]] = []
    if isinstance(parsed, PredictRequest) and "forecast" in catalog:
        served = catalog["forecast"]
        asked = parsed.subject_tickers() or []
        known = served.get("tickers") or []
        unknown = [t for t in asked if t not in set(known)]
        if unknown:
            field = "ticker" if parsed.ticker is not None else "tickers"
            errors.append(
                {
                    "loc": (field,),
                    "msg": f"unknown ticker(s): {', '.join(unknown)}; the model serves "
                    f"{len(known)} tickers, e.g. {', '.join(known[:5])}",
                    "type": "unknown_ticker",
                }
            )
        horizon = served.get("horizon")
        if horizon and parsed.horizon > horizon:
            errors.append(
                {
                    "loc": ("horizon",),
                    "msg": f"the served model forecasts at most {horizon} steps",
                    "type": "less_than_equal",
                }
            )
    if isinstance(parsed, SegmentRequest) and parsed.data is not None and "segment" in catalog:
        features = catalog["segment"].get("features") or []
        if features and len(parsed.data[0]) != len(features):
            errors.append(
                {
                    "loc": ("data",),
                    "msg": f"each row needs {len(features)} features in this order: "
                    + ", ".join(features),
                    "type": "wrong_width",
                }
            )
    if errors:
        raise validation_problem(errors)


def submit(job_type: str, body: dict[str, Any]) -> Response:
    """Validate, record and enqueue a job; answer 202 with where to poll."""
    parsed = REQUEST_SCHEMAS[job_type].model_validate(body, context=_limits())
    _check_against_models(job_type, parsed)
    params = parsed.model_dump(mode="json", exclude_none=True)
    task_name, queue = JOB_TYPES[job_type]
    job_id = new_job_id()
    store = _jobs()
    record = store.create(job_id, job_type, params)
    celery: Celery = current_app.extensions["celery"]
    try:
        celery.send_task(task_name, kwargs={"request": params}, task_id=job_id, queue=queue)
    except Exception as exc:
        # The record says what happened: the job was never queued.
        store.transition(
            job_id, "failed", error={"type": "EnqueueError", "message": str(exc)}, stage="failed"
        )
        raise unavailable("the job could not be queued; try again shortly") from exc
    status_url = url_for("api.result", job_id=job_id)
    resp = jsonify({"job_id": job_id, "status": record["status"], "status_url": status_url})
    resp.status_code = 202
    resp.headers["Location"] = status_url
    return resp


@bp.post("/jobs/<job_type>")
def create_job(job_type: str) -> Response:
    """Submit a predict, segment or retrain job."""
    if job_type not in JOB_TYPES:
        raise ApiError(
            404, "Not found", f"no job type {job_type!r}; one of: {', '.join(JOB_TYPES)}"
        )
    return submit(job_type, _json_body())


@bp.post("/predict_price")
def predict_price() -> Response:
    """Submit a predict job in the earlier scaffold's form `{"features": [prices]}`."""
    legacy = LegacyPredictPrice.model_validate(_json_body())
    return submit("predict", legacy.to_job())


@bp.post("/segment")
def segment_alias() -> Response:
    """Submit a segment job in the earlier scaffold's form `{"data": [[...]]}`."""
    legacy = LegacySegment.model_validate(_json_body())
    return submit("segment", legacy.to_job())


@bp.get("/result/<job_id>")
def result(job_id: str) -> Response:
    """Return a job's record; `?wait=S` holds the answer until the job ends or S seconds."""
    raw_wait = request.args.get("wait", "0")
    try:
        wait = float(raw_wait)
        if not 0 <= wait < float("inf"):
            raise ValueError
    except ValueError:
        raise validation_problem(
            [{"loc": ("wait",), "msg": "must be a number of seconds >= 0", "type": "float_type"}]
        ) from None
    record = _jobs().wait(job_id, min(wait, _settings().wait_max))
    if record is None:
        raise ApiError(
            404, "Job not found", f"no job {job_id!r}: it was never issued, or it has expired"
        )
    return jsonify(record)


@bp.get("/health")
def health() -> Response:
    """Answer while the process is alive."""
    return jsonify({"status": "ok"})


def readiness() -> tuple[bool, list[dict[str, Any]]]:
    """Check Redis, a live worker on each queue, and served models."""
    checks: list[dict[str, Any]] = []
    try:
        _redis().ping()
    except redis.RedisError as exc:
        checks.append({"name": "redis", "ok": False, "detail": str(exc)})
        return False, checks
    checks.append({"name": "redis", "ok": True, "detail": "reachable"})
    now = time.time()
    live: dict[str, list[str]] = {QUEUE_INFERENCE: [], QUEUE_TRAINING: []}
    for host, raw in _redis().hgetall(WORKERS_KEY).items():
        entry = json.loads(raw)
        if now - float(entry.get("at", 0)) <= WORKER_STALE_SECONDS:
            for queue in entry.get("queues", []):
                live.setdefault(queue, []).append(
                    host.decode() if isinstance(host, bytes) else str(host)
                )
    for queue in (QUEUE_INFERENCE, QUEUE_TRAINING):
        hosts = sorted(live[queue])
        checks.append(
            {
                "name": f"workers:{queue}",
                "ok": bool(hosts),
                "detail": ", ".join(hosts) if hosts else f"no worker consumes the {queue} queue",
            }
        )
    catalog = _catalog()
    for name in ("forecast", "segment"):
        entry = catalog.get(name)
        checks.append(
            {
                "name": f"model:{name}",
                "ok": entry is not None,
                "detail": f"version {entry['version']}" if entry else "no current version yet",
            }
        )
    return all(c["ok"] for c in checks), checks


@bp.get("/ready")
def ready() -> Response:
    """Answer 200 when jobs can be served, else 503 with what is missing."""
    ok, checks = readiness()
    resp = jsonify({"status": "ready" if ok else "not ready", "checks": checks})
    resp.status_code = 200 if ok else 503
    return resp


@bp.get("/")
def index() -> Response:
    """Describe the API's endpoints."""
    return jsonify(
        {
            "service": "mlstockprediction",
            "endpoints": {
                "POST /jobs/predict": '{"ticker": "TEC01", "horizon": 5}',
                "POST /jobs/segment": '{"tickers": [...]} or {} for all',
                "POST /jobs/retrain": '{"models": ["forecast", "segment"]}',
                "GET /result/<job_id>[?wait=S]": "the job record",
                "GET /health": "process alive",
                "GET /ready": "Redis, workers and models",
            },
        }
    )
