"""Out-of-sample evaluation: an embargoed holdout for the forecaster, quality of segments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import silhouette_score

from ml.errors import InsufficientHistoryError
from ml.forecast import Forecaster
from ml.segment import Segmenter, ticker_features


def holdout_forecast(
    prices: pd.DataFrame,
    model: Forecaster,
    *,
    test_fraction: float = 0.15,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Fit a clone of ``model`` before a test window and score it there against naive.

    The clone sees only dates before the last ``test_fraction`` of dates, minus an
    embargo of ``horizon`` dates, so none of its training targets reach into the test
    window. Every test date of every ticker is then a forecast origin; a step-h forecast
    is compared with the close h trading rows later. Errors are relative to the origin's
    close; the baseline is the naive last-value forecast.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be strictly between 0 and 1")
    horizon = int(model.horizon)
    dates = np.unique(prices["date"].to_numpy(dtype="datetime64[ns]"))
    test_start = int(len(dates) * (1.0 - test_fraction))
    if test_start - horizon < 1 or test_start >= len(dates):
        raise InsufficientHistoryError("too few dates for a holdout backtest")
    train = prices[prices["date"] < dates[test_start - horizon]]
    fitted = clone(model).fit(train, progress=progress)

    forecast = fitted.predict_origins(prices, start=dates[test_start])
    actual = _future_closes(prices, horizon)
    scored = forecast.merge(actual, on=["ticker", "last_date", "step"], how="inner")
    scored = scored[scored["actual"].notna()]
    if scored.empty:
        raise InsufficientHistoryError("no forecast in the test window has a realized close")

    per_step = [
        {"step": int(step), **_scores(group)} for step, group in scored.groupby("step", sort=True)
    ]
    return {
        "test_start": _iso(dates[test_start]),
        "test_end": _iso(dates[-1]),
        "n_origins": int(len(scored[["ticker", "last_date"]].drop_duplicates())),
        "horizon": horizon,
        "train_end": _iso(train["date"].max()),
        **_scores(scored),
        "per_horizon": per_step,
    }


def _future_closes(prices: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Return (ticker, last_date, step, actual): the close ``step`` trading rows later."""
    frame = prices[["date", "ticker", "close"]].sort_values(["ticker", "date"], kind="stable")
    by_ticker = frame.groupby("ticker", sort=False)["close"]
    parts = [
        pd.DataFrame(
            {
                "ticker": frame["ticker"].astype(str).to_numpy(),
                "last_date": frame["date"].to_numpy(),
                "step": step,
                "actual": by_ticker.shift(-step).to_numpy(),
            }
        )
        for step in range(1, horizon + 1)
    ]
    return pd.concat(parts, ignore_index=True)


def _scores(frame: pd.DataFrame) -> dict[str, Any]:
    """Return relative MAE (model, naive, ratio), direction hit rate, coverage, width.

    Undefined figures (nothing moved, a zero naive error) are None, which JSON allows.
    """
    origin = frame["last_close"].to_numpy()
    actual = frame["actual"].to_numpy()
    predicted = frame["close"].to_numpy()
    mae = float(np.mean(np.abs(predicted - actual) / origin))
    mae_naive = float(np.mean(np.abs(origin - actual) / origin))
    moved = actual != origin  # a flat day has no direction to get right
    hits = np.sign(predicted - origin) == np.sign(actual - origin)
    return {
        "n": int(len(frame)),
        "mae": mae,
        "mae_naive": mae_naive,
        "relative_mae": mae / mae_naive if mae_naive > 0 else None,
        "directional_accuracy": float(np.mean(hits[moved])) if moved.any() else None,
        "coverage_80": _coverage(frame, "80"),
        "coverage_95": _coverage(frame, "95"),
        "mean_width_80": float(np.mean((frame["upper_80"] - frame["lower_80"]) / origin)),
    }


def _coverage(frame: pd.DataFrame, level: str) -> float:
    """Return the share of realized closes inside the ``level``% band."""
    inside = frame["actual"].between(frame[f"lower_{level}"], frame[f"upper_{level}"])
    return float(inside.mean())


def _iso(value: Any) -> str:
    """Return a date as YYYY-MM-DD."""
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def segment_quality(model: Segmenter, prices: pd.DataFrame) -> dict[str, Any]:
    """Score a fitted segmenter on ``prices``: segment count, silhouette and sizes.

    The silhouette is None when it is undefined (one segment, or one ticker per segment).
    """
    features = ticker_features(prices, window=model.window)
    segments = model.predict_features(features.to_numpy())["segment"].to_numpy()
    distinct = len(np.unique(segments))
    silhouette = (
        float(silhouette_score(model.scaler_.transform(features.to_numpy()), segments))
        if 2 <= distinct < len(segments)
        else None
    )
    values, counts = np.unique(segments, return_counts=True)
    sizes = [
        {"segment": int(s), "label": model.labels_[int(s)], "size": int(n)}
        for s, n in zip(values, counts, strict=True)
    ]
    return {
        "n_segments": int(model.n_segments_),
        "n_tickers": int(len(segments)),
        "silhouette": silhouette,
        "sizes": sizes,
    }
