"""Helpers to drive jobs through the API in tests."""

from __future__ import annotations

import time
from typing import Any

from flask.testing import FlaskClient

FINAL = ("succeeded", "failed", "cancelled")


def submit(client: FlaskClient, path: str, body: dict[str, Any]) -> str:
    """POST a job; assert the 202 contract; return the job id."""
    resp = client.post(path, json=body)
    assert resp.status_code == 202, resp.get_json()
    data = resp.get_json()
    assert data["status"] == "queued"
    assert resp.headers["Location"] == data["status_url"] == f"/result/{data['job_id']}"
    return str(data["job_id"])


def wait(client: FlaskClient, job_id: str, timeout: float = 300) -> dict[str, Any]:
    """Long-poll a job until it is final; return its record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = client.get(f"/result/{job_id}?wait=10")
        assert resp.status_code == 200, resp.get_json()
        record: dict[str, Any] = resp.get_json()
        if record["status"] in FINAL:
            return record
    raise AssertionError(f"job {job_id} not final after {timeout}s: {record}")


def run(
    client: FlaskClient, path: str, body: dict[str, Any], timeout: float = 300
) -> dict[str, Any]:
    """Submit a job and wait for it; return the final record."""
    return wait(client, submit(client, path, body), timeout)


def check_steps(steps: list[dict[str, Any]], horizon: int) -> None:
    """Assert a forecast's steps are complete and its bands ordered."""
    assert [s["step"] for s in steps] == list(range(1, horizon + 1))
    for s in steps:
        assert s["lower_95"] <= s["lower_80"] <= s["close"] <= s["upper_80"] <= s["upper_95"], s
        assert s["lower_95"] > 0
