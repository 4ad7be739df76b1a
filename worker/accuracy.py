"""Score the ledger of served forecasts when newer prices arrive: after an import that
becomes the active dataset, and after an activation. The report goes to Redis, where
`GET /models/forecast/accuracy` reads it."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
import redis

from ml.accuracy import LEDGER_COLUMNS, realized_accuracy
from ml.errors import MLError
from worker.contract import ACCURACY_KEY, LEDGER_INDEX_KEY, ledger_key, now_iso, text
from worker.tasks import datasets, redis_client, settings

log = logging.getLogger(__name__)
PRICE_COLUMNS = ["date", "ticker", "close"]


def read_ledger(client: redis.Redis) -> pd.DataFrame:
    """Return every ledgered forecast step: `LEDGER_COLUMNS` plus `data_version`."""
    index = client.zrange(LEDGER_INDEX_KEY, 0, -1)
    versions = [text(v) for v in index]
    pipe = client.pipeline(transaction=False)
    for version in versions:
        pipe.hvals(ledger_key(version))
    rows = [
        {**json.loads(raw), "model_version": version}
        for version, values in zip(versions, pipe.execute(), strict=True)
        for raw in values
    ]
    return pd.DataFrame(rows, columns=[*LEDGER_COLUMNS, "data_version"])


def score_ledger(prices: pd.DataFrame, data_version: str) -> dict[str, Any]:
    """Score the ledger against `prices` (dataset `data_version`); store and return the report.

    A ticker's closes before the new data begins come from the datasets its forecasts
    were served from, so an import of only the latest days still has the history that
    MASE is scaled by; where both hold a date, the new data wins.
    """
    ledger = read_ledger(redis_client())
    tickers = set(ledger["ticker"])
    frames = [prices.loc[prices["ticker"].isin(tickers), PRICE_COLUMNS]]
    store = datasets()
    for source in sorted({str(v) for v in ledger["data_version"].dropna()} - {data_version}):
        try:
            old = store.load(source)
        except MLError as exc:  # removed since: its history is only missed in the scale
            log.warning("dataset %s of served forecasts not loaded: %s", source, exc)
            continue
        frames.append(old.loc[old["ticker"].isin(tickers), PRICE_COLUMNS])
    history = pd.concat(frames, ignore_index=True).drop_duplicates(["date", "ticker"])
    versions = realized_accuracy(ledger, history)
    report = {
        "model": "forecast",
        "computed_at": now_iso(),
        "data_version": data_version,
        "actuals_through": pd.Timestamp(prices["date"].max()).date().isoformat(),
        "versions": versions,
    }
    redis_client().set(ACCURACY_KEY, json.dumps(report), ex=settings().ledger_ttl)
    scored = sum(int(v["scored"]) for v in versions)
    log.info("realized accuracy: %d served forecast steps scored on %s", scored, data_version)
    return report


def rescore(data_version: str, prices: pd.DataFrame | None = None) -> None:
    """Score the ledger on dataset `data_version` (its `prices` if at hand) after new prices
    arrived; a failure is logged, never raised: the job that brought the prices has
    succeeded, and the previous report stays."""
    try:
        score_ledger(datasets().load(data_version) if prices is None else prices, data_version)
    except (redis.RedisError, MLError, OSError, ValueError, KeyError) as exc:
        log.warning("realized accuracy not computed on %s: %s", data_version, exc)
