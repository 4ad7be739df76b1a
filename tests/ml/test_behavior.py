"""Behavioural checks of the models: invariance, direction, minimum functionality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.backtest import holdout_forecast
from ml.forecast import Forecaster
from ml.segment import Segmenter
from tests.ml.conftest import mean_reverting_market

AS_OF = pd.Timestamp("2025-09-30")


def _bump(market: pd.DataFrame, when: pd.Series, factor: float) -> pd.DataFrame:
    """Return a copy of the market with closes multiplied by ``factor`` where ``when``."""
    changed = market.copy()
    changed.loc[when, "close"] *= factor
    return changed


def test_prices_after_as_of_do_not_change_the_forecast(
    forecaster: Forecaster, market: pd.DataFrame
) -> None:
    after = _bump(market, market["date"] > AS_OF, 3.0)
    expected = forecaster.predict(market, as_of=AS_OF)
    pd.testing.assert_frame_equal(forecaster.predict(after, as_of=AS_OF), expected)


def test_prices_before_as_of_do_change_the_forecast(
    forecaster: Forecaster, market: pd.DataFrame
) -> None:
    before = _bump(market, market["date"] == AS_OF - pd.offsets.BDay(1), 1.05)
    expected = forecaster.predict(market, as_of=AS_OF)
    assert not np.allclose(
        forecaster.predict(before, as_of=AS_OF)["upper_80"], expected["upper_80"]
    )


def test_forecast_is_invariant_to_price_scale(forecaster: Forecaster, market: pd.DataFrame) -> None:
    """Features are scale-free: a stock quoted in cents forecasts the same, in cents."""
    base = forecaster.predict(market, tickers=["TEC02"])
    scaled = forecaster.predict(
        _bump(market, market["ticker"] == "TEC02", 100.0), tickers=["TEC02"]
    )
    columns = ["close", "lower_80", "upper_80", "lower_95", "upper_95"]
    np.testing.assert_allclose(scaled[columns], base[columns] * 100.0, rtol=1e-9)


def test_forecast_is_invariant_to_other_tickers(
    forecaster: Forecaster, market: pd.DataFrame
) -> None:
    alone = forecaster.predict(market[market["ticker"] == "ENR03"])
    together = forecaster.predict(market, tickers=["ENR03"])
    pd.testing.assert_frame_equal(alone, together)


def test_bands_are_wider_for_a_volatile_ticker(
    forecaster: Forecaster, market: pd.DataFrame
) -> None:
    result = forecaster.predict(market, horizon=5)
    width = (result["upper_80"] - result["lower_80"]) / result["last_close"]
    by_sector = width.groupby(result["ticker"].str[:3]).mean()
    assert by_sector["TEC"] > 1.5 * by_sector["UTL"]


def test_bands_widen_when_volatility_rises(forecaster: Forecaster) -> None:
    rng = np.random.default_rng(0)
    calm = rng.normal(0, 0.005, 200)
    stormy = np.concatenate([calm[:-20], rng.normal(0, 0.03, 20)])
    widths = [
        float(((r["upper_95"] - r["lower_95"]) / r["last_close"]).iloc[0])
        for r in (
            forecaster.predict_series(list(50 * np.exp(np.cumsum(x))), horizon=1)
            for x in (calm, stormy)
        )
    ]
    assert widths[1] > 3 * widths[0]


def test_learns_a_predictable_pattern() -> None:
    """Minimum functionality: with mean-reverting returns the model beats naive at step 1."""
    prices = mean_reverting_market(seed=1, n=15, days=700)
    report = holdout_forecast(prices, Forecaster(horizon=2))
    step1 = report["per_horizon"][0]
    # The optimal predictor's ratio is about 1/sqrt(1 + 0.3**2) = 0.958.
    assert step1["relative_mae"] < 0.98
    assert step1["directional_accuracy"] > 0.55


def test_segments_ignore_the_price_level(segmenter: Segmenter, market: pd.DataFrame) -> None:
    base = segmenter.predict(market)
    scaled = segmenter.predict(_bump(market, market["ticker"] == "FIN04", 7.0))
    pd.testing.assert_frame_equal(base, scaled)


@pytest.mark.parametrize(
    ("sector", "feature", "extreme"), [("UTL", "ann_volatility", min), ("TEC", "beta", max)]
)
def test_segment_profiles_match_the_sector(
    segmenter: Segmenter, market: pd.DataFrame, sector: str, feature: str, extreme: object
) -> None:
    """Directional: the calm sector is the least volatile segment, tech the highest beta."""
    assigned = segmenter.predict(market)
    segment = assigned.loc[assigned["ticker"].str.startswith(sector), "segment"].mode()[0]
    values = {p["segment"]: p["profile"][feature] for p in segmenter.profiles_}
    assert values[segment] == extreme(values.values())  # type: ignore[operator]
