"""Realized accuracy of served forecasts: join a ledger of forecasts to the closes that
arrived later, and score them against the naive forecast, by model version and step.

A ledger row is one served forecast step: ``model_version, ticker, as_of, step, date,
close, lower_80, upper_80, lower_95, upper_95, last_close`` (``as_of`` is the last date
the forecast saw, ``last_close`` its close there: the naive forecast). ``prices`` is the
tidy frame of `ml.data` (``date, ticker, close``).

MASE divides each absolute error by the ticker's in-sample naive one-step MAE over its
closes up to ``as_of`` only, so no score borrows from the future it judges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ml.forecast import BAND_COLUMNS

LEDGER_COLUMNS = ("model_version", "ticker", "as_of", "step", "date", *BAND_COLUMNS, "last_close")
LEVELS = (80, 95)


def realized_accuracy(ledger: pd.DataFrame, prices: pd.DataFrame) -> list[dict[str, Any]]:
    """Score every ledgered forecast whose target date has a close in ``prices``.

    Returns one entry per model version (newest first): ``recorded`` forecast steps,
    ``scored`` (a close exists at the target date), ``pending`` (the ticker's closes end
    before the target date, or it has none), ``no_close`` (no close that day, though
    later ones exist: a holiday),
    and ``steps``: per horizon step, then ``overall``, the figures of `score_rows`.
    """
    rows = _joined(ledger, prices)
    out: list[dict[str, Any]] = []
    for version in sorted(rows["model_version"].unique(), reverse=True):
        mine = rows[rows["model_version"] == version]
        scored = mine[mine["actual"].notna()]
        later = mine["actual"].isna() & (mine["date"] <= mine["through"])
        out.append(
            {
                "model_version": str(version),
                "recorded": int(len(mine)),
                "scored": int(len(scored)),
                "pending": int(len(mine) - len(scored) - later.sum()),
                "no_close": int(later.sum()),
                "steps": [
                    {"step": int(step), **score_rows(group)}
                    for step, group in scored.groupby("step", sort=True)
                ],
                "overall": score_rows(scored),
            }
        )
    return out


def score_rows(rows: pd.DataFrame) -> dict[str, Any]:
    """Return n, MAE, MASE, the naive MASE, relative MASE, coverage and mean width.

    ``rows`` hold ledger columns plus ``actual`` and ``scale``. MASE (model and naive)
    averages over the rows with a positive scale; widths are relative to ``last_close``;
    figures without data are None.
    """
    actual = rows["actual"].to_numpy(dtype=float)
    close = rows["close"].to_numpy(dtype=float)
    last = rows["last_close"].to_numpy(dtype=float)
    scale = rows["scale"].to_numpy(dtype=float)
    scaled = np.isfinite(scale) & (scale > 0)
    error, naive_error = np.abs(close - actual), np.abs(last - actual)
    mase = _mean(error[scaled] / scale[scaled])
    naive_mase = _mean(naive_error[scaled] / scale[scaled])
    out: dict[str, Any] = {
        "n": int(len(rows)),
        "mae": _mean(error),
        "mase": mase,
        "naive_mase": naive_mase,
        "relative_mase": mase / naive_mase if mase is not None and naive_mase else None,
    }
    for level in LEVELS:
        lower = rows[f"lower_{level}"].to_numpy(dtype=float)
        upper = rows[f"upper_{level}"].to_numpy(dtype=float)
        out[f"coverage_{level}"] = _mean(((lower <= actual) & (actual <= upper)).astype(float))
        out[f"mean_width_{level}"] = _mean((upper - lower) / last)
    return out


def naive_scale(prices: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    """Return, per row of ``keys`` (``ticker, as_of``), the mean absolute one-day change
    of the ticker's closes on dates up to ``as_of``; NaN with fewer than two closes."""
    out = np.full(len(keys), np.nan)
    frame = prices[["date", "ticker", "close"]].sort_values(["ticker", "date"], kind="stable")
    for ticker, group in frame.groupby("ticker", sort=False):
        where = np.flatnonzero((keys["ticker"] == ticker).to_numpy())
        if not len(where):
            continue
        dates = group["date"].to_numpy(dtype="datetime64[ns]")
        change_sums = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(group["close"].to_numpy())))])
        as_of = keys["as_of"].to_numpy(dtype="datetime64[ns]")[where]
        # Position of the last close on or before as_of = number of changes up to it.
        changes = np.searchsorted(dates, as_of, side="right") - 1
        ok = changes >= 1
        out[where[ok]] = change_sums[changes[ok]] / changes[ok]
    return out


def _joined(ledger: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """Return the ledger with ``actual`` (the close at the target date, or NaN),
    ``through`` (the ticker's last date in ``prices``) and ``scale`` per row."""
    missing = [c for c in LEDGER_COLUMNS if c not in ledger.columns]
    if missing:
        raise ValueError(f"ledger lacks column(s): {', '.join(missing)}")
    rows = ledger.loc[:, list(LEDGER_COLUMNS)].copy()
    rows["ticker"] = rows["ticker"].astype(str)
    rows["as_of"] = pd.to_datetime(rows["as_of"]).astype("datetime64[ns]")
    rows["date"] = pd.to_datetime(rows["date"]).astype("datetime64[ns]")
    closes = prices[["date", "ticker", "close"]].rename(columns={"close": "actual"})
    closes = closes.astype({"date": "datetime64[ns]", "ticker": str})
    rows = rows.merge(closes, on=["date", "ticker"], how="left", validate="many_to_one")
    through = closes.groupby("ticker")["date"].max().rename("through")
    rows = rows.merge(through, left_on="ticker", right_index=True, how="left")
    rows["scale"] = naive_scale(prices, rows[["ticker", "as_of"]])
    return rows


def _mean(values: np.ndarray) -> float | None:
    """Return the mean of ``values``, or None when there are none."""
    return float(np.mean(values)) if len(values) else None
