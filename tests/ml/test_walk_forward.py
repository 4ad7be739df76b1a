"""Walk-forward backtest, shrinkage toward naive, gated promotion, segment id alignment."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ml.backtest import backtest_forecaster, format_table, walk_forward
from ml.forecast import Forecaster
from ml.segment import Segmenter
from ml.train import promotion_decision, train_model
from tests.ml.conftest import mean_reverting_market

FAST = {"horizon": 3, "max_iter": 20}
ORIGINS, STEP = 3, 30


@pytest.fixture(scope="module")
def small(market: pd.DataFrame) -> pd.DataFrame:
    return market[market["ticker"].str.startswith(("UTL", "TEC"))].reset_index(drop=True)


@pytest.fixture(scope="module")
def report(small: pd.DataFrame) -> dict[str, Any]:
    return backtest_forecaster(small, Forecaster(**FAST), n_origins=ORIGINS, step=STEP)


def _shuffle_returns(prices: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Permute each ticker's daily log-returns in time: same distribution, no pattern."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, group in prices.groupby("ticker", sort=True):
        returns = np.diff(np.log(group["close"].to_numpy()))
        path = np.concatenate([[0.0], np.cumsum(rng.permutation(returns))])
        parts.append(group.assign(close=group["close"].iloc[0] * np.exp(path)))
    return pd.concat(parts, ignore_index=True)


def test_report_structure(report: dict[str, Any], small: pd.DataFrame) -> None:
    json.dumps(report, allow_nan=False)
    dates = np.sort(small["date"].unique())
    assert report["test_start"] == pd.Timestamp(dates[-1 - ORIGINS * STEP]).strftime("%Y-%m-%d")
    # Embargo: the first fold trains on dates strictly before test_start - H.
    first_train_end = pd.Timestamp(report["first_train_end"])
    assert (dates > first_train_end.to_datetime64()).sum() == ORIGINS * STEP + 1 + 3
    assert set(report["results"]) == {"overall", "calm", "middle", "volatile"}
    for subset in report["results"].values():
        assert set(subset) == {"model", "naive", "drift"}
        for method in subset.values():
            assert [s["step"] for s in method] == [1, 2, 3]
    overall = report["results"]["overall"]
    # Each of the 16 tickers at each of the ORIGINS*STEP origins, less unrealized steps.
    assert overall["model"][0]["n"] == 16 * ORIGINS * STEP
    assert all(s["relative_mase"] == pytest.approx(1.0) for s in overall["naive"])
    assert overall["naive"][0]["directional_accuracy"] is None
    terciles = sum(report["results"][t]["model"][0]["n"] for t in ("calm", "middle", "volatile"))
    assert terciles == overall["model"][0]["n"]
    assert "relMASE" in format_table(report)


def test_model_is_not_worse_than_naive_and_bands_cover(report: dict[str, Any]) -> None:
    for s in report["results"]["overall"]["model"]:
        assert s["relative_mase"] <= 1.02
        assert s["coverage_80"] == pytest.approx(0.80, abs=0.08)
        assert s["coverage_95"] == pytest.approx(0.95, abs=0.05)
        assert s["winkler_80"] >= s["width_80"] > 0
    widths = [s["width_80"] for s in report["results"]["overall"]["model"]]
    assert widths == sorted(widths)
    calm = report["summary"]["calm"]["model"]["width_80"]
    assert report["summary"]["volatile"]["model"]["width_80"] > calm


def test_backtest_predictions_do_not_read_past_the_origin(small: pd.DataFrame) -> None:
    """Leakage: changing every price after as_of leaves every earlier origin's forecast."""
    dates = np.sort(small["date"].unique())
    as_of = pd.Timestamp(dates[-1 - STEP - STEP // 2])  # inside the second fold
    changed = small.copy()
    later = changed["date"] > as_of
    rng = np.random.default_rng(0)
    changed.loc[later, "close"] *= np.exp(rng.normal(0, 0.2, int(later.sum())))
    kwargs = {"n_origins": 2, "step": STEP}
    base, _ = walk_forward(small, Forecaster(horizon=2, max_iter=5), **kwargs)
    other, _ = walk_forward(changed, Forecaster(horizon=2, max_iter=5), **kwargs)
    predicted = [c for c in base.columns if c.startswith(("model_", "naive_", "drift_"))]
    before = base["origin"] <= as_of
    assert before.sum() > 0 and (~before).sum() > 0
    pd.testing.assert_frame_equal(
        base.loc[before, ["ticker", "origin", "step", *predicted]],
        other.loc[other["origin"] <= as_of, ["ticker", "origin", "step", *predicted]],
    )
    # The changed prices do reach the later forecasts: the test can fail.
    assert not np.allclose(
        base.loc[~before, "model_hi80"].to_numpy(), other.loc[~before, "model_hi80"].to_numpy()
    )


def test_shrinkage_keeps_a_learnable_model_and_drops_noise() -> None:
    ar = mean_reverting_market()
    learned = Forecaster(horizon=1).fit(ar)
    assert learned.shrinkage_[0] > 0 and learned.point_ != "naive"
    noise = Forecaster(horizon=1).fit(_shuffle_returns(ar))
    assert noise.shrinkage_[0] <= learned.shrinkage_[0]


def test_shuffled_challenger_is_not_promoted() -> None:
    ar = mean_reverting_market()
    params, backtest = {"horizon": 1}, {"n_origins": 2, "step": 40}
    _, champion = train_model("forecast", ar, params=params, backtest=backtest)
    first, why = promotion_decision("forecast", champion, None)
    assert first, why
    _, challenger = train_model("forecast", _shuffle_returns(ar), params=params, backtest=backtest)
    assert challenger["relative_mase"] > champion["relative_mase"]
    promoted, reason = promotion_decision("forecast", challenger, champion, tolerance=0.01)
    assert not promoted
    assert "worse than the champion" in reason
    assert f"{challenger['relative_mase']:.4f}" in reason
    assert f"{champion['relative_mase']:.4f}" in reason


def test_promotion_gate_on_coverage_band() -> None:
    good = {"relative_mase": 1.0, "coverage_80": 0.81, "coverage_95": 0.95}
    ok, reason = promotion_decision("forecast", good, None)
    assert ok and "first model" in reason
    wide = {**good, "coverage_80": 0.90}
    ok, reason = promotion_decision("forecast", wide, None, coverage_band=0.05)
    assert not ok and "80% coverage 0.900" in reason
    assert promotion_decision("forecast", wide, None, coverage_band=0.12)[0]
    ok, reason = promotion_decision("forecast", {**good, "relative_mase": 1.03}, good)
    assert not ok and "limit 1.0200" in reason
    ok, _ = promotion_decision("forecast", {**good, "relative_mase": 1.015}, good)
    assert ok
    ok, _ = promotion_decision("forecast", {**good, "coverage_95": None}, good)
    assert not ok


def test_segment_ids_are_kept_across_retrains(market: pd.DataFrame) -> None:
    dates = np.sort(market["date"].unique())
    earlier = market[market["date"] <= dates[-60]]
    previous = Segmenter().fit(earlier)
    again = Segmenter().fit(market)
    # Scramble the fresh model's ids, then let alignment recover the previous ones.
    k = again.n_segments_
    again.segment_ids_ = np.roll(np.arange(k), 1)
    churn = again.align_to(previous)
    assert churn is not None and 0.0 <= churn <= 1.0
    old, new = previous.assignments(), again.assignments()
    moved = np.mean([old[t] != new[t] for t in old])
    assert churn == pytest.approx(moved)
    assert churn <= 0.25
    assert sorted(again.labels_) == sorted({p["segment"] for p in again.profiles_})
    assert set(again.predict(market)["segment"]) <= set(again.labels_)


def test_segment_card_reports_churn(market: pd.DataFrame, segmenter: Segmenter) -> None:
    _, metrics = train_model("segment", market, previous=segmenter)
    assert metrics["churn"] == pytest.approx(0.0)
    _, first = train_model("segment", market)
    assert first["churn"] is None


def test_coverage_standard_error_counts_dates_not_forecasts() -> None:
    """Forecasts of one date miss together when the market moves: the standard error of a
    coverage must then be that of the dates, not of the (many more) forecasts."""
    from ml.backtest import _block_standard_error

    rng = np.random.default_rng(0)
    n_dates, n_tickers = 200, 20
    origin = np.repeat(np.arange(n_dates).astype("datetime64[D]"), n_tickers)
    independent = rng.random(n_dates * n_tickers) < 0.8
    shared = np.repeat(rng.random(n_dates) < 0.8, n_tickers)
    iid_se = math.sqrt(0.8 * 0.2 / (n_dates * n_tickers))  # 0.0063
    date_se = math.sqrt(0.8 * 0.2 / n_dates)  # 0.028
    assert 0.5 * iid_se < _block_standard_error(independent, origin) < 1.6 * iid_se
    assert 0.6 * date_se < _block_standard_error(shared, origin) < 1.5 * date_se
    assert _block_standard_error(np.ones(len(origin), dtype=bool), origin) == 0.0
    assert _block_standard_error(independent[:5], origin[:5]) is None  # one block
