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
from typing import Any, cast

import redis

from worker.contract import (
    ALL_JOB_TYPES,
    KEY_PREFIX,
    WORKERS_KEY,
    JobStore,
    check_public_host,
    live_workers,
    text,
)

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
                holder_id = None if holder is None else text(holder)
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


RECONCILE_KEY = f"{KEY_PREFIX}:reconcile"
#: How often one worker (whichever takes the key first) looks for lost jobs.
RECONCILE_SECONDS = 15
#: A job still queued after this long with no message in its queue has lost its message.
QUEUED_GRACE_SECONDS = 60.0


def waiting_ids(client: redis.Redis, queue: str) -> set[str]:
    """Return the ids of the task messages waiting in a queue's Redis list."""
    ids: set[str] = set()
    for raw in cast(list[bytes], client.lrange(queue, 0, -1)):
        try:
            ids.add(str(json.loads(raw)["headers"]["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def reconcile(client: redis.Redis, store: JobStore, app: Any) -> list[str]:
    """Send again every job whose message is gone; return their ids.

    A message can vanish with the connection that carried it (a Redis restart, a worker
    killed outright) while Redis's visibility timeout, set above the longest training,
    would keep it hidden for an hour. So: a job queued for over a minute with no message
    waiting in its queue, or running on a worker that stopped announcing itself, is sent
    again under the same id. A second delivery of a job that did run finds its record
    final and is skipped, so this never duplicates a result.
    """
    if not client.set(RECONCILE_KEY, "1", nx=True, ex=RECONCILE_SECONDS):
        return []  # another worker reconciled lately
    live = live_workers(client.hgetall(WORKERS_KEY))
    waiting: dict[str, set[str]] = {}
    resent: list[str] = []
    for record in store.unfinished(QUEUED_GRACE_SECONDS):
        queue = ALL_JOB_TYPES[record["type"]][1]
        if record["status"] == "queued":
            if queue not in waiting:
                waiting[queue] = waiting_ids(client, queue)
            if record["job_id"] in waiting[queue]:
                continue
        elif record["worker"] in live:
            continue
        resend(app, record)
        resent.append(str(record["job_id"]))
    return resent


def resend(app: Any, record: dict[str, Any]) -> None:
    """Send a job's task again under its id, from its record."""
    task_name, queue = ALL_JOB_TYPES[record["type"]]
    app.send_task(
        task_name,
        kwargs={"request": record["params"]},
        task_id=record["job_id"],
        queue=queue,
        ignore_result=True,
    )
