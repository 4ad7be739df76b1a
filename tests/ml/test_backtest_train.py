"""Holdout backtest, segment quality, training and the promotion gate."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
import pytest

from ml.backtest import holdout_forecast, segment_quality
from ml.errors import RegistryError
from ml.forecast import Forecaster
from ml.segment import Segmenter
from ml.train import promotion_decision, train_model


@pytest.fixture(scope="module")
def holdout(market: pd.DataFrame) -> dict[str, Any]:
    return holdout_forecast(market, Forecaster())


def test_holdout_report(holdout: dict[str, Any], market: pd.DataFrame) -> None:
    json.dumps(holdout, allow_nan=False)
    dates = sorted(market["date"].unique())
    assert holdout["test_start"] == pd.Timestamp(dates[int(len(dates) * 0.85)]).strftime("%Y-%m-%d")
    assert holdout["test_end"] == "2025-12-31"
    assert pd.Timestamp(holdout["train_end"]) < pd.Timestamp(
        holdout["test_start"]
    ) - pd.offsets.BDay(9)
    assert holdout["horizon"] == 10 and len(holdout["per_horizon"]) == 10
    assert holdout["n_origins"] == 32 * (len(dates) - int(len(dates) * 0.85)) - 32
    assert math.isfinite(holdout["relative_mae"]) and holdout["relative_mae"] < 1.15
    assert holdout["relative_mae"] == pytest.approx(holdout["mae"] / holdout["mae_naive"])
    direction = holdout["directional_accuracy"]
    assert direction is None or 0.3 < direction < 0.7


def test_conformal_coverage_is_near_nominal(holdout: dict[str, Any]) -> None:
    assert holdout["coverage_80"] == pytest.approx(0.80, abs=0.07)
    assert holdout["coverage_95"] == pytest.approx(0.95, abs=0.04)
    for step in holdout["per_horizon"]:
        assert step["coverage_80"] == pytest.approx(0.80, abs=0.1)
    widths = [step["mean_width_80"] for step in holdout["per_horizon"]]
    assert widths == sorted(widths)


def test_segment_quality(segmenter: Segmenter, market: pd.DataFrame) -> None:
    quality = segment_quality(segmenter, market)
    assert quality["n_segments"] == segmenter.n_segments_
    assert quality["silhouette"] == pytest.approx(segmenter.silhouette_)
    assert sum(s["size"] for s in quality["sizes"]) == 32
    json.dumps(quality, allow_nan=False)


def test_train_forecast_reports_progress(market: pd.DataFrame) -> None:
    stages: list[tuple[float, str]] = []
    small = market[market["ticker"].str.startswith(("UTL", "TEC"))]
    params = {"horizon": 3, "max_iter": 10}
    model, metrics = train_model(
        "forecast", small, params=params, progress=lambda f, s: stages.append((f, s))
    )
    assert isinstance(model, Forecaster) and model.horizon == 3
    assert model.trained_through_ == small["date"].max()
    assert {"relative_mase", "coverage_80", "coverage_95", "point", "backtest"} <= set(metrics)
    fractions = [f for f, _ in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [s for _, s in stages][0] == "backtesting" and ("fitting" in {s for _, s in stages})


def test_train_segment_and_unknown_name(market: pd.DataFrame) -> None:
    model, metrics = train_model("segment", market, params={"n_segments": 4})
    assert isinstance(model, Segmenter) and metrics["n_segments"] == 4
    with pytest.raises(RegistryError):
        train_model("nope", market)
    with pytest.raises(ValueError):
        train_model("forecast", market, params={"bogus": 1})


def test_promotion_decision_segment() -> None:
    assert promotion_decision("segment", {"silhouette": 0.49}, {"silhouette": 0.5})[0]
    ok, reason = promotion_decision("segment", {"silhouette": 0.4}, {"silhouette": 0.5})
    assert not ok and "0.4000" in reason
    with pytest.raises(RegistryError):
        promotion_decision("other", {}, None)
