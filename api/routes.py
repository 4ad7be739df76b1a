"""HTTP routes: submit jobs, read their records, report health."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery
from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from kombu.exceptions import KombuError

from api.admin import jobs as _jobs
from api.admin import json_body as _json_body
from api.admin import redis_client as _redis
from api.admin import settings as _settings
from api.admin import shared_read
from api.doctor import diagnose
from api.errors import ApiError, unavailable, validation_problem
from api.schemas import Health, JobAccepted, JobList, JobsQuery, Ready, Schedule, reply
from worker.contract import (
    BEAT_LAST_KEY,
    CATALOG_KEY,
    JOB_TYPES,
    REQUEST_SCHEMAS,
    TERMINAL,
    JobConflict,
    LegacyPredictPrice,
    LegacySegment,
    PredictRequest,
    RawRecord,
    SegmentRequest,
    body_digest,
    enqueue,
    new_job_id,
    notify,
    now_iso,
    parse_crontab,
    raw_status,
    record_json,
    text,
    validation_context,
)
from worker.observe import job_counts

bp = Blueprint("api", __name__)


def _catalog() -> dict[str, Any]:
    def read() -> dict[str, Any]:
        raw = _redis().get(CATALOG_KEY)
        return json.loads(raw) if raw else {}

    # The workers republish it every few seconds and after each retrain or promotion.
    return shared_read("catalog", read)


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
    if isinstance(parsed, SegmentRequest) and parsed.tickers and "segment" in catalog:
        known = set(catalog["segment"].get("tickers") or [])
        unknown = [t for t in parsed.tickers if known and t not in known]
        if unknown:
            errors.append(
                {
                    "loc": ("tickers",),
                    "msg": f"unknown ticker(s): {', '.join(unknown)}",
                    "type": "unknown_ticker",
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


def _wait_seconds() -> float:
    """Return the request's `?wait=S` capped at WAIT_MAX (0 without one); 422 when it is
    not a number of seconds >= 0."""
    try:
        wait = float(request.args.get("wait", "0"))
        if not 0 <= wait < float("inf"):
            raise ValueError
    except ValueError:
        raise validation_problem(
            [{"loc": ("wait",), "msg": "must be a number of seconds >= 0", "type": "float_type"}]
        ) from None
    return min(wait, _settings().wait_max)


def submit(job_type: str, body: dict[str, Any]) -> Response:
    """Validate, record and enqueue a job; answer 202 with where to poll.

    With an `Idempotency-Key` header the same key and body return the same job; the same
    key with another body is a 409. With `?wait=S` the answer is the final record (200)
    when the job ends within S seconds (at most WAIT_MAX), else the 202.
    """
    wait = _wait_seconds()
    parsed = REQUEST_SCHEMAS[job_type].model_validate(body, context=validation_context(_settings()))
    _check_against_models(job_type, parsed)
    params = parsed.model_dump(mode="json", exclude_none=True)
    store = _jobs()
    celery: Celery = current_app.extensions["celery"]
    key = request.headers.get("Idempotency-Key")
    job_id = new_job_id()
    if key is not None:
        if not 1 <= len(key) <= 255:
            raise validation_problem(
                [{"loc": ("Idempotency-Key",), "msg": "1 to 255 characters", "type": "header"}]
            )
        try:
            replayed = store.claim_idempotency(
                key, body_digest(job_type, params), job_id, ttl=store.ttl(job_type)
            )
        except JobConflict as exc:
            raise ApiError(
                409,
                "Idempotency-Key reused",
                f"this key was used for job {exc.job_id} with a different request",
                type_="/problems/idempotency-conflict",
                job_id=exc.job_id,
            ) from exc
        if replayed is not None:
            record = store.get(replayed) or {"job_id": replayed}
            return _accepted(record, replayed=True, wait=wait)
    try:
        record = enqueue(store, celery, job_type, params, job_id=job_id)
    except (redis.RedisError, KombuError) as exc:
        if key is not None:
            store.release_idempotency(key)
        raise unavailable("the job could not be queued; try again shortly") from exc
    if key is not None and record["job_id"] != job_id:  # joined a retrain already in flight
        store.claim_idempotency(
            key, body_digest(job_type, params), record["job_id"], ttl=store.ttl(job_type),
            rebind=True,
        )  # fmt: skip
    return _accepted(record, replayed=record["job_id"] != job_id, wait=wait)


def _accepted(record: dict[str, Any], *, replayed: bool = False, wait: float = 0) -> Response:
    job_id = str(record["job_id"])
    status_url = url_for("api.result", job_id=job_id)
    final = _jobs().wait_raw(job_id, wait) if wait > 0 else None  # submit and long-poll
    status = None if final is None else raw_status(final)
    g.submitted = (job_id, status or record.get("status", "queued"))  # for the metrics' log
    if final is not None and status in TERMINAL:
        resp = _record_response(final)
    else:
        resp = reply(
            JobAccepted, 202, job_id=job_id, status=record.get("status", "queued"),
            status_url=status_url,
        )  # fmt: skip
    resp.headers["Location"] = status_url
    if replayed:
        resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _record_response(raw: RawRecord) -> Response:
    """Answer with a stored job record, passed through without decoding its result."""
    return Response(record_json(raw), mimetype="application/json")


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
    legacy = LegacyPredictPrice.model_validate(
        _json_body(), context=validation_context(_settings())
    )
    return submit("predict", legacy.to_job())


@bp.post("/segment")
def segment_alias() -> Response:
    """Submit a segment job in the earlier scaffold's form `{"data": [[...]]}`."""
    legacy = LegacySegment.model_validate(_json_body(), context=validation_context(_settings()))
    return submit("segment", legacy.to_job())


@bp.get("/result/<job_id>")
def result(job_id: str) -> Response:
    """Return a job's record; `?wait=S` holds the answer until the job ends or S seconds."""
    raw = _jobs().wait_raw(job_id, _wait_seconds())
    if raw is None:
        raise ApiError(
            404, "Job not found", f"no job {job_id!r}: it was never issued, or it has expired"
        )
    return _record_response(raw)


@bp.get("/jobs")
def list_jobs() -> Response:
    """List recent jobs, newest first; `next_cursor` fetches the next page."""
    query = JobsQuery.model_validate(request.args.to_dict())
    before = None
    if query.cursor:
        score, job_id = query.cursor.split(":", 1)
        before = (float(score), job_id)
    since = None
    if query.since is not None:
        moment = query.since if query.since.tzinfo else query.since.replace(tzinfo=UTC)
        since = moment.timestamp()
    jobs, after = _jobs().list(
        job_type=query.type, status=query.status, since=since, before=before, limit=query.limit
    )
    cursor = None if after is None else f"{after[0]!r}:{after[1]}"
    return reply(JobList, jobs=jobs, next_cursor=cursor)


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel a queued or running job; a running retrain stops at its next checkpoint."""
    store = _jobs()
    record = store.get(job_id)
    if record is None:
        raise ApiError(404, "Job not found", f"no job {job_id!r}: never issued, or expired")
    fields: dict[str, Any] = {"stage": "cancelled", "error": None, "finished_at": now_iso()}
    counts = job_counts(record | fields | {"status": "cancelled"})
    moved = store.transition(job_id, record["type"], "cancelled", counts=counts, **fields)
    if not moved:
        final = store.get(job_id) or record
        raise ApiError(
            409,
            "Job already finished",
            f"job {job_id} ended {final['status']}; only queued or running jobs can be cancelled",
            type_="/problems/job-finished",
            job_status=final["status"],
        )
    record = store.get(job_id) or record
    notify(current_app.extensions["celery"], record)
    return jsonify(record)


@bp.get("/schedule")
def schedule() -> Response:
    """Show the retrain schedule, its next run and beat's last tick."""
    expr = _settings().retrain_schedule.strip()
    last = _redis().get(BEAT_LAST_KEY)
    next_run = None
    if expr:
        now = datetime.now(UTC)
        next_run = now_iso(now + parse_crontab(expr).remaining_estimate(now))
    return reply(
        Schedule, retrain_schedule=expr or None, timezone="UTC", next_run_at=next_run,
        last_tick_at=None if last is None else text(last),
    )  # fmt: skip


@bp.get("/health")
def health() -> Response:
    """Answer while the process is alive."""
    return reply(Health, status="ok")


@bp.get("/ready")
def ready() -> Response:
    """Answer 200 when jobs can be served, else 503 with what is missing."""
    ok, checks = diagnose(_redis(), _settings())
    return reply(Ready, 200 if ok else 503, status="ready" if ok else "not ready", checks=checks)
