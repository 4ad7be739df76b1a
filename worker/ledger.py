"""The ledger of served forecasts, kept so their accuracy can be judged once the actual
closes arrive (worker/accuracy.py).

A predict job hands its result to `Ledger.record`, which only keeps a reference in
memory: the predict path makes no Redis call for it. A thread of the same process writes
what was recorded to Redis in one pipeline every `FLUSH_SECONDS`, and once more when the
process exits. Predict runs in prefork pool children, which the worker's heartbeat thread
(in the parent) cannot see into, so each child that serves forecasts has this thread.
A child killed outright loses at most its last `FLUSH_SECONDS` of records.

In Redis, each model version has a hash `ledger_key(version)` of one JSON step per field
`ticker|as_of|step`: the same forecast served many times is stored once. Each hash lives
`LEDGER_TTL` seconds after its last write; `LEDGER_INDEX_KEY` lists the versions.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import signals
from redis.typing import EncodableT, FieldT

from worker.contract import LEDGER_INDEX_KEY, ledger_key

log = logging.getLogger(__name__)
FLUSH_SECONDS = 5.0
#: A forecast already written is written again after this long, which keeps its hash's
#: TTL running while the version still serves it.
REWRITE_SECONDS = 3600.0
#: (model version, ticker, as_of): one served forecast, whatever its horizon.
Key = tuple[str, str, str]
STEP_FIELDS = ("date", "close", "lower_80", "upper_80", "lower_95", "upper_95")


class Ledger:
    """Served forecasts waiting to be written, and what this process already wrote."""

    def __init__(self, client: Callable[[], redis.Redis], ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._pending: dict[Key, tuple[dict[str, Any], Any]] = {}
        self._written: dict[Key, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, result: dict[str, Any]) -> None:
        """Keep a predict result's forecasts for the next write (a few dict operations)."""
        data_version = result.get("data_version")
        now = time.monotonic()
        with self._lock:
            for forecast in result["forecasts"]:
                key = (forecast["model_version"], forecast["ticker"], forecast["last_date"])
                steps = len(forecast["steps"])
                written = self._written.get(key)
                if written and written[0] >= steps and now - written[1] < REWRITE_SECONDS:
                    continue
                held = self._pending.get(key)
                if held is None or len(held[0]["steps"]) < steps:
                    self._pending[key] = (forecast, data_version)

    def flush(self) -> int:
        """Write the recorded forecasts in one pipeline; return the steps written.

        On a Redis error the records are kept for the next try and the error is raised.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        hashes: dict[str, dict[FieldT, EncodableT]] = {}
        for (version, ticker, as_of), (forecast, data_version) in pending.items():
            fields = hashes.setdefault(version, {})
            for step in forecast["steps"]:
                row = {"ticker": ticker, "as_of": as_of, "step": step["step"]}
                row.update({f: step[f] for f in STEP_FIELDS})
                row.update(last_close=forecast["last_close"], data_version=data_version)
                fields[f"{ticker}|{as_of}|{step['step']}"] = json.dumps(row)
        now = time.time()
        pipe = self.client().pipeline(transaction=False)
        for version, fields in hashes.items():
            pipe.hset(ledger_key(version), mapping=fields)
            pipe.expire(ledger_key(version), self.ttl)
            pipe.zadd(LEDGER_INDEX_KEY, {version: now})
        pipe.zremrangebyscore(LEDGER_INDEX_KEY, "-inf", now - self.ttl)
        pipe.expire(LEDGER_INDEX_KEY, self.ttl)
        try:
            pipe.execute()
        except redis.RedisError:
            with self._lock:
                for key, held in pending.items():
                    self._pending.setdefault(key, held)
            raise
        done = time.monotonic()
        with self._lock:
            for key, (forecast, _) in pending.items():
                self._written[key] = (len(forecast["steps"]), done)
            # What was written long ago may be written again: forget it.
            for key in [k for k, (_, at) in self._written.items() if done - at >= REWRITE_SECONDS]:
                del self._written[key]
        return sum(len(fields) for fields in hashes.values())

    def start(self) -> Ledger:
        """Start the thread that writes every `FLUSH_SECONDS`; return self."""
        self._thread = threading.Thread(target=self._run, name="mlstock-ledger", daemon=True)
        self._thread.start()
        _live.append(self)
        return self

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stopped.set()
        self._flush_logged()

    def _run(self) -> None:
        while not self._stopped.wait(FLUSH_SECONDS):
            self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except (redis.RedisError, OSError) as exc:
            log.warning("served forecasts not written to the ledger yet: %s", exc)


#: The ledgers with a writer thread in this process.
_live: list[Ledger] = []


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _write_at_exit(**_: Any) -> None:
    # A pool child exiting (recycled or stopped), or a solo worker stopping.
    for ledger in _live:
        ledger.close()


@signals.worker_process_init.connect
def _forget_parent(**_: Any) -> None:
    # A forked child starts its own ledger: its parent's thread did not survive the fork.
    _live.clear()
