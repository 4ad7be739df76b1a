"""Forecaster: output contract, intervals, no look-ahead, vectorised paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ml.errors import InsufficientHistoryError, UnknownTickerError
from ml.forecast import MIN_HISTORY, OUTPUT_COLUMNS, VOL_BANDS, Forecaster, latest_features


def test_fitted_attributes(forecaster: Forecaster, market: pd.DataFrame) -> None:
    assert forecaster.tickers_ == sorted(market["ticker"].unique())
    assert forecaster.trained_through_ == market["date"].max()
    assert forecaster.quantiles_.shape == (10, VOL_BANDS, 2)
    assert len(forecaster.estimators_) == 10
    assert forecaster.min_history_ == MIN_HISTORY == 41
    assert len(forecaster.feature_names_) == 14
    # Quantiles of normalized residuals: 95% beyond 80%, both near a unit normal's.
    q80, q95 = forecaster.quantiles_.T
    assert np.all(q95 > q80)
    assert np.all((q80 > 0.9) & (q80 < 1.8))


def test_sklearn_contract() -> None:
    model = Forecaster(horizon=3, max_iter=7)
    assert clone(model).get_params() == model.get_params()
    with pytest.raises(NotFittedError):
        model.predict(pd.DataFrame(columns=["date", "ticker", "close"]))


def test_predict_shape_dates_and_band_order(forecaster: Forecaster, market: pd.DataFrame) -> None:
    result = forecaster.predict(market, horizon=5)
    assert list(result.columns) == list(OUTPUT_COLUMNS)
    assert len(result) == 32 * 5
    assert list(result["step"][:5]) == [1, 2, 3, 4, 5]
    first = result[result["ticker"] == "TEC01"]
    assert list(first["date"]) == list(pd.bdate_range("2026-01-01", periods=5))
    assert (first["last_date"] == pd.Timestamp("2025-12-31")).all()
    last_close = market.loc[market["ticker"] == "TEC01", "close"].iloc[-1]
    assert first["last_close"].iloc[0] == last_close
    ordered = result[["lower_95", "lower_80", "close", "upper_80", "upper_95"]].to_numpy()
    assert np.all(np.diff(ordered, axis=1) >= 0)
    assert np.isfinite(ordered).all()


def test_bands_widen_with_horizon(forecaster: Forecaster, market: pd.DataFrame) -> None:
    result = forecaster.predict(market, tickers=["FIN03"])
    width = (result["upper_80"] - result["lower_80"]).to_numpy()
    assert np.all(np.diff(width) > 0)


def test_tickers_filter_and_unknown_tickers(forecaster: Forecaster, market: pd.DataFrame) -> None:
    result = forecaster.predict(market, tickers=[" utl02", "TEC01"], horizon=2)
    assert sorted(result["ticker"].unique()) == ["TEC01", "UTL02"]
    with pytest.raises(UnknownTickerError) as info:
        forecaster.predict(market, tickers=["TEC01", "NOPE", "ZZZ"])
    assert info.value.tickers == ["NOPE", "ZZZ"]


def test_horizon_beyond_fitted_is_rejected(forecaster: Forecaster, market: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="between 1 and 10"):
        forecaster.predict(market, horizon=11)
    with pytest.raises(ValueError):
        forecaster.predict(market, horizon=0)


def test_short_history_names_the_ticker(forecaster: Forecaster, market: pd.DataFrame) -> None:
    short = market[market["ticker"] == "UTL01"].tail(MIN_HISTORY - 1)
    both = pd.concat([market[market["ticker"] == "TEC01"], short])
    with pytest.raises(InsufficientHistoryError, match=r"UTL01 \(40\)"):
        forecaster.predict(both)
    exact = market[market["ticker"] == "UTL01"].tail(MIN_HISTORY)
    assert len(forecaster.predict(exact)) == 10


def test_as_of_starts_from_that_date(forecaster: Forecaster, market: pd.DataFrame) -> None:
    result = forecaster.predict(market, tickers=["ENR01"], as_of="2025-06-15")  # a Sunday
    assert (result["last_date"] == pd.Timestamp("2025-06-13")).all()
    assert result["date"].iloc[0] == pd.Timestamp("2025-06-16")


def test_batch_equals_one_ticker_at_a_time(forecaster: Forecaster, market: pd.DataFrame) -> None:
    batch = forecaster.predict(market, horizon=3)
    singles = pd.concat(
        [forecaster.predict(market, tickers=[t], horizon=3) for t in forecaster.tickers_[:6]],
        ignore_index=True,
    )
    expected = batch[batch["ticker"].isin(forecaster.tickers_[:6])].reset_index(drop=True)
    pd.testing.assert_frame_equal(singles, expected)


def test_predict_origins_equals_predict_as_of(forecaster: Forecaster, market: pd.DataFrame) -> None:
    origins = forecaster.predict_origins(market, horizon=2, start="2025-03-03")
    for day in ("2025-03-03", "2025-07-15"):
        expected = forecaster.predict(market, horizon=2, as_of=day)
        got = origins[origins["last_date"] == pd.Timestamp(day)].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected)


def test_predict_series(forecaster: Forecaster, market: pd.DataFrame) -> None:
    closes = market.loc[market["ticker"] == "FIN01", "close"].tolist()
    dated = forecaster.predict_series(closes, horizon=4, last_date="2025-12-31")
    by_ticker = forecaster.predict(market, tickers=["FIN01"], horizon=4)
    assert (dated["ticker"] == "series").all()
    np.testing.assert_allclose(dated["close"], by_ticker["close"])
    assert list(dated["date"]) == list(by_ticker["date"])
    undated = forecaster.predict_series(closes[-100:], horizon=2)
    assert undated["date"].isna().all() and undated["last_date"].isna().all()
    assert len(undated) == 2


@pytest.mark.parametrize(
    ("closes", "error"),
    [
        ([10.0] * (MIN_HISTORY - 1), InsufficientHistoryError),
        ([10.0] * 50 + [0.0], ValueError),
        ([10.0] * 50 + [float("nan")], ValueError),
        ([[10.0] * 50], ValueError),
    ],
)
def test_predict_series_rejects_bad_input(
    forecaster: Forecaster, closes: list[float], error: type[Exception]
) -> None:
    with pytest.raises(error):
        forecaster.predict_series(closes)


def test_flat_series_gives_a_flat_forecast(forecaster: Forecaster) -> None:
    result = forecaster.predict_series([25.0] * 60, horizon=3)
    np.testing.assert_allclose(result[["close", "lower_95", "upper_95"]], 25.0, rtol=1e-2)


def test_fit_is_deterministic(market: pd.DataFrame) -> None:
    small = market[market["ticker"].str.startswith(("UTL", "TEC"))]
    first = Forecaster(horizon=2, max_iter=10).fit(small)
    second = Forecaster(horizon=2, max_iter=10).fit(small)
    np.testing.assert_array_equal(first.quantiles_, second.quantiles_)
    pd.testing.assert_frame_equal(first.predict(small), second.predict(small))


def test_fit_reports_progress(market: pd.DataFrame) -> None:
    seen: list[float] = []
    small = market[market["ticker"].str.startswith("UTL")]
    Forecaster(horizon=2, max_iter=5).fit(small, progress=seen.append)
    assert seen == [0.25, 0.5, 0.75, 1.0]


def test_fit_on_too_little_data_is_insufficient_history(market: pd.DataFrame) -> None:
    with pytest.raises(InsufficientHistoryError):
        Forecaster(horizon=5).fit(market[market["ticker"] == "UTL01"].head(60))


def test_business_day_steps_match_pandas_bday() -> None:
    from ml.forecast import _add_business_days

    origins = pd.DatetimeIndex(pd.date_range("2025-01-01", periods=14))  # includes weekends
    for days in (1, 2, 6):
        expected = origins + pd.offsets.BDay(days)
        moved = _add_business_days(origins.to_numpy(), np.full(14, days))
        assert pd.DatetimeIndex(moved).equals(expected)


def test_predict_latest_equals_predict(forecaster: Forecaster, market: pd.DataFrame) -> None:
    """The workers' fast path (features precomputed once per model) serves the same forecast
    as recomputing them from the prices, for all tickers and for any subset."""
    latest = latest_features(market)
    pd.testing.assert_frame_equal(
        forecaster.predict_latest(latest, horizon=5),
        forecaster.predict(market, horizon=5),
        check_exact=True,
    )
    tickers = sorted(market["ticker"].unique())
    for subset in ([tickers[3]], [tickers[7], tickers[0], tickers[7]], tickers[:5]):
        pd.testing.assert_frame_equal(
            forecaster.predict_latest(latest, tickers=subset, horizon=3),
            forecaster.predict(market, tickers=subset, horizon=3).reset_index(drop=True),
            check_exact=True,
        )
    columns = forecaster.forecast_latest(latest, tickers=tickers[:5], horizon=3)
    assert list(columns) == list(OUTPUT_COLUMNS)
    pd.testing.assert_frame_equal(
        pd.DataFrame(columns), forecaster.predict_latest(latest, tickers=tickers[:5], horizon=3)
    )
    with pytest.raises(UnknownTickerError):
        forecaster.predict_latest(latest, tickers=["NOPE"])
    short = market[market["ticker"] != tickers[0]]
    short = pd.concat([short, market[market["ticker"] == tickers[0]].tail(MIN_HISTORY - 1)])
    with pytest.raises(InsufficientHistoryError, match=tickers[0]):
        forecaster.predict_latest(latest_features(short), tickers=[tickers[0]])
    assert latest.through == market["date"].max()
