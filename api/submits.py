"""Which job a request submits: the one table of the endpoints that queue jobs, read by
the key check, the queue-depth limit and the metrics."""

from __future__ import annotations

from flask import request

#: Endpoints that submit a job, and the job type each submits (None: the URL's `job_type`).
SUBMIT_ENDPOINTS: dict[str, str | None] = {
    "api.create_job": None,
    "api.predict_price": "predict",
    "api.segment_alias": "segment",
}


def submitted_type() -> str | None:
    """Return the job type the current request submits (as its URL names it, known or
    not), or None for a request that submits no job."""
    endpoint = request.endpoint or ""
    if request.method != "POST" or endpoint not in SUBMIT_ENDPOINTS:
        return None
    job_type = SUBMIT_ENDPOINTS[endpoint] or (request.view_args or {}).get("job_type")
    return None if job_type is None else str(job_type)
