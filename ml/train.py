"""Train a named model with evaluation, and decide whether it replaces the champion."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from ml.backtest import DEFAULT_ORIGINS, DEFAULT_STEP, backtest_forecaster, segment_quality
from ml.errors import RegistryError
from ml.forecast import Forecaster
from ml.segment import Segmenter

MODEL_NAMES = ("forecast", "segment")
# Default band around nominal that 80% and 95% backtest coverage must fall in.
COVERAGE_BAND = 0.05
NOMINAL = {"coverage_80": 0.80, "coverage_95": 0.95}

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, stage: str) -> None:
    """Ignore a progress report."""


def train_model(
    name: str,
    prices: pd.DataFrame,
    *,
    params: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    previous: object | None = None,
    backtest: Mapping[str, int] | None = None,
) -> tuple[Forecaster | Segmenter, dict[str, Any]]:
    """Build model ``name`` with ``params``, evaluate it, fit it on all prices; return both.

    ``progress(fraction, stage)`` is called as stages start and during long fits, so a
    caller can report progress, or cancel by raising from it. ``previous`` is the current
    segmenter, if any: the new one keeps its segment ids where segments match and reports
    churn. ``backtest`` overrides the forecaster's walk-forward ``n_origins`` and ``step``.
    """
    report = progress or _no_progress
    started = time.perf_counter()
    model: Forecaster | Segmenter
    if name == "forecast":
        model, metrics = _train_forecaster(prices, dict(params or {}), report, dict(backtest or {}))
    elif name == "segment":
        prior = previous if isinstance(previous, Segmenter) else None
        model, metrics = _train_segmenter(prices, dict(params or {}), report, prior)
    else:
        raise RegistryError(f"unknown model name {name!r}; expected one of {MODEL_NAMES}")
    report(1.0, "done")
    metrics["n_rows"] = int(len(prices))
    metrics["n_tickers"] = int(prices["ticker"].nunique())
    metrics["train_seconds"] = round(time.perf_counter() - started, 3)
    return model, metrics


def _train_forecaster(
    prices: pd.DataFrame, params: dict[str, Any], report: Progress, backtest: dict[str, int]
) -> tuple[Forecaster, dict[str, Any]]:
    """Backtest a forecaster walk-forward, then fit it on all prices.

    The card's headline figures are the model's walk-forward summary over steps 1..H;
    the full report (per step, per volatility tercile, naive and drift) is ``backtest``.
    """
    model: Forecaster = Forecaster().set_params(**params)  # unknown names: ValueError
    n_origins = int(backtest.get("n_origins", DEFAULT_ORIGINS))
    step = int(backtest.get("step", DEFAULT_STEP))
    # The walk-forward refits n_origins clones; the final fit is one more.
    share = n_origins / (n_origins + 1)
    report(0.0, "backtesting")
    report_ = backtest_forecaster(
        prices,
        model,
        n_origins=n_origins,
        step=step,
        progress=lambda f: report(share * f, "backtesting"),
    )
    report(share, "fitting")
    model.fit(prices, progress=lambda f: report(share + (1 - share) * f, "fitting"))
    summary = report_["summary"]["overall"]
    metrics: dict[str, Any] = {
        "evaluation": (
            f"walk-forward backtest: {n_origins} expanding-window refits {step} business days "
            f"apart, embargo {report_['embargo']} days, every (ticker, date) from "
            f"{report_['test_start']} to {report_['test_end']} an origin; "
            "figures averaged over steps 1..H"
        ),
        **summary["model"],
        "relative_mase_drift": summary["drift"]["relative_mase"],
        "coverage_80_by_tercile": {
            t: report_["summary"][t]["model"]["coverage_80"] for t in ("calm", "middle", "volatile")
        },
        "point": model.point_,
        "shrinkage": [float(w) for w in model.shrinkage_],
        "backtest": report_,
    }
    return model, metrics


def _train_segmenter(
    prices: pd.DataFrame, params: dict[str, Any], report: Progress, previous: Segmenter | None
) -> tuple[Segmenter, dict[str, Any]]:
    """Fit a segmenter on all prices, align its ids to ``previous``, score its segments."""
    model: Segmenter = Segmenter().set_params(**params)
    report(0.0, "fitting")
    model.fit(prices)
    churn = model.align_to(previous) if previous is not None else None
    report(0.8, "evaluating")
    metrics = segment_quality(model, prices)
    metrics["churn"] = churn
    metrics["previous_ids_matched"] = previous is not None
    return model, metrics


def promotion_decision(
    name: str,
    metrics: Mapping[str, Any],
    champion_metrics: Mapping[str, Any] | None,
    *,
    tolerance: float = 0.02,
    coverage_band: float = COVERAGE_BAND,
) -> tuple[bool, str]:
    """Decide whether a new model replaces the champion; return the decision and why.

    forecast: the walk-forward 80% and 95% coverage must each be within
    ``coverage_band`` of nominal, and the relative MASE (vs naive) at most the champion's
    + ``tolerance``; the first model needs only the coverage band. segment: silhouette at
    least the champion's - ``tolerance``; the first segmenter is promoted.
    """
    if name not in MODEL_NAMES:
        raise RegistryError(f"unknown model name {name!r}; expected one of {MODEL_NAMES}")
    if name == "forecast":
        return _forecast_decision(metrics, champion_metrics, tolerance, coverage_band)
    if champion_metrics is None:
        return True, "promoted: there is no champion yet"
    return _segment_decision(metrics, champion_metrics, tolerance)


def _forecast_decision(
    new: Mapping[str, Any], old: Mapping[str, Any] | None, tolerance: float, band: float
) -> tuple[bool, str]:
    """Gate a challenger forecaster on coverage, then on relative MASE vs the champion."""
    coverage = {key: _number(new, key) for key in NOMINAL}
    rel = _number(new, "relative_mase")
    if rel is None or None in coverage.values():
        return False, "kept: the new model has no relative_mase, coverage_80 or coverage_95"
    misses = [
        f"{key.split('_')[1]}% coverage {value:.3f} is outside {NOMINAL[key]:.2f} +/- {band:.2f}"
        for key, value in coverage.items()
        if value is not None and abs(value - NOMINAL[key]) > band
    ]
    figures = (
        f"relative MASE {rel:.4f}, 80% coverage {coverage['coverage_80']:.3f}, "
        f"95% coverage {coverage['coverage_95']:.3f} (band +/- {band:.2f})"
    )
    if misses:
        return False, f"kept: intervals are miscalibrated: {'; '.join(misses)}"
    if old is None:
        return True, f"promoted: first model, coverage within the band; {figures}"
    old_rel = _number(old, "relative_mase")
    if old_rel is None:
        return True, f"promoted: the champion has no relative MASE to compare; {figures}"
    limit = old_rel + tolerance
    compared = f"{figures}; champion relative MASE {old_rel:.4f} (limit {limit:.4f})"
    if rel > limit:
        return False, f"kept: relative MASE is worse than the champion's; {compared}"
    return True, f"promoted: {compared}"


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
