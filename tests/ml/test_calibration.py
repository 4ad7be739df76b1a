"""Interval calibration on a held-out synthetic period, against binomial error bands.

Coverage indicators are correlated (tickers share market and sector factors, and h-step
windows overlap), so the bands count one independent trial per block of h test dates:
fewer trials than forecasts, hence a wider, honest band. Each test also checks that the
band has power: bands half or twice as wide fall outside it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest

import ml.forecast
from ml.data import synthetic_market
from ml.forecast import (
    COVERAGES,
    SHRINKAGE_GRID,
    SHRINKAGE_T,
    Forecaster,
    _best_shrinkage,
    _build_panel,
    latest_features,
)

HORIZON = 5
TEST_DATES = 250
# Standard errors of the band: a correct model fails it about 3 times in 1000.
Z = 3.0


@pytest.fixture(scope="module")
def unseen() -> pd.DataFrame:
    """Return a market the other tests do not use (seed 3)."""
    return synthetic_market(seed=3)


@pytest.fixture(scope="module")
def prefix_model(unseen: pd.DataFrame) -> Forecaster:
    """Return a forecaster fitted before the last TEST_DATES + HORIZON dates of ``unseen``
    (an embargo of HORIZON dates before the first test origin)."""
    dates = np.sort(unseen["date"].unique())
    return Forecaster(horizon=HORIZON).fit(
        unseen[unseen["date"] < dates[-TEST_DATES - 2 * HORIZON]]
    )


@pytest.fixture(scope="module")
def held_out(unseen: pd.DataFrame, prefix_model: Forecaster) -> pd.DataFrame:
    """Forecast the last TEST_DATES dates of ``unseen`` from the earlier fit: one row per
    (ticker, origin, step) with the log-move actually realized and the bands around it."""
    market = unseen
    start = np.sort(market["date"].unique())[-TEST_DATES - HORIZON]
    forecast = prefix_model.predict_origins(market, start=start)
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


def _with_returns_scaled(
    market: pd.DataFrame, ticker: str, since: pd.Timestamp, factor: float
) -> pd.DataFrame:
    """Return ``market`` with ``ticker``'s daily log-returns from ``since`` on times factor."""
    rows = (market["ticker"] == ticker).to_numpy()
    closes = market.loc[rows, "close"].to_numpy()
    dates = market.loc[rows, "date"].to_numpy()
    returns = np.diff(np.log(closes), prepend=np.log(closes[0]))
    returns[dates >= since] *= factor
    changed = market.copy()
    changed.loc[rows, "close"] = closes[0] * np.exp(np.cumsum(returns))
    return changed


@pytest.mark.parametrize(("factor", "wider"), [(3.0, True), (0.3, False)])
def test_adaptive_levels_follow_a_regime_the_calibration_never_saw(
    unseen: pd.DataFrame, prefix_model: Forecaster, factor: float, wider: bool
) -> None:
    """A ticker whose moves turn 3x larger misses its bands until its volatility estimate
    catches up: adaptive conformal raises its level and widens the band; a ticker turned
    calm is always inside, so its band narrows. Without adaptation nothing moves."""
    dates = np.sort(unseen["date"].unique())
    since = pd.Timestamp(dates[-TEST_DATES])
    changed = _with_returns_scaled(unseen, "TEC01", since, factor)
    as_of = dates[-TEST_DATES + 15]
    adaptive = prefix_model.predict(changed, tickers=["TEC01"], horizon=1, as_of=as_of)
    fixed = copy.deepcopy(prefix_model).set_params(adapt_rate=0.0)
    plain = fixed.predict(changed, tickers=["TEC01"], horizon=1, as_of=as_of)
    ratio = (adaptive["upper_80"] / adaptive["lower_80"]) / (plain["upper_80"] / plain["lower_80"])
    assert (ratio.iloc[0] > 1.0) == wider and ratio.iloc[0] != 1.0
    first = dates[dates > prefix_model.trained_through_][0]  # no outcome known there yet
    before = prefix_model.predict(changed, tickers=["TEC01"], horizon=1, as_of=first)
    same = fixed.predict(changed, tickers=["TEC01"], horizon=1, as_of=first)
    pd.testing.assert_frame_equal(before, same)


def test_adaptive_paths_agree_and_ignore_other_tickers(
    unseen: pd.DataFrame, prefix_model: Forecaster
) -> None:
    """With adaptation active (origins after the fit), the backtest's vectorised path, the
    workers' precomputed path and predict(as_of) serve the same bands, and a ticker's
    bands depend on its own history only."""
    dates = np.sort(unseen["date"].unique())
    day = pd.Timestamp(dates[-100])
    through = unseen[unseen["date"] <= day]
    expected = prefix_model.predict(unseen, as_of=day)
    origins = prefix_model.predict_origins(unseen, start=day)
    got = origins[origins["last_date"] == day].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(prefix_model.predict_latest(latest_features(through)), expected)
    alone = prefix_model.predict(through[through["ticker"] == "FIN02"])
    pd.testing.assert_frame_equal(
        alone, expected[expected["ticker"] == "FIN02"].reset_index(drop=True)
    )


def _one_ticker(returns: np.ndarray) -> pd.DataFrame:
    """Return a one-ticker price frame with the given daily log-returns."""
    dates = pd.bdate_range("2020-01-01", periods=len(returns) + 1)
    closes = 50.0 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    return pd.DataFrame({"date": dates, "ticker": "JMP", "close": closes})


def test_interval_scale_clips_a_jump_that_sigma_takes_in_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 25% gap multiplies the EWMA sigma several times over for weeks; the interval scale
    takes it in clipped at SCALE_CLIP times its estimate. With no clipping both agree."""
    returns = np.random.default_rng(7).normal(0.0, 0.01, 300)
    returns[200] = 0.25
    panel = _build_panel(_one_ticker(returns))
    day = 201  # row of the jump's close (row 0 is the first price)
    assert panel.sigma[day] / panel.sigma[day - 1] > 3
    assert panel.scale[day] / panel.scale[day - 1] < 1.5
    assert panel.scale[day + 10] < panel.sigma[day + 10] / 2
    monkeypatch.setattr(ml.forecast, "SCALE_CLIP", np.inf)
    unclipped = _build_panel(_one_ticker(returns))
    np.testing.assert_allclose(unclipped.scale, unclipped.sigma, rtol=1e-12)


def test_interval_scale_is_the_same_per_ticker_loop_or_across_tickers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few tickers run the clipped EWMA as a loop per ticker, many as one update per date:
    the same bits either way, clips included (a replay must match the fitted panel)."""
    market = synthetic_market(seed=3)
    jumps = market["date"] == market["date"].unique()[300]
    market.loc[jumps, "close"] *= 1.3  # every ticker gaps: clipping is exercised
    assert market["ticker"].nunique() <= ml.forecast._SCALAR_TICKERS  # the loop by default
    looped = _build_panel(market).scale
    monkeypatch.setattr(ml.forecast, "_SCALAR_TICKERS", 0)
    across = _build_panel(market).scale
    np.testing.assert_array_equal(looped, across)


def test_bands_after_a_jump_follow_the_clipped_scale(prefix_model: Forecaster) -> None:
    """After a gap the band widens by the clipped scale, far less than by sigma; a model
    saved before the clipped scale (no ``interval_scale_``) still serves sigma bands."""
    market = synthetic_market(seed=3)
    dates = np.sort(market["date"].unique())
    day = pd.Timestamp(dates[-60])
    before = prefix_model.predict(market, tickers=["UTL01"], horizon=1, as_of=dates[-61])
    gapped = _with_returns_scaled(market, "UTL01", day, 1.0)
    rows = (gapped["ticker"] == "UTL01") & (gapped["date"] >= day)
    gapped.loc[rows, "close"] *= 1.3
    after = prefix_model.predict(gapped, tickers=["UTL01"], horizon=1, as_of=day)
    old = copy.deepcopy(prefix_model).set_params(adapt_rate=0.0)
    del old.interval_scale_
    old_after = old.predict(gapped, tickers=["UTL01"], horizon=1, as_of=day)

    def width(frame: pd.DataFrame) -> float:
        return float(np.log(frame["upper_80"] / frame["lower_80"]).iloc[0])

    assert width(after) < 1.6 * width(before)
    assert width(old_after) > 2 * width(after)


def test_a_shrinkage_edge_under_the_bar_serves_naive() -> None:
    """A weight whose edge over naive is between 2 and SHRINKAGE_T standard errors is the
    kind that won by chance in held-out backtests: the naive point is kept."""
    rng = np.random.default_rng(11)
    n = 400
    predicted = rng.normal(0.0, 1.0, n)
    noise = rng.normal(0.0, 1.0, n)
    block = np.arange(n)

    def best_t(signal: float) -> float:
        target = signal * predicted + noise
        stats = []
        for weight in SHRINKAGE_GRID[1:]:
            loss = np.abs(target - weight * predicted) - np.abs(target)
            stats.append(-loss.mean() / (loss.std(ddof=1) / math.sqrt(n)))
        return max(stats)

    signals = np.linspace(0.0, 0.5, 201)
    chosen = next(s for s in signals if 2.0 < best_t(s) < SHRINKAGE_T)
    assert _best_shrinkage(chosen * predicted + noise, predicted, block) == 0.0
    strong = next(s for s in signals if best_t(s) > SHRINKAGE_T + 0.5)
    assert _best_shrinkage(strong * predicted + noise, predicted, block) > 0.0
