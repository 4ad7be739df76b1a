"""The real sample prices (AAPL, FB, GOOG, IBM, MSFT) through reading, fitting and predicting."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.backtest import holdout_forecast
from ml.forecast import Forecaster
from ml.segment import Segmenter


def test_read_uses_adjusted_close(real_prices: pd.DataFrame) -> None:
    assert sorted(real_prices["ticker"].unique()) == ["AAPL", "FB", "GOOG", "IBM", "MSFT"]
    assert len(real_prices) == 12154 and "close_raw" in real_prices.columns
    aapl = real_prices[real_prices["ticker"] == "AAPL"].set_index("date")
    moves = np.log(aapl[["close", "close_raw"]]).diff().loc["2000-06-21"]
    # The 2:1 split of 2000-06-21 halves the unadjusted close; the modelled one rose.
    assert moves["close_raw"] < -0.5
    assert moves["close"] > 0


def test_forecaster_fits_and_predicts_real_prices(real_prices: pd.DataFrame) -> None:
    report = holdout_forecast(real_prices, Forecaster(horizon=5, max_iter=50))
    assert report["relative_mae"] < 1.15
    assert abs(report["coverage_80"] - 0.8) < 0.1
    model = Forecaster(horizon=5, max_iter=50).fit(real_prices)
    result = model.predict(real_prices)
    assert len(result) == 25 and result["last_date"].eq(pd.Timestamp("2013-03-01")).all()
    assert (result["lower_95"] < result["close"]).all() and (
        result["close"] < result["upper_95"]
    ).all()


def test_segmenter_fits_real_prices(real_prices: pd.DataFrame) -> None:
    model = Segmenter().fit(real_prices)
    assert 2 <= model.n_segments_ <= 4
    assert len(model.predict(real_prices)) == 5
