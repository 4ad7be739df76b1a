"""Interval calibration on a held-out synthetic period, against binomial error bands.

Coverage indicators are correlated (tickers share market and sector factors, and h-step
windows overlap), so the bands count one independent trial per block of h test dates:
fewer trials than forecasts, hence a wider, honest band. Each test also checks that the
band has power: bands half or twice as wide fall outside it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ml.data import synthetic_market
from ml.forecast import COVERAGES, Forecaster

HORIZON = 5
TEST_DATES = 250
# Standard errors of the band: a correct model fails it about 3 times in 1000.
Z = 3.0


@pytest.fixture(scope="module")
def held_out() -> pd.DataFrame:
    """Forecast the last TEST_DATES dates of a market unseen by the other tests (seed 3),
    with a forecaster fitted before them (and an embargo of HORIZON dates): one row per
    (ticker, origin, step) with the log-move actually realized and the bands around it."""
    market = synthetic_market(seed=3)
    dates = np.sort(market["date"].unique())
    start = dates[-TEST_DATES - HORIZON]
    train = market[market["date"] < dates[-TEST_DATES - 2 * HORIZON]]
    model = Forecaster(horizon=HORIZON).fit(train)
    forecast = model.predict_origins(market, start=start)
    closes = market.set_index(["ticker", "date"])["close"]
    realized = pd.MultiIndex.from_arrays([forecast["ticker"], forecast["date"]])
    forecast["actual"] = closes.reindex(realized).to_numpy()
    forecast = forecast[forecast["actual"].notna()].reset_index(drop=True)
    base = np.log(forecast["last_close"])
    for column in ("actual", "close", "lower_80", "upper_80", "lower_95", "upper_95"):
        forecast[column] = np.log(forecast[column]) - base
    return forecast


def _band(coverage: float, step: int, n_dates: int) -> tuple[float, float]:
    """Return nominal +/- Z binomial standard errors, one trial per block of step dates."""
    trials = max(n_dates // step, 1)
    error = Z * math.sqrt(coverage * (1 - coverage) / trials)
    return coverage - error, coverage + error


def _coverage(frame: pd.DataFrame, level: int, stretch: float = 1.0) -> float:
    """Return the share of realized moves inside the band scaled about its center."""
    lower = frame["close"] + stretch * (frame[f"lower_{level}"] - frame["close"])
    upper = frame["close"] + stretch * (frame[f"upper_{level}"] - frame["close"])
    return float(((lower <= frame["actual"]) & (frame["actual"] <= upper)).mean())


@pytest.mark.parametrize("step", [1, HORIZON])
@pytest.mark.parametrize("coverage", COVERAGES)
def test_held_out_coverage_is_within_binomial_error(
    held_out: pd.DataFrame, step: int, coverage: float
) -> None:
    rows = held_out[held_out["step"] == step]
    level = round(coverage * 100)
    low, high = _band(coverage, step, rows["last_date"].nunique())
    assert low <= _coverage(rows, level) <= high
    # Power: intervals half as wide fail this test, and so do twice as wide ones unless
    # the band reaches 100% (few trials at the 95% level).
    assert _coverage(rows, level, 1 / 2) < low
    assert high >= 1 or _coverage(rows, level, 2) > high


def test_coverage_holds_in_calm_and_volatile_origins(held_out: pd.DataFrame) -> None:
    """Bands follow volatility: origins split at the median band width cover alike."""
    rows = held_out[held_out["step"] == 1]
    width = rows["upper_80"] - rows["lower_80"]
    for part in (rows[width <= width.median()], rows[width > width.median()]):
        low, high = _band(0.80, 1, part["last_date"].nunique())
        assert low <= _coverage(part, 80) <= high
    # A band of one width for all origins misses this: calm ones over-cover.
    fixed = rows.assign(lower_80=-width.mean() / 2, upper_80=width.mean() / 2, close=0.0)
    calm = fixed[width <= width.median()]
    assert _coverage(calm, 80) > _band(0.80, 1, calm["last_date"].nunique())[1]
