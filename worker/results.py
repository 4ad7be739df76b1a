"""Shape model outputs into the small JSON results of the job contract."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ml.forecast import BAND_COLUMNS

PRICE_DECIMALS = 4


def _day(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).date().isoformat()


def _days(column: pd.Series) -> list[str | None]:
    """Return a date column as ISO days (None where missing), converted in one numpy call."""
    days = pd.to_datetime(column).to_numpy(dtype="datetime64[D]")
    return [None if d == "NaT" else str(d) for d in np.datetime_as_string(days)]


def forecast_result(frame: pd.DataFrame, version: str, horizon: int) -> dict[str, Any]:
    """Group a forecast frame (one row per ticker and step) into one entry per ticker."""
    # Plain lists rather than pandas row access: this runs for every predict job.
    tickers = frame["ticker"].astype(str).tolist()
    steps = frame["step"].astype(int).tolist()
    dates, last_dates = _days(frame["date"]), _days(frame["last_date"])
    last_closes = frame["last_close"].to_numpy(dtype=float).round(PRICE_DECIMALS).tolist()
    bands = {c: frame[c].to_numpy(dtype=float).round(PRICE_DECIMALS).tolist() for c in BAND_COLUMNS}
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
        entry["steps"].append(
            {"step": steps[i], "date": dates[i], **{c: bands[c][i] for c in BAND_COLUMNS}}
        )
    return {"model_version": version, "horizon": horizon, "forecasts": forecasts}


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
    """Add each forecast's last `n` closes through `as_of` as `history: [{date, close}]`."""
    if as_of is not None:
        prices = prices[prices["date"] <= as_of]
    for forecast in result["forecasts"]:
        rows = prices[prices["ticker"] == forecast["ticker"]].sort_values("date").tail(n)
        forecast["history"] = [
            {"date": _day(d), "close": round(float(c), PRICE_DECIMALS)}
            for d, c in zip(rows["date"], rows["close"], strict=True)
        ]
