"""The checks behind `GET /ready` and `mlstock doctor`: what the deployment needs, each
with what is wrong and how to fix it. A failed blocking check makes `/ready` a 503."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from worker.config import Settings
from worker.contract import (
    BEAT_ALIVE_KEY,
    CATALOG_KEY,
    MODEL_NAMES,
    QUEUE_INFERENCE,
    QUEUE_TRAINING,
    WORKERS_KEY,
    live_workers,
)


@dataclass(frozen=True)
class Check:
    """One precondition: whether it holds, what was seen, and the fix when it does not."""

    name: str
    ok: bool
    detail: str
    blocking: bool = True
    fix: str | None = None


def diagnose(client: redis.Redis, settings: Settings) -> tuple[bool, list[dict[str, Any]]]:
    """Run every check; return whether serving can go on, and the checks."""
    try:
        client.ping()
    except redis.RedisError as exc:
        check = Check("redis", False, str(exc), fix="start Redis or point REDIS_URL at it")
        return False, [asdict(check)]
    checks = [Check("redis", True, "reachable"), _persistence(client)]
    workers = live_workers(client.hgetall(WORKERS_KEY))
    checks += _workers(workers) + _worker_config(workers, settings)
    checks.append(_beat(client, settings))
    catalog = json.loads(client.get(CATALOG_KEY) or "{}")
    for name in MODEL_NAMES:
        entry = catalog.get(name)
        checks.append(
            Check(
                f"model:{name}",
                entry is not None,
                f"version {entry['version']}" if entry else "no current version served",
                fix=None
                if entry
                else "a training worker trains the first models by itself; else POST /jobs/retrain",
            )
        )
    checks.append(
        Check(
            "retention",
            True,
            f"job records live {settings.result_ttl} s after their job ends"
            + (f" (per type: {settings.result_ttls})" if settings.result_ttls else ""),
            blocking=False,
        )
    )
    return all(c.ok for c in checks if c.blocking), [asdict(c) for c in checks]


def _persistence(client: redis.Redis) -> Check:
    try:
        appendonly = dict(client.config_get("appendonly")).get("appendonly")
    except redis.ResponseError:  # CONFIG may be disabled on a managed Redis
        return Check("redis:persistence", False, "cannot read Redis's CONFIG", blocking=False)
    ok = appendonly in ("yes", b"yes")
    return Check(
        "redis:persistence",
        ok,
        "append-only file on" if ok else "no append-only file: a restart loses queued jobs",
        blocking=False,
        fix=None if ok else "run redis-server with --appendonly yes --appendfsync everysec",
    )


def _workers(workers: dict[str, dict[str, Any]]) -> list[Check]:
    checks = []
    for queue in (QUEUE_INFERENCE, QUEUE_TRAINING):
        hosts = sorted(host for host, entry in workers.items() if queue in entry["queues"])
        checks.append(
            Check(
                f"workers:{queue}",
                bool(hosts),
                ", ".join(hosts) if hosts else f"no worker consumes the {queue} queue",
                fix=None
                if hosts
                else f"start one: celery -A worker.celery_app worker -Q {queue} -n {queue}@%h",
            )
        )
    return checks


def _worker_config(workers: dict[str, dict[str, Any]], settings: Settings) -> list[Check]:
    """Check the settings the workers run with, as each one announces them."""
    configs = {host: entry.get("config") or {} for host, entry in workers.items()}
    short = sorted(
        f"{host} ({c['visibility_timeout']} s <= {c['training_time_limit']} s)"
        for host, c in configs.items()
        if c and c["visibility_timeout"] <= c["training_time_limit"]
    )
    unsigned = sorted(host for host, c in configs.items() if c and not c["signing_key"])
    threaded = sorted(host for host, c in configs.items() if c and c["worker_threads"] > 1)
    return [
        Check(
            "visibility-timeout",
            not short,
            "Redis redelivers a task not acknowledged within "
            + (
                f"the training limit on {', '.join(short)}: a long retrain would run twice"
                if short
                else "longer than the longest training"
            ),
            blocking=False,
            fix="unset BROKER_VISIBILITY_TIMEOUT (default TRAINING_TIME_LIMIT + 600)"
            if short
            else None,
        ),  # fmt: skip
        Check(
            "signing-key",
            not unsigned,
            f"no MODEL_SIGNING_KEY on {', '.join(unsigned)}: artifacts are checksummed, not signed"
            if unsigned
            else "model artifacts are signed and verified",
            blocking=False,
            fix="set MODEL_SIGNING_KEY to the same secret on every worker" if unsigned else None,
        ),  # fmt: skip
        Check(
            "thread-caps",
            not threaded,
            f"more than one BLAS/OpenMP thread per pool child on {', '.join(threaded)}"
            if threaded
            else "one BLAS/OpenMP thread per pool child",
            blocking=False,
            fix="set WORKER_THREADS=1 (and OMP_NUM_THREADS=1)" if threaded else None,
        ),  # fmt: skip
    ]


def _beat(client: redis.Redis, settings: Settings) -> Check:
    if not settings.retrain_schedule.strip():
        return Check("beat", True, "no retrain schedule (RETRAIN_SCHEDULE is empty)", False)
    raw = client.get(BEAT_ALIVE_KEY)
    if raw:
        seen = json.loads(raw)
        age = time.time() - float(seen["at"])
        return Check("beat", True, f"alive {age:.0f} s ago, schedule {seen['schedule']!r}", False)
    return Check(
        "beat",
        False,
        f"no beat has announced itself: the schedule {settings.retrain_schedule!r} will not run",
        blocking=False,
        fix="run exactly one: celery -A worker.celery_app beat",
    )
