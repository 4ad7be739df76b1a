"""Beat's own heartbeat, so `/ready` can tell whether scheduled retrains will happen."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from celery import signals

from worker.config import Settings
from worker.contract import BEAT_ALIVE_KEY

log = logging.getLogger(__name__)
BEAT_HEARTBEAT_SECONDS = 15


def _announce(stopped: threading.Event) -> None:
    settings = Settings()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    while not stopped.is_set():
        entry = {"at": time.time(), "schedule": settings.retrain_schedule}
        try:
            client.set(BEAT_ALIVE_KEY, json.dumps(entry), ex=BEAT_HEARTBEAT_SECONDS * 4)
        except redis.RedisError as exc:
            log.warning("beat heartbeat skipped: %s", exc)
        stopped.wait(BEAT_HEARTBEAT_SECONDS)


@signals.beat_init.connect
def _start(**_: Any) -> None:
    threading.Thread(
        target=_announce, args=(threading.Event(),), name="mlstock-beat", daemon=True
    ).start()
