"""The forecast entries a live predict job reads: the model's own answer, made once."""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd

from ml.forecast import MIN_HISTORY, Forecaster, latest_features
from worker.results import LatestForecasts, add_history, forecast_entries


def _model_answer(
    forecaster: Forecaster, prices: pd.DataFrame, tickers: list[str] | None, horizon: int
) -> list[dict[str, Any]]:
    latest = latest_features(prices)
    columns = forecaster.forecast_latest(latest, tickers=tickers, horizon=horizon)
    return forecast_entries(columns, "v1")


def test_entries_are_what_the_model_answers_for_any_subset(
    forecaster: Forecaster, market: pd.DataFrame
) -> None:
    latest = latest_features(market)
    tickers = sorted(market["ticker"].unique())
    for horizon in (1, 3, 10):
        table = LatestForecasts(forecaster, latest, "v1", horizon)
        assert table.select(None) == _model_answer(forecaster, market, None, horizon)
        for subset in ([tickers[3]], [tickers[7], tickers[0], tickers[7]], tickers[:5]):
            # Once each, in the model's order, as a call for the subset alone answers.
            assert table.select(subset) == _model_answer(forecaster, market, subset, horizon)
        assert table.select([tickers[2].lower()]) == table.select([tickers[2]])


def test_a_ticker_without_an_entry_is_left_to_the_model(
    forecaster: Forecaster, market: pd.DataFrame
) -> None:
    tickers = sorted(market["ticker"].unique())
    short = pd.concat(
        [
            market[market["ticker"] != tickers[0]],
            market[market["ticker"] == tickers[0]].tail(MIN_HISTORY - 1),
        ]
    )
    table = LatestForecasts(forecaster, latest_features(short), "v1", 5)
    assert table.select([tickers[0]]) is None  # too short: the model's call raises
    assert table.select([tickers[1], "NOPE"]) is None  # unknown: the same
    assert table.select(None) is None  # all, one of them too short
    assert table.select([tickers[1]]) == _model_answer(forecaster, short, [tickers[1]], 5)


def test_adding_history_leaves_the_shared_entries_alone(
    forecaster: Forecaster, market: pd.DataFrame
) -> None:
    table = LatestForecasts(forecaster, latest_features(market), "v1", 5)
    ticker = sorted(market["ticker"].unique())[0]
    entries = table.select([ticker])
    assert entries is not None
    before = copy.deepcopy(entries)
    result = {"forecasts": entries}
    add_history(result, market, 3, None)
    assert len(result["forecasts"][0]["history"]) == 3
    assert table.select([ticker]) == before
