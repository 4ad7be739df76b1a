"""The ledger of served forecasts on a real Redis: recording makes no Redis call, the same
forecast is written once, a failed write is kept for the next one, storage expires."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.procs import start_redis, stop
from worker.contract import LEDGER_INDEX_KEY, ledger_key
from worker.ledger import Ledger

pytestmark = pytest.mark.integration
TTL = 3600


@pytest.fixture
def client(tmp_path: Path) -> Iterator[redis.Redis]:
    proc, url = start_redis(tmp_path)
    try:
        yield redis.Redis.from_url(url)
    finally:
        stop(proc)


def _result(ticker: str, horizon: int, version: str = "V1") -> dict[str, Any]:
    steps = [
        {"step": h, "date": f"2026-01-0{h}", "close": 10.0, "lower_80": 9.0, "upper_80": 11.0,
         "lower_95": 8.0, "upper_95": 12.0}
        for h in range(1, horizon + 1)
    ]  # fmt: skip
    forecast = {"ticker": ticker, "last_date": "2025-12-31", "last_close": 10.0,
                "model_version": version, "steps": steps}  # fmt: skip
    return {"model_version": version, "forecasts": [forecast], "data_version": "d" * 16}


def _unreachable() -> redis.Redis:
    return redis.Redis(port=1, socket_connect_timeout=0.5)


def test_the_same_forecast_is_written_once(client: redis.Redis) -> None:
    def no_redis() -> redis.Redis:
        raise AssertionError("recording must not reach Redis")

    ledger = Ledger(no_redis, TTL)
    for _ in range(3):
        ledger.record(_result("AAA", 3))
    ledger.record(_result("AAA", 5))  # two more steps of the same forecast
    ledger.record(_result("BBB", 2))
    ledger.client = lambda: client
    assert ledger.flush() == 7
    stored = client.hgetall(ledger_key("V1"))
    assert sorted(stored) == sorted(
        [f"AAA|2025-12-31|{h}".encode() for h in range(1, 6)]
        + [f"BBB|2025-12-31|{h}".encode() for h in (1, 2)]
    )
    row = json.loads(stored[b"AAA|2025-12-31|5"])
    assert row["step"] == 5 and row["last_close"] == 10.0 and row["data_version"] == "d" * 16
    assert 0 < client.ttl(ledger_key("V1")) <= TTL
    assert [v for v, _ in client.zrange(LEDGER_INDEX_KEY, 0, -1, withscores=True)] == [b"V1"]

    ledger.record(_result("AAA", 4))  # already written, with more steps
    assert ledger.flush() == 0
    ledger.record(_result("AAA", 2, version="V2"))
    assert ledger.flush() == 2 and client.hlen(ledger_key("V2")) == 2


def test_a_failed_write_is_kept_for_the_next_one(client: redis.Redis) -> None:
    ledger = Ledger(_unreachable, TTL)
    ledger.record(_result("AAA", 3))
    with pytest.raises(redis.ConnectionError):
        ledger.flush()
    ledger.record(_result("BBB", 1))
    ledger.client = lambda: client
    assert ledger.flush() == 4
    assert client.hlen(ledger_key("V1")) == 4
