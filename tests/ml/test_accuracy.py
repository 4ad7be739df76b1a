"""The realized-accuracy scorer: joins to actual closes, MASE without look-ahead, coverage,
and the counts of forecasts still pending."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.accuracy import LEDGER_COLUMNS, naive_scale, realized_accuracy
from ml.forecast import Forecaster

DAYS = pd.bdate_range("2026-01-05", periods=6)  # Mon 5 .. Mon 12 January


def _prices(closes: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"date": DAYS[i], "ticker": t, "close": c}
            for t, series in closes.items()
            for i, c in enumerate(series)
        ]
    )


def _row(
    ticker: str, as_of: int, step: int, close: float, last: float, **kw: Any
) -> dict[str, Any]:
    bands = {
        "lower_80": close - 1,
        "upper_80": close + 1,
        "lower_95": close - 2,
        "upper_95": close + 2,
    }
    return {
        "model_version": kw.get("version", "V1"),
        "ticker": ticker,
        "as_of": DAYS[as_of].date().isoformat(),
        "step": step,
        "date": DAYS[as_of + step].date().isoformat() if as_of + step < len(DAYS) else "2026-01-13",
        "close": close,
        "last_close": last,
        **bands,
        **{k: v for k, v in kw.items() if k != "version"},
    }


def test_scores_by_hand() -> None:
    prices = _prices({"A": [100, 102, 101, 104, 103, 105]})
    # As of day 1 (close 102) the one-day changes so far are |102 - 100| = 2: scale 2.
    ledger = pd.DataFrame(
        [
            _row("A", 1, 1, close=103.0, last=102.0),  # actual 101: error 2, naive error 1
            _row("A", 1, 2, close=102.5, last=102.0),  # actual 104: error 1.5, naive 2
        ]
    )
    [entry] = realized_accuracy(ledger, prices)
    assert entry["model_version"] == "V1" and entry["recorded"] == entry["scored"] == 2
    step1, step2 = entry["steps"]
    assert step1["n"] == 1 and step1["mae"] == pytest.approx(2.0)
    assert step1["mase"] == pytest.approx(1.0) and step1["naive_mase"] == pytest.approx(0.5)
    assert step1["relative_mase"] == pytest.approx(2.0)
    # 101 is outside 103 +- 1 and inside 103 +- 2.
    assert step1["coverage_80"] == 0.0 and step1["coverage_95"] == 1.0
    assert step1["mean_width_80"] == pytest.approx(2 / 102)
    assert step2["mase"] == pytest.approx(0.75) and step2["naive_mase"] == pytest.approx(1.0)
    assert step2["coverage_80"] == 0.0 and step2["coverage_95"] == 1.0
    overall = entry["overall"]
    assert overall["n"] == 2
    assert overall["mase"] == pytest.approx(0.875) and overall["naive_mase"] == pytest.approx(0.75)
    assert overall["relative_mase"] == pytest.approx(0.875 / 0.75)


def test_scale_reads_no_close_after_as_of() -> None:
    prices = _prices({"A": [100, 102, 101, 104, 103, 105]})
    keys = pd.DataFrame({"ticker": ["A", "A", "A"], "as_of": [DAYS[0], DAYS[1], DAYS[3]]})
    assert np.isnan(naive_scale(prices, keys)[0])  # one close: no change to average
    assert naive_scale(prices, keys)[1:] == pytest.approx([2.0, 2.0])  # (2 + 1 + 3) / 3
    later = prices.copy()
    later.loc[later["date"] > DAYS[3], "close"] *= 10
    assert naive_scale(later, keys)[1:] == pytest.approx([2.0, 2.0])


def test_pending_no_close_and_unknown_tickers_are_counted_not_scored() -> None:
    prices = _prices({"A": [100, 102, 101, 104, 103, 105], "B": [50, 51, 52, 53, 54, 55]})
    prices = prices[~((prices["ticker"] == "B") & (prices["date"] == DAYS[3]))]  # a holiday
    ledger = pd.DataFrame(
        [
            _row("A", 4, 1, close=104.0, last=103.0),  # scored
            _row("A", 5, 1, close=105.0, last=105.0),  # target after the last close: pending
            _row("B", 2, 1, close=52.0, last=52.0),  # no close that day: no_close
            _row("C", 2, 1, close=9.0, last=9.0),  # no closes at all: pending
            _row("A", 2, 3, close=101.0, last=101.0, version="V2"),
        ]
    )
    v2, v1 = realized_accuracy(ledger, prices)
    assert (v1["model_version"], v2["model_version"]) == ("V1", "V2")
    assert (v1["recorded"], v1["scored"], v1["pending"], v1["no_close"]) == (4, 1, 2, 1)
    assert [s["step"] for s in v1["steps"]] == [1] and v1["overall"]["n"] == 1
    assert (v2["recorded"], v2["scored"]) == (1, 1) and v2["steps"][0]["step"] == 3


def test_empty_ledger_and_nothing_scored() -> None:
    prices = _prices({"A": [100, 102, 101, 104, 103, 105]})
    assert realized_accuracy(pd.DataFrame(columns=list(LEDGER_COLUMNS)), prices) == []
    [entry] = realized_accuracy(pd.DataFrame([_row("A", 5, 1, close=1.0, last=1.0)]), prices)
    assert entry["scored"] == 0 and entry["steps"] == []
    assert entry["overall"]["n"] == 0 and entry["overall"]["mase"] is None
    with pytest.raises(ValueError, match="lacks column"):
        realized_accuracy(pd.DataFrame({"ticker": ["A"]}), prices)


def test_a_served_forecast_scored_against_later_closes(market: pd.DataFrame) -> None:
    small = market[market["ticker"].str.startswith("UTL")]
    dates = np.sort(small["date"].unique())
    as_of = pd.Timestamp(dates[-6])
    seen = small[small["date"] <= as_of]
    model = Forecaster(horizon=3, max_iter=20).fit(seen)
    forecast = model.predict(seen)
    ledger = forecast.assign(model_version="V", as_of=forecast["last_date"])
    [entry] = realized_accuracy(ledger, small)
    assert entry["scored"] == entry["recorded"] == len(forecast) == 3 * small["ticker"].nunique()

    # Independently: actual closes at the target dates, scale from closes through as_of.
    actual = forecast.merge(small, on=["date", "ticker"], suffixes=("", "_actual"))
    scale = (
        seen.sort_values("date").groupby("ticker")["close"].apply(lambda c: c.diff().abs().mean())
    )
    for step in (1, 3):
        rows = actual[actual["step"] == step]
        got = next(s for s in entry["steps"] if s["step"] == step)
        err = (rows["close"] - rows["close_actual"]).abs() / rows["ticker"].map(scale)
        naive = (rows["last_close"] - rows["close_actual"]).abs() / rows["ticker"].map(scale)
        inside = rows["close_actual"].between(rows["lower_95"], rows["upper_95"])
        assert got["n"] == len(rows)
        assert got["mase"] == pytest.approx(err.mean())
        assert got["naive_mase"] == pytest.approx(naive.mean())
        assert got["coverage_95"] == pytest.approx(inside.mean())
