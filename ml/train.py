"""Train a named model with evaluation, and decide whether it replaces the champion."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from ml.backtest import holdout_forecast, segment_quality
from ml.errors import RegistryError
from ml.forecast import Forecaster
from ml.segment import Segmenter

MODEL_NAMES = ("forecast", "segment")
# A challenger's 80% coverage may fall at most this far below the champion's.
COVERAGE_SLACK = 0.05

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, stage: str) -> None:
    """Ignore a progress report."""


def train_model(
    name: str,
    prices: pd.DataFrame,
    *,
    params: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> tuple[Forecaster | Segmenter, dict[str, Any]]:
    """Build model ``name`` with ``params``, evaluate it, fit it on all prices; return both.

    ``progress(fraction, stage)`` is called as stages start and during long fits, so a
    caller can report progress, or cancel by raising from it.
    """
    report = progress or _no_progress
    started = time.perf_counter()
    model: Forecaster | Segmenter
    if name == "forecast":
        model, metrics = _train_forecaster(prices, dict(params or {}), report)
    elif name == "segment":
        model, metrics = _train_segmenter(prices, dict(params or {}), report)
    else:
        raise RegistryError(f"unknown model name {name!r}; expected one of {MODEL_NAMES}")
    report(1.0, "done")
    metrics["n_rows"] = int(len(prices))
    metrics["n_tickers"] = int(prices["ticker"].nunique())
    metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    return model, metrics


def _train_forecaster(
    prices: pd.DataFrame, params: dict[str, Any], report: Progress
) -> tuple[Forecaster, dict[str, Any]]:
    """Score a forecaster on the holdout, then fit it on all prices."""
    model: Forecaster = Forecaster().set_params(**params)  # unknown names: ValueError
    # The holdout fits a clone on the pre-test data: about half of the work.
    report(0.0, "evaluating")
    metrics = holdout_forecast(prices, model, progress=lambda f: report(0.5 * f, "evaluating"))
    report(0.5, "fitting")
    model.fit(prices, progress=lambda f: report(0.5 + 0.5 * f, "fitting"))
    return model, metrics


def _train_segmenter(
    prices: pd.DataFrame, params: dict[str, Any], report: Progress
) -> tuple[Segmenter, dict[str, Any]]:
    """Fit a segmenter on all prices, then score its segments."""
    model: Segmenter = Segmenter().set_params(**params)
    report(0.0, "fitting")
    model.fit(prices)
    report(0.8, "evaluating")
    return model, segment_quality(model, prices)


def promotion_decision(
    name: str,
    metrics: Mapping[str, Any],
    champion_metrics: Mapping[str, Any] | None,
    *,
    tolerance: float = 0.02,
) -> tuple[bool, str]:
    """Decide whether a new model replaces the champion; return the decision and why.

    forecast: relative MAE (model / naive) at most the champion's * (1 + tolerance), and
    80% coverage at most COVERAGE_SLACK below the champion's. segment: silhouette at
    least the champion's - tolerance. Without a champion the new model is promoted.
    """
    if name not in MODEL_NAMES:
        raise RegistryError(f"unknown model name {name!r}; expected one of {MODEL_NAMES}")
    if champion_metrics is None:
        return True, "promoted: there is no champion yet"
    if name == "forecast":
        return _forecast_decision(metrics, champion_metrics, tolerance)
    return _segment_decision(metrics, champion_metrics, tolerance)


def _forecast_decision(
    new: Mapping[str, Any], old: Mapping[str, Any], tolerance: float
) -> tuple[bool, str]:
    """Compare relative MAE and 80% coverage of a challenger with the champion's."""
    rel, old_rel = _number(new, "relative_mae"), _number(old, "relative_mae")
    cov, old_cov = _number(new, "coverage_80"), _number(old, "coverage_80")
    if rel is None or cov is None:
        return False, "kept: the new model has no relative_mae or coverage_80 to compare"
    if old_rel is None or old_cov is None:
        return True, "promoted: the champion has no comparable relative_mae or coverage_80"
    figures = (
        f"relative MAE {rel:.4f} vs champion {old_rel:.4f} (limit {old_rel * (1 + tolerance):.4f}),"
        f" 80% coverage {cov:.3f} vs champion {old_cov:.3f} (floor {old_cov - COVERAGE_SLACK:.3f})"
    )
    if rel > old_rel * (1 + tolerance):
        return False, f"kept: relative MAE is worse than the champion's; {figures}"
    if cov < old_cov - COVERAGE_SLACK:
        return False, f"kept: 80% interval coverage fell; {figures}"
    return True, f"promoted: {figures}"


def _segment_decision(
    new: Mapping[str, Any], old: Mapping[str, Any], tolerance: float
) -> tuple[bool, str]:
    """Compare the silhouette of a challenger segmenter with the champion's."""
    score, old_score = _number(new, "silhouette"), _number(old, "silhouette")
    if score is None:
        return False, "kept: the new segmenter has no silhouette to compare"
    if old_score is None:
        return True, "promoted: the champion has no silhouette to compare"
    figures = (
        f"silhouette {score:.4f} vs champion {old_score:.4f} (floor {old_score - tolerance:.4f})"
    )
    if score < old_score - tolerance:
        return False, f"kept: {figures}"
    return True, f"promoted: {figures}"


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
    """Return a finite metric as float, or None when absent or not a finite number."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
