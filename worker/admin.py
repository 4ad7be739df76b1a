"""Registry and dataset admin jobs (promote, activate), and the registry and dataset
listings the workers publish in Redis for the API to read."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task, shared_task, signals

from ml.errors import MLError
from worker.accuracy import rescore
from worker.contract import (
    DATASETS_KEY,
    REGISTRY_KEY,
    TASK_ACTIVATE,
    TASK_PROMOTE,
    TASK_RETRAIN,
    ActivateRequest,
    PromoteRequest,
    now_iso,
)
from worker.tasks import datasets, publish_catalog, redis_client, registry, run_job, settings

log = logging.getLogger(__name__)
PUBLISH_SECONDS = 15.0
#: Listings outlive a few missed rounds, and vanish when no worker is left to refresh them.
LISTING_TTL_SECONDS = int(4 * PUBLISH_SECONDS)
#: ModelCache's default check interval (worker/cache.py).
CACHE_CHECK_SECONDS = 1.0

# --- what the API lists ------------------------------------------------------------------------


def registry_snapshot() -> dict[str, Any]:
    """Describe every model: current version, versions newest first with cards, history."""
    reg = registry()
    models: dict[str, Any] = {}
    for name in reg.names():
        cards = []
        for version in reg.versions(name):
            try:
                card = reg.card(name, version)
                card["signed"] = bool(card.pop("signature", None))
            except MLError as exc:
                card = {"name": name, "version": version, "error": str(exc)}
            cards.append(card)
        models[name] = {
            "name": name,
            "current": reg.current_version(name),
            "versions": cards,
            "history": reg.history(name)[:100],
        }
    return {
        "published_at": now_iso(),
        "signing": "hmac-sha256" if settings().signing_key else "sha256",
        "models": models,
    }


def datasets_snapshot() -> dict[str, Any]:
    """Describe every stored dataset, newest first, and the active one."""
    store = datasets()
    return {"published_at": now_iso(), "active": store.active(), "datasets": store.list()}


def publish_registry() -> None:
    """Write the registry and dataset listings to Redis."""
    ttl = LISTING_TTL_SECONDS
    client = redis_client()
    client.set(REGISTRY_KEY, json.dumps(registry_snapshot()), ex=ttl)
    client.set(DATASETS_KEY, json.dumps(datasets_snapshot()), ex=ttl)


# --- admin jobs --------------------------------------------------------------------------------


@shared_task(name=TASK_PROMOTE, bind=True)
def promote(self: Task, request: dict[str, Any]) -> None:
    """Make a stored version of a model the current one (a promotion or a rollback)."""
    run_job(self, "promote", request, PromoteRequest, _promote)


def _promote(
    req: PromoteRequest, progress: Callable[[float, str], None]
) -> tuple[dict[str, Any], str]:
    reg = registry()
    progress(0.1, "verifying")
    # Refuse now what workers would refuse to load: tampered, unsigned, other libraries.
    reg.verify(req.name, req.version)
    previous = reg.current_version(req.name)
    kind = "rolled back" if previous and req.version < previous else "promoted"
    reason = req.reason or f"{kind} via the API"
    card = reg.promote(req.name, req.version, reason=reason, by=req.by)
    publish_registry()
    publish_catalog()
    # Every worker's cache looks at the pointer at most a check interval after its last
    # look: once this job ends, every next job is served by the promoted version.
    progress(0.9, "waiting for workers to switch")
    time.sleep(CACHE_CHECK_SECONDS + 0.05)
    card.pop("signature", None)
    result = {
        "name": req.name,
        "version": req.version,
        "previous": previous,
        "action": "rollback" if kind == "rolled back" else "promote",
        "promoted_by": req.by,
        "promoted_at": card["promoted_at"],
        "reason": reason,
        "card": card,
    }
    return result, req.version


@shared_task(name=TASK_ACTIVATE, bind=True)
def activate(self: Task, request: dict[str, Any]) -> None:
    """Make a stored dataset the one training uses."""
    run_job(self, "activate", request, ActivateRequest, _activate)


def _activate(
    req: ActivateRequest, progress: Callable[[float, str], None]
) -> tuple[dict[str, Any], None]:
    store = datasets()
    previous = store.active()
    meta = store.activate(req.version)
    publish_registry()
    log.info("dataset %s activated by %s (was %s)", req.version, req.by, previous)
    rescore(req.version)
    return {"active": req.version, "previous": previous, "by": req.by, "dataset": meta}, None


# --- publishing: at start, after every job that changes the registry, and every 15 s ------------


class Publisher(threading.Thread):
    """Republish the listings every few seconds, so changes made on disk show up too."""

    def __init__(self) -> None:
        super().__init__(name="mlstock-registry-publisher", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        """Publish until stopped; a passing Redis outage only skips a round."""
        while not self.stopped.is_set():
            try:
                publish_registry()
            except (redis.RedisError, OSError, MLError) as exc:
                log.warning("registry listing not published: %s", exc)
            self.stopped.wait(PUBLISH_SECONDS)


_publisher: Publisher | None = None


@signals.worker_ready.connect
def _on_ready(**_: Any) -> None:
    global _publisher
    if settings().signing_key is None:
        log.warning(
            "MODEL_SIGNING_KEY is not set: model artifacts are checked by sha256 only, which "
            "catches corruption but not a forger who rewrites the card; set it in production"
        )
    _publisher = Publisher()
    _publisher.start()


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _publisher is not None:
        _publisher.stopped.set()


@signals.task_postrun.connect
def _after_task(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) == TASK_RETRAIN:
        try:
            publish_registry()
        except (redis.RedisError, OSError, MLError) as exc:
            log.warning("registry listing not published: %s", exc)
