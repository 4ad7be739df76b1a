"""Request limits: body size (413), per-key rate limits kept in Redis (429), and the
inference queue's depth (503), each with `Retry-After` where waiting helps."""

from __future__ import annotations

import hashlib
import logging
import math
import time

import redis
from flask import Flask, Response, current_app, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from api.admin import shared_read
from api.auth import PUBLIC_ENDPOINTS, init_auth, presented_key
from api.errors import ApiError
from api.submits import submitted_type
from worker.config import Settings
from worker.contract import JOB_TYPES, QUEUE_INFERENCE

log = logging.getLogger(__name__)
UPLOAD_ENDPOINTS = {"datasets.upload"}
QUEUE_RETRY_AFTER = 5


def rate_key() -> str:
    """Rate-limit by API key (its digest, never the key), else by client address."""
    key = presented_key()
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"addr:{request.remote_addr or 'unknown'}"


def _exempt() -> bool:
    return request.endpoint in PUBLIC_ENDPOINTS


def _body_limit() -> None:
    settings: Settings = current_app.config["SETTINGS"]
    limit = settings.max_upload_bytes
    if request.endpoint not in UPLOAD_ENDPOINTS:
        limit = settings.max_body_bytes
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413,
            "Request too large",
            f"the body has {request.content_length} bytes; this endpoint takes at most {limit}",
            type_="/problems/too-large",
            max_bytes=limit,
        )


def _queue_depth() -> None:
    job_type = submitted_type()
    if job_type not in JOB_TYPES or JOB_TYPES[job_type][1] != QUEUE_INFERENCE:
        return
    settings: Settings = current_app.config["SETTINGS"]
    client: redis.Redis = current_app.extensions["redis"]
    try:
        # Read at most once a second per process: the limit guards against a backlog, and
        # a second's worth of submits more is not one.
        depth = shared_read("queue_depth", lambda: int(client.llen(QUEUE_INFERENCE)))
    except redis.RedisError:
        return  # the submit itself reports Redis being down (after validating the input)
    if depth >= settings.max_queue_depth:
        raise ApiError(
            503,
            "Queue full",
            f"{depth} jobs are waiting on the inference queue (limit "
            f"{settings.max_queue_depth}); try again shortly",
            type_="/problems/queue-full",
            headers={"Retry-After": str(QUEUE_RETRY_AFTER)},
        )


def _too_many(exc: RateLimitExceeded) -> Response:
    limiter: Limiter = current_app.extensions["mlstock_limiter"]
    retry = 1
    current = limiter.current_limit
    if current is not None:
        retry = max(1, math.ceil(current.reset_at - time.time()))
    err = ApiError(
        429,
        "Too many requests",
        f"rate limit exceeded: {exc.description}; retry in {retry} s",
        type_="/problems/rate-limited",
        headers={"Retry-After": str(retry)},
    )
    return err.response()


def init_guards(app: Flask, settings: Settings) -> None:
    """Install, in this order: the body-size limit, the rate limit, API-key checks, and
    the queue-depth limit."""
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_upload_bytes, settings.max_body_bytes)
    app.before_request(_body_limit)
    limits = [part.strip() for part in settings.rate_limit.split(";") if part.strip()]
    limiter = Limiter(
        rate_key,
        app=app,
        default_limits=limits,  # type: ignore[arg-type]
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 2},
        strategy="fixed-window",
        key_prefix="mlstock:rate",
        headers_enabled=False,  # it would overwrite the Retry-After of other 503s
        swallow_errors=True,  # Redis down: serve (and answer 503 where Redis is needed)
        default_limits_exempt_when=_exempt,
        enabled=bool(limits),
    )
    app.extensions["mlstock_limiter"] = limiter
    app.register_error_handler(RateLimitExceeded, _too_many)
    init_auth(app, settings)
    app.before_request(_queue_depth)
