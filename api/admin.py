"""What the blueprints share: the app's settings, Redis and job store, the JSON body, and
quick admin jobs (promote, activate, import), recorded and queued like any job, then
awaited for a few seconds so the usual answer is the outcome itself."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from flask import Response, current_app, request, url_for
from kombu.exceptions import KombuError

from api.errors import ApiError, unavailable, validation_problem
from api.schemas import AdminOutcome, JobAccepted, reply
from worker.config import Settings
from worker.contract import JobStore
from worker.contract import enqueue as queue_job

T = TypeVar("T")


def settings() -> Settings:
    """Return the app's settings."""
    conf: Settings = current_app.config["SETTINGS"]
    return conf


def jobs() -> JobStore:
    """Return the app's job store."""
    store: JobStore = current_app.extensions["jobs"]
    return store


def redis_client() -> redis.Redis:
    """Return the app's Redis client."""
    client: redis.Redis = current_app.extensions["redis"]
    return client


#: Seconds a process reuses what it read of slowly changing Redis state on the submit path
#: (the served catalog, the inference queue's depth): at most one read each per second.
SHARED_READ_TTL = 1.0


def shared_read(name: str, read: Callable[[], T]) -> T:
    """Return `read()`, read at most once per SHARED_READ_TTL seconds by this app."""
    cache: dict[str, tuple[float, Any]] = current_app.extensions.setdefault("mlstock_reads", {})
    now = time.monotonic()
    hit = cache.get(name)
    if hit is not None and now - hit[0] < SHARED_READ_TTL:
        return cast(T, hit[1])
    value = read()
    cache[name] = (now, value)
    return value


def json_body() -> dict[str, Any]:
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


def published(key: str, what: str) -> dict[str, Any]:
    """Return a listing the workers publish in Redis; 503 until one has."""
    raw = redis_client().get(key)
    if not raw:
        raise unavailable(f"no worker has published the {what} yet; try again shortly")
    data: dict[str, Any] = json.loads(raw)
    return data


def enqueue(
    job_type: str, params: dict[str, Any], *, job_id: str | None = None, **options: Any
) -> str:
    """Record and queue an admin job; return its id."""
    try:
        record = queue_job(
            current_app.extensions["jobs"], current_app.extensions["celery"], job_type, params,
            job_id=job_id, options=options,
        )  # fmt: skip
    except (redis.RedisError, KombuError) as exc:
        raise unavailable("the job could not be queued; try again shortly") from exc
    return str(record["job_id"])


def outcome(job_id: str, wait: float, *, failed_status: int = 409) -> Response:
    """Answer with the job's outcome once it ends, or 202 with where to poll after `wait` s.

    A job that failed is a problem naming the job and its error (the job record keeps it).
    """
    store: JobStore = current_app.extensions["jobs"]
    record = store.wait(job_id, wait) or {}
    status_url = url_for("api.result", job_id=job_id)
    if record.get("status") == "succeeded":
        result = record.get("result") or {}
        resp = reply(AdminOutcome, **{**result, "job_id": job_id, "status": "succeeded"})
        resp.headers["Content-Location"] = status_url
        return resp
    if record.get("status") in ("failed", "cancelled"):
        error = record.get("error") or {}
        extra: dict[str, Any] = {"job_id": job_id, "status_url": status_url, "error": error}
        if record.get("problems"):
            extra["problems"] = record["problems"]
        raise ApiError(
            failed_status,
            "Job failed",
            f"{error.get('type', 'Error')}: {error.get('message', 'the job did not succeed')}",
            type_="/problems/job-failed",
            **extra,
        )
    resp = reply(JobAccepted, 202, job_id=job_id, status=record.get("status", "queued"),
                 status_url=status_url)  # fmt: skip
    resp.headers["Location"] = status_url
    return resp
