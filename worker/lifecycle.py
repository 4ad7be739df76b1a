"""What every job goes through around its task body: cancellation checkpoints, one
retrain per model at a time, and signed delivery of the final record to a callback."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from worker.contract import KEY_PREFIX, check_public_host

Progress = Callable[[float, str], None]
LOCK_POLL_SECONDS = 1.0
CALLBACK_TIMEOUT_SECONDS = 10.0


class JobCancelled(Exception):
    """The job was cancelled; the task stops at this checkpoint."""


def lock_key(model: str) -> str:
    """Return the key of the lock that one retrain of `model` holds at a time."""
    return f"{KEY_PREFIX}:lock:retrain:{model}"


@contextmanager
def model_locks(
    client: redis.Redis, models: Sequence[str], job_id: str, ttl: int, progress: Progress
) -> Iterator[None]:
    """Hold the retrain lock of each model; wait (reporting whom for) while another job
    holds one. A redelivery of the same job takes its own lock back."""
    taken: list[Any] = []
    try:
        for model in sorted(models):  # one order for all jobs: no deadlock
            lock = client.lock(lock_key(model), timeout=ttl)
            while not lock.acquire(blocking=False, token=job_id):
                holder = client.get(lock_key(model))
                holder_id = holder.decode() if isinstance(holder, bytes) else holder
                if holder_id == job_id:  # our own, from a delivery that was lost
                    client.set(lock_key(model), job_id, ex=ttl)
                    lock.local.token = job_id.encode()
                    break
                progress(0.0, f"waiting for retrain {holder_id} to finish {model}")
                time.sleep(LOCK_POLL_SECONDS)
            taken.append(lock)
        yield
    finally:
        for lock in taken:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # expired meanwhile: nothing of ours left to release


def sign(secret: str, body: bytes) -> str:
    """Return the `X-Signature` value of a callback body: `sha256=<hex HMAC>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_callback(url: str, record: dict[str, Any], secret: str, *, allow_private: bool) -> int:
    """POST a final record to `url`, signed; return the HTTP status (raises on failure)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not allow_private:
        check_public_host(host)  # again at delivery: DNS may have changed since submit
    body = json.dumps(record, separators=(",", ":")).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Signature": sign(secret, body),
            "X-Job-Id": str(record["job_id"]),
        },
    )
    with urllib.request.urlopen(req, timeout=CALLBACK_TIMEOUT_SECONDS) as resp:
        return int(resp.status)
