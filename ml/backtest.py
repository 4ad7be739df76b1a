"""Out-of-sample evaluation: a walk-forward backtest and an embargoed holdout for the
forecaster, against naive and drift baselines; quality of segments."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import silhouette_score

from ml.errors import InsufficientHistoryError
from ml.forecast import COVERAGES, FEATURE_NAMES, Forecaster, _build_panel, _conformal_quantile
from ml.segment import Segmenter, ticker_features

# Walk-forward defaults: 5 refits, 50 business days apart, so about a year of origins
# and a retrain of the default synthetic market (32 tickers, H=10) in well under a minute.
DEFAULT_ORIGINS = 5
DEFAULT_STEP = 50
METHODS = ("model", "naive", "drift")
TERCILES = ("calm", "middle", "volatile")
# Trailing window (daily returns) of the realized volatility that sorts origins into terciles.
VOL_WINDOW = 20
# Fewest forecasts of a ticker in a cell for its error ratio to enter the geometric mean.
_MIN_TICKER_ROWS = 5
# Fewest dates the first fold must train on.
_MIN_TRAIN_DATES = 120
# Consecutive origin dates per block in the standard error of a coverage: the forecasts of
# one date (every ticker shares the market) and of nearby dates (volatility clusters; steps
# overlap) miss together, so dates, not forecasts, are the independent units, in blocks.
COVERAGE_BLOCK_DATES = 10
_OUTPUT_KEYS = {
    "close": "center",
    "lower_80": "lo80",
    "upper_80": "hi80",
    "lower_95": "lo95",
    "upper_95": "hi95",
}
_VOL_FEATURE = FEATURE_NAMES.index(f"vol_{VOL_WINDOW}")


def walk_forward(
    prices: pd.DataFrame,
    model: Forecaster,
    *,
    n_origins: int = DEFAULT_ORIGINS,
    step: int = DEFAULT_STEP,
    progress: Callable[[float], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run an expanding-window walk-forward backtest; return the forecasts and the report.

    The last ``n_origins * step`` dates with a realized close after them are split into
    ``n_origins`` folds of ``step`` dates. For the fold starting at origin date ``o``, a
    clone of ``model`` is fitted on prices dated strictly before ``o - H`` rows (an embargo
    of H = ``model.horizon`` dates: no training target reaches the origin), then forecasts
    steps 1..H from every (ticker, date) of the fold, with features from data through that
    date only. Naive (last value) and drift (the ticker's mean log-return so far) run on
    the same origins, with bands from one conformal quantile of the fold's training
    h-step moves in units of ``sigma_t * sqrt(h)`` around a zero or drift center (the
    model's construction without its volatility bands and adaptation). Returns one row
    per (ticker, origin, step): log-returns of the actual and of each method's center
    and bands, plus the origin's trailing volatility.
    """
    horizon = int(model.horizon)
    if n_origins < 1 or step < 1:
        raise ValueError("n_origins and step must be >= 1")
    frame = prices[["date", "ticker", "close"]].sort_values(["ticker", "date"], kind="stable")
    frame = frame.reset_index(drop=True)
    dates = np.unique(frame["date"].to_numpy(dtype="datetime64[ns]"))
    end = len(dates) - 1  # the last date has nothing after it to score
    start = end - n_origins * step
    if start - horizon < _MIN_TRAIN_DATES:
        raise InsufficientHistoryError(
            f"a walk-forward backtest of {n_origins} origins {step} dates apart at horizon "
            f"{horizon} needs more than {n_origins * step + horizon + _MIN_TRAIN_DATES + 1} "
            f"dates; got {len(dates)}"
        )
    panel = _build_panel(frame)  # same (ticker, date) order as ``frame``
    vol = panel.features[:, _VOL_FEATURE] * panel.sigma
    first_log = panel.log_close[np.searchsorted(panel.group, panel.group)]
    drift_rate = np.where(
        panel.position > 0, (panel.log_close - first_log) / np.maximum(panel.position, 1), 0.0
    )
    ahead = {h: panel.target(h) * panel.sigma * math.sqrt(h) for h in range(1, horizon + 1)}

    parts: list[pd.DataFrame] = []
    scale_cut = dates[start - horizon]
    for fold in range(n_origins):
        origin, stop = start + fold * step, start + (fold + 1) * step
        cut = dates[origin - horizon]
        train = frame[frame["date"] < cut]

        def fold_progress(f: float, fold: int = fold) -> None:
            if progress is not None:
                progress((fold + f) / n_origins)

        fitted = clone(model).fit(train, progress=fold_progress)
        forecast = fitted.predict_origins(frame, start=dates[origin])
        forecast = forecast[forecast["last_date"] < dates[stop]]
        rows = np.flatnonzero(
            panel.ready & (panel.date >= dates[origin]) & (panel.date < dates[stop])
        )
        # predict_origins walks the same rows in the same order, steps innermost.
        if len(forecast) != len(rows) * horizon:
            raise AssertionError("walk-forward rows and forecasts are misaligned")
        base = np.log(forecast["last_close"].to_numpy())
        train_panel = _build_panel(train)
        fold_rows = np.repeat(rows, horizon)
        steps = np.tile(np.arange(1, horizon + 1), len(rows))
        part: dict[str, Any] = {
            "ticker": panel.ticker[fold_rows].astype(str),
            "origin": panel.date[fold_rows],
            "step": steps,
            "fold": fold,
            "vol": vol[fold_rows],
            # (rows, steps) flattened row-major: steps innermost, as predict_origins.
            "actual": np.column_stack([ahead[h][rows] for h in range(1, horizon + 1)]).ravel(),
        }
        for column, key in _OUTPUT_KEYS.items():
            part[f"model_{key}"] = np.log(forecast[column].to_numpy()) - base
        half = np.empty((len(fold_rows), len(COVERAGES)))
        for h in range(1, horizon + 1):
            moves = np.abs(train_panel.target(h))
            moves = moves[train_panel.ready & np.isfinite(moves)]
            q = [_conformal_quantile(moves, c) for c in COVERAGES]
            half[steps == h] = q
        unit = panel.sigma[fold_rows] * np.sqrt(steps)
        for method, center in (("naive", np.zeros(len(fold_rows))),
                               ("drift", drift_rate[fold_rows] * steps)):  # fmt: skip
            part[f"{method}_center"] = center
            for i, coverage in enumerate(COVERAGES):
                level = round(coverage * 100)
                part[f"{method}_lo{level}"] = center - half[:, i] * unit
                part[f"{method}_hi{level}"] = center + half[:, i] * unit
        parts.append(pd.DataFrame(part))
    forecasts = pd.concat(parts, ignore_index=True)
    forecasts = forecasts[np.isfinite(forecasts["actual"])].reset_index(drop=True)

    # MASE scale: each ticker's in-sample mean absolute h-step naive error (log price),
    # over the moves that end before the first fold's training cut.
    before = panel.date < scale_cut
    scale = {}
    for h in range(1, horizon + 1):
        ends_before = before & (
            np.searchsorted(dates, panel.date) + h < np.searchsorted(dates, scale_cut)
        )
        moves = pd.Series(np.abs(ahead[h])).where(ends_before & np.isfinite(ahead[h]))
        scale[h] = moves.groupby(panel.ticker).mean()
    meta = {
        "kind": "walk-forward, expanding window",
        "horizon": horizon,
        "n_origins": n_origins,
        "step": step,
        "embargo": horizon,
        "test_start": _iso(dates[start]),
        "test_end": _iso(dates[end - 1]),
        "first_train_end": _iso(dates[start - horizon - 1]),
        "n_tickers": int(len(np.unique(panel.ticker))),
        "n_forecasts": int(len(forecasts)),
    }
    return forecasts, {"meta": meta, "scale": scale}


def backtest_forecaster(
    prices: pd.DataFrame,
    model: Forecaster,
    *,
    n_origins: int = DEFAULT_ORIGINS,
    step: int = DEFAULT_STEP,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Walk-forward backtest of ``model`` against naive and drift; return a JSON-able report.

    ``results[subset][method]`` lists per-step metrics, for the subsets "overall" and the
    volatility terciles "calm", "middle", "volatile" (trailing VOL_WINDOW-day realized
    volatility at the origin, cut at the pooled terciles of all test origins). Errors are
    in log-price units; ``mase`` is scaled by the ticker's in-sample h-step naive MAE
    and averaged over tickers; ``relative_mase`` is the geometric mean over tickers of the
    method's MAE over naive's on the same forecasts. ``summary`` condenses the model's
    figures over steps (geometric mean of relative MASE, mean coverage) for the card.
    """
    forecasts, extra = walk_forward(
        prices, model, n_origins=n_origins, step=step, progress=progress
    )
    return score_walk_forward(forecasts, extra["scale"], extra["meta"])


def score_walk_forward(
    forecasts: pd.DataFrame, scale: dict[int, pd.Series], meta: dict[str, Any]
) -> dict[str, Any]:
    """Score walk-forward forecasts overall and per volatility tercile."""
    bounds = np.nanquantile(forecasts["vol"].to_numpy(), [1 / 3, 2 / 3])
    tercile = np.searchsorted(bounds, forecasts["vol"].to_numpy(), side="right")
    subsets = {"overall": np.ones(len(forecasts), dtype=bool)}
    subsets.update({name: tercile == i for i, name in enumerate(TERCILES)})
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for subset, mask in subsets.items():
        cell = forecasts[mask]
        steps = cell["step"].to_numpy()
        results[subset] = {
            method: [
                {"step": h, **_method_scores(cell[steps == h], method, scale[h])}
                for h in sorted({int(v) for v in steps})
            ]
            for method in METHODS
        }
    return {
        **meta,
        "tercile_bounds_vol": [float(b) for b in bounds],
        "units": "errors and widths in log-price units (about relative to the last close)",
        "results": results,
        "summary": _summary(results),
    }


def _method_scores(cell: pd.DataFrame, method: str, scale: pd.Series) -> dict[str, Any]:
    """Return MASE, relative MASE, direction, coverage, width and Winkler score of a cell."""
    actual = cell["actual"].to_numpy()
    center = cell[f"{method}_center"].to_numpy()
    error = pd.Series(np.abs(center - actual), index=cell.index)
    naive_error = pd.Series(np.abs(actual), index=cell.index)
    by_ticker = pd.DataFrame(
        {"e": error, "n": naive_error, "ticker": cell["ticker"].to_numpy()}
    ).groupby("ticker")
    mae, naive_mae, counts = by_ticker["e"].mean(), by_ticker["n"].mean(), by_ticker.size()
    ticker_scale = scale.reindex(mae.index)
    ok = (counts >= _MIN_TICKER_ROWS) & (naive_mae > 0) & (mae > 0)
    ratio = (mae[ok] / naive_mae[ok]).to_numpy()
    mase = (mae / ticker_scale)[np.isfinite(ticker_scale) & (ticker_scale > 0)]
    moved = (actual != 0) & (center != 0)
    scores: dict[str, Any] = {
        "n": int(len(cell)),
        "mae": float(error.mean()),
        "mase": float(mase.mean()) if len(mase) else None,
        "relative_mase": float(np.exp(np.mean(np.log(ratio)))) if len(ratio) else None,
        "directional_accuracy": float(np.mean(np.sign(center[moved]) == np.sign(actual[moved])))
        if moved.any()
        else None,
    }
    for coverage in COVERAGES:
        level = round(coverage * 100)
        lo, hi = cell[f"{method}_lo{level}"].to_numpy(), cell[f"{method}_hi{level}"].to_numpy()
        alpha = 1.0 - coverage
        penalty = (2 / alpha) * (np.maximum(lo - actual, 0) + np.maximum(actual - hi, 0))
        inside = (lo <= actual) & (actual <= hi)
        scores[f"coverage_{level}"] = float(np.mean(inside))
        scores[f"coverage_{level}_se"] = _block_standard_error(inside, cell["origin"].to_numpy())
        scores[f"width_{level}"] = float(np.mean(hi - lo))
        scores[f"winkler_{level}"] = float(np.mean(hi - lo + penalty))
    return scores


def _block_standard_error(values: np.ndarray, origin: np.ndarray) -> float | None:
    """Return the standard error of the mean of ``values`` with origins in blocks of
    COVERAGE_BLOCK_DATES consecutive dates as the independent units (None: < 2 blocks)."""
    _, index = np.unique(origin, return_inverse=True)
    block = index // COVERAGE_BLOCK_DATES
    n_blocks = int(block.max()) + 1 if len(block) else 0
    if n_blocks < 2:
        return None
    sums = np.bincount(block, weights=values.astype(np.float64), minlength=n_blocks)
    counts = np.bincount(block, minlength=n_blocks)
    # Ratio estimator of the pooled mean: the spread of block means around it, weighted.
    mean = sums.sum() / counts.sum()
    residual = sums - mean * counts
    variance = n_blocks / (n_blocks - 1) * np.sum(residual**2) / counts.sum() ** 2
    return float(np.sqrt(variance))


def _summary(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Condense the model's and baselines' per-step figures over steps, per subset."""
    out: dict[str, Any] = {}
    for subset, methods in results.items():
        for method, per_step in methods.items():
            rel = [s["relative_mase"] for s in per_step if s["relative_mase"] is not None]
            naive_steps = methods["naive"]
            naive_total = sum(s["mae"] for s in naive_steps)
            entry = {
                "relative_mase": float(np.exp(np.mean(np.log(rel)))) if rel else None,
                # Pooled over steps and tickers: the figure of earlier cards, for comparison.
                "relative_mae": sum(s["mae"] for s in per_step) / naive_total
                if naive_total > 0
                else None,
                "mase": _mean([s["mase"] for s in per_step]),
                "directional_accuracy": _mean([s["directional_accuracy"] for s in per_step]),
                "coverage_80": _mean([s["coverage_80"] for s in per_step]),
                "coverage_95": _mean([s["coverage_95"] for s in per_step]),
                "width_80": _mean([s["width_80"] for s in per_step]),
                "winkler_80": _mean([s["winkler_80"] for s in per_step]),
            }
            out.setdefault(subset, {})[method] = entry
    return out


def _mean(values: list[Any]) -> float | None:
    """Return the mean of the non-None values, or None."""
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


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
    # A flat day has no direction to get right; a naive point (no move) claims none.
    moved = (actual != origin) & (predicted != origin)
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
    clusters = model.kmeans_.predict(model.cluster_space(features.to_numpy()))
    distinct = len(np.unique(segments))
    silhouette = (
        float(silhouette_score(model.cluster_space(features.to_numpy()), clusters))
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


def format_table(report: dict[str, Any], steps: tuple[int, ...] | None = None) -> str:
    """Render a walk-forward report as a text table: per subset, step and method."""
    horizon = int(report["horizon"])
    shown = steps or tuple(sorted({1, min(5, horizon), horizon}))
    header = (
        f"{'subset':<9} {'h':>2} {'method':<6} {'relMASE':>8} {'MASE':>6} {'dir':>5} "
        f"{'cov80':>6} {'cov95':>6} {'width80':>8} {'winkler80':>9}"
    )
    lines = [
        f"walk-forward: {report['n_origins']} refits {report['step']} days apart, embargo "
        f"{report['embargo']}, origins {report['test_start']}..{report['test_end']}, "
        f"{report['n_tickers']} tickers, {report['n_forecasts']} forecasts",
        header,
        "-" * len(header),
    ]
    for subset, methods in report["results"].items():
        for h in shown:
            for method, per_step in methods.items():
                row = next((s for s in per_step if s["step"] == h), None)
                if row is None:
                    continue
                lines.append(
                    f"{subset:<9} {h:>2} {method:<6} {_fmt(row['relative_mase'], 8, 4)} "
                    f"{_fmt(row['mase'], 6, 3)} {_fmt(row['directional_accuracy'], 5, 2)} "
                    f"{_fmt(row['coverage_80'], 6, 3)} {_fmt(row['coverage_95'], 6, 3)} "
                    f"{_fmt(row['width_80'], 8, 4)} {_fmt(row['winkler_80'], 9, 4)}"
                )
    return "\n".join(lines)


def _fmt(value: float | None, width: int, digits: int) -> str:
    """Format a figure right-aligned, or a dash for None."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"
