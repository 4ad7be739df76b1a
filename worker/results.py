"""Shape model outputs into the small JSON results of the job contract."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ml.data import normalize_tickers
from ml.forecast import BAND_COLUMNS, Forecaster, LatestFeatures

PRICE_DECIMALS = 4


def _day(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).date().isoformat()


def _days(column: Any) -> list[str | None]:
    """Return a date column as ISO days (None where missing), converted in one numpy call."""
    days = np.asarray(column).astype("datetime64[D]")
    return [None if d == "NaT" else d for d in np.datetime_as_string(days).tolist()]


def forecast_entries(
    columns: Mapping[str, Any] | pd.DataFrame, version: str
) -> list[dict[str, Any]]:
    """Group forecast columns (``Forecaster`` output, one row per ticker and step, as a
    frame or as numpy arrays) into one entry per ticker, as a predict result lists them."""
    # Plain lists rather than pandas row access: this runs for every predict job.
    tickers = np.asarray(columns["ticker"]).astype(str).tolist()
    steps = np.asarray(columns["step"]).astype(int).tolist()
    dates, last_dates = _days(columns["date"]), _days(columns["last_date"])

    def rounded(name: str) -> list[float]:
        values: list[float] = np.asarray(columns[name], dtype=float).round(PRICE_DECIMALS).tolist()
        return values

    last_closes = rounded("last_close")
    bands = [rounded(c) for c in BAND_COLUMNS]
    forecasts: list[dict[str, Any]] = []
    by_ticker: dict[str, dict[str, Any]] = {}
    for i, ticker in enumerate(tickers):
        entry = by_ticker.get(ticker)
        if entry is None:
            entry = {
                "ticker": ticker,
                "last_date": last_dates[i],
                "last_close": last_closes[i],
                "model_version": version,
                "steps": [],
            }
            by_ticker[ticker] = entry
            forecasts.append(entry)
        step = {"step": steps[i], "date": dates[i]}
        for name, values in zip(BAND_COLUMNS, bands, strict=True):
            step[name] = values[i]
        entry["steps"].append(step)
    return forecasts


class LatestForecasts:
    """The forecast entry (as `forecast_entries` shapes it) of every ticker ready to
    forecast from the latest data, at one horizon: made in one model call, once per loaded
    model and horizon, so a live predict job reads entries instead of calling the model."""

    def __init__(
        self, model: Forecaster, latest: LatestFeatures, version: str, horizon: int
    ) -> None:
        self.order = latest.index
        self.entries: dict[str, dict[str, Any]] = {}
        if ready := latest.ready:
            columns = model.forecast_latest(latest, tickers=ready, horizon=horizon)
            for entry in forecast_entries(columns, version):
                self.entries[entry["ticker"]] = entry

    def select(self, tickers: Sequence[str] | None) -> list[dict[str, Any]] | None:
        """Return the entries of `tickers` (None: all), once each, in the order the model
        answers; None when one has no entry (unknown, or short of history: the model's
        own call says which). Entries are shared: a caller copies one before changing it."""
        if tickers is None:
            whole = len(self.entries) == len(self.order)
            return list(self.entries.values()) if whole else None
        wanted = dict.fromkeys(normalize_tickers(tickers))
        if any(t not in self.entries for t in wanted):
            return None
        return [self.entries[t] for t in sorted(wanted, key=self.order.__getitem__)]


def segment_result(
    frame: pd.DataFrame, profiles: list[dict[str, Any]], version: str
) -> dict[str, Any]:
    """List each ticker's (or row's) segment, and each segment's size here and profile."""
    key = "ticker" if "ticker" in frame.columns else "row"
    assignments = [
        {key: (str(v) if key == "ticker" else int(v)), "segment": int(s), "label": str(lab)}
        for v, s, lab in zip(frame[key], frame["segment"], frame["label"], strict=True)
    ]
    sizes = frame["segment"].value_counts().to_dict()
    segments = [
        {
            "segment": int(p["segment"]),
            "label": str(p["label"]),
            "size": int(sizes.get(p["segment"], 0)),
            "train_size": int(p["size"]),
            "profile": {k: round(float(v), PRICE_DECIMALS) for k, v in p["profile"].items()},
        }
        for p in profiles
    ]
    return {"model_version": version, "assignments": assignments, "segments": segments}


def add_history(
    result: dict[str, Any], prices: pd.DataFrame, n: int, as_of: pd.Timestamp | None
) -> None:
    """Add each forecast's last `n` closes through `as_of` as `history: [{date, close}]`
    (to copies of the forecasts: they may be shared, see `LatestForecasts`)."""
    if as_of is not None:
        prices = prices[prices["date"] <= as_of]
    forecasts = []
    for forecast in result["forecasts"]:
        rows = prices[prices["ticker"] == forecast["ticker"]].sort_values("date").tail(n)
        history = [
            {"date": _day(d), "close": round(float(c), PRICE_DECIMALS)}
            for d, c in zip(rows["date"], rows["close"], strict=True)
        ]
        forecasts.append({**forecast, "history": history})
    result["forecasts"] = forecasts
