"""Price data: a seeded synthetic market, validation of user prices, CSV reading, hashing."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import pandas as pd

from ml.errors import DataValidationError

REQUIRED_COLUMNS = ("date", "ticker", "close")
OPTIONAL_COLUMNS = ("open", "high", "low", "volume", "adj_close")
# Fewest rows per ticker a dataset may hold: about three months of business days, enough
# for the forecaster's 41-price feature window plus some targets.
MIN_HISTORY: int = 60

# Line numbers a single problem message lists before summarising the rest.
_SHOWN_LINES = 5
_GZIP_MAGIC = b"\x1f\x8b"
_TRADING_DAYS = 252


@dataclass(frozen=True)
class _Sector:
    """Parameters of one synthetic sector; volatilities are daily, drift is annual."""

    code: str
    beta: float
    factor_vol: float
    idio_vol: float
    drift: float


# Sectors differ in beta, own-factor and idiosyncratic volatility and drift, so that
# per-ticker features (volatility, beta, market correlation, ...) can tell them apart.
_SECTORS = (
    _Sector("UTL", beta=0.35, factor_vol=0.004, idio_vol=0.003, drift=0.03),  # calm, defensive
    _Sector("TEC", beta=1.60, factor_vol=0.010, idio_vol=0.006, drift=0.15),  # high beta, volatile
    _Sector("FIN", beta=1.00, factor_vol=0.004, idio_vol=0.003, drift=0.06),  # tracks the market
    _Sector("ENR", beta=0.60, factor_vol=0.011, idio_vol=0.009, drift=0.00),  # own commodity cycle
    _Sector("HLT", beta=0.70, factor_vol=0.007, idio_vol=0.005, drift=0.08),
    _Sector("IND", beta=1.20, factor_vol=0.006, idio_vol=0.004, drift=0.06),
    _Sector("CON", beta=0.90, factor_vol=0.009, idio_vol=0.006, drift=0.07),
    _Sector("MAT", beta=1.30, factor_vol=0.014, idio_vol=0.007, drift=0.02),
)


def synthetic_market(
    *,
    n_sectors: int = 4,
    tickers_per_sector: int = 8,
    n_days: int = 1040,
    end: str = "2025-12-31",
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate a seeded market of sector stocks over business days ending at ``end``.

    Daily log-return of ticker i in sector s: ``drift_i + beta_i * m_t + load_i * f_st +
    e_it + jump_it``. The market factor ``m_t`` follows a GARCH(1,1) with one calm-to-
    turbulent regime switch; sector factors and idiosyncratic noise share the market's
    volatility scale so that volatility clusters everywhere; jumps are rare (Poisson).

    Returns columns ``date, ticker, close, volume, sector`` sorted by ticker and date.
    """
    if not 1 <= n_sectors <= len(_SECTORS):
        raise ValueError(f"n_sectors must be between 1 and {len(_SECTORS)}, got {n_sectors}")
    if tickers_per_sector < 1 or n_days < 2:
        raise ValueError("tickers_per_sector must be >= 1 and n_days >= 2")
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(end=end, periods=n_days).astype("datetime64[ns]")

    market, vol_scale = _garch_market(rng, n_days)
    sectors = _SECTORS[:n_sectors]
    n_tickers = n_sectors * tickers_per_sector
    sector_of = np.repeat(np.arange(n_sectors), tickers_per_sector)
    spec = {
        field: np.array([getattr(sectors[s], field) for s in sector_of])
        for field in ("beta", "factor_vol", "idio_vol", "drift")
    }
    beta = spec["beta"] + rng.normal(0.0, 0.06, n_tickers)
    loading = rng.uniform(0.9, 1.1, n_tickers)
    idio_vol = spec["idio_vol"] * rng.uniform(0.85, 1.15, n_tickers)

    factors = rng.standard_normal((n_days, n_sectors)) * [s.factor_vol for s in sectors]
    idio = rng.standard_normal((n_days, n_tickers)) * idio_vol
    jumps = rng.poisson(0.002, (n_days, n_tickers)) * rng.normal(-0.01, 0.06, (n_days, n_tickers))
    returns = (
        spec["drift"] / _TRADING_DAYS
        + beta * market[:, None]
        + (loading * factors[:, sector_of] + idio) * vol_scale[:, None]
        + jumps
    )
    returns[0] = 0.0  # the first day is the starting price
    start = np.exp(rng.uniform(np.log(20.0), np.log(300.0), n_tickers))
    close = start * np.exp(np.cumsum(returns, axis=0))
    base_volume = np.exp(rng.uniform(np.log(2e5), np.log(5e6), n_tickers))
    volume = base_volume * np.exp(rng.normal(0.0, 0.3, returns.shape)) * (1 + 25 * np.abs(returns))

    codes = [sectors[s].code for s in sector_of]
    tickers = [f"{code}{i % tickers_per_sector + 1:02d}" for i, code in enumerate(codes)]
    # Column-major ravel walks one ticker's days at a time: sorted by ticker, then date.
    frame = pd.DataFrame(
        {
            "date": np.tile(dates.to_numpy(), n_tickers),
            "ticker": np.repeat(tickers, n_days),
            "close": close.ravel(order="F"),
            "volume": volume.ravel(order="F").round().astype(np.int64),
            "sector": np.repeat(codes, n_days),
        }
    )
    return frame.sort_values(["ticker", "date"], kind="stable", ignore_index=True)


def _garch_market(rng: np.random.Generator, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Return market log-returns from a regime-switching GARCH(1,1) and their vol scale."""
    alpha, beta = 0.08, 0.90
    base_var = 0.009**2  # about 14% a year in the calm regime
    omega = np.full(n_days, base_var * (1 - alpha - beta))
    # One turbulent stretch (about four times the calm variance) somewhere in the middle.
    length = max(1, n_days // 8)
    begin = int(rng.integers(n_days // 4, max(n_days // 4 + 1, n_days - length - n_days // 8)))
    omega[begin : begin + length] *= 4.0
    shocks = rng.standard_normal(n_days)
    var = np.empty(n_days)
    eps = np.empty(n_days)
    var[0], eps[0] = base_var, 0.0
    for t in range(1, n_days):  # a recursion: each day's variance needs yesterday's shock
        var[t] = omega[t] + alpha * eps[t - 1] ** 2 + beta * var[t - 1]
        eps[t] = np.sqrt(var[t]) * shocks[t]
    return 0.0003 + eps, np.sqrt(var / base_var)


def validate_prices(df: pd.DataFrame, *, min_history: int = MIN_HISTORY) -> pd.DataFrame:
    """Validate raw prices and return the tidy canonical frame, or raise DataValidationError.

    Line numbers in problems are CSV lines: row position + 2 (line 1 is the header).
    When ``adj_close`` is present it becomes ``close`` (the raw one is kept as
    ``close_raw``) so that splits and dividends are not mistaken for crashes.
    """
    df = df.rename(columns=lambda c: str(c).strip().lower()).reset_index(drop=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError([f"missing required column(s): {', '.join(missing)}"])
    if df.empty:
        raise DataValidationError(["no data rows"])
    lines = np.arange(len(df)) + 2
    problems: list[str] = []

    raw_dates = df["date"]
    dates = _parse_dates(raw_dates)
    bad = dates.isna().to_numpy()
    if bad.any():
        problems.append(f"unparsable or missing date on {_lines(lines[bad])}")

    raw_tickers = df["ticker"]
    tickers = raw_tickers.astype(str).str.strip().str.upper().where(raw_tickers.notna(), "")
    empty = (tickers == "").to_numpy()
    if empty.any():
        problems.append(f"empty ticker on {_lines(lines[empty])}")

    price_column = "adj_close" if "adj_close" in df.columns else "close"
    price = pd.to_numeric(df[price_column], errors="coerce").astype("float64")
    bad_number = ~np.isfinite(price.to_numpy())
    if bad_number.any():
        problems.append(f"missing or non-numeric {price_column} on {_lines(lines[bad_number])}")
    non_positive = (price <= 0).to_numpy() & ~bad_number
    if non_positive.any():
        problems.append(f"non-positive {price_column} on {_lines(lines[non_positive])}")

    keyed = ~bad & ~empty
    duplicated = np.zeros(len(df), dtype=bool)
    duplicated[keyed] = (
        pd.DataFrame({"d": dates[keyed], "t": tickers[keyed]}).duplicated(keep=False).to_numpy()
    )
    if duplicated.any():
        problems.append(f"duplicate (date, ticker) rows on {_lines(lines[duplicated])}")

    counts = tickers[~empty].value_counts()
    for ticker, count in counts[counts < min_history].sort_index().items():
        problems.append(f"ticker {ticker} has {count} rows; at least {min_history} needed")
    if problems:
        raise DataValidationError(problems)

    tidy = pd.DataFrame({"date": dates.dt.normalize(), "ticker": tickers, "close": price})
    if price_column == "adj_close":
        tidy["close_raw"] = pd.to_numeric(df["close"], errors="coerce").astype("float64")
    for column in OPTIONAL_COLUMNS:
        if column in df.columns and column != "adj_close":
            tidy[column] = pd.to_numeric(df[column], errors="coerce").astype("float64")
    return tidy.sort_values(["ticker", "date"], kind="stable", ignore_index=True)


def _parse_dates(raw: pd.Series) -> pd.Series:
    """Parse dates to naive datetime64[ns]; unparsable values become NaT."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        raw = raw.dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        return raw.astype("datetime64[ns]")
    text = raw.astype(str).str.strip().where(raw.notna())
    # ISO 8601 is fast and unambiguous; other spellings fall back to per-value parsing.
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
    retry = parsed.isna() & text.notna()
    if retry.any():
        parsed[retry] = pd.to_datetime(text[retry], format="mixed", errors="coerce")
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


def _lines(numbers: np.ndarray) -> str:
    """Spell out a few line numbers and count the rest."""
    shown = ", ".join(str(n) for n in numbers[:_SHOWN_LINES])
    rest = len(numbers) - _SHOWN_LINES
    word = "line" if len(numbers) == 1 else "lines"
    return f"{word} {shown}" + (f" and {rest} more" if rest > 0 else "")


def read_prices_csv(
    source: str | os.PathLike[str] | IO[bytes] | IO[str],
    *,
    min_history: int = MIN_HISTORY,
) -> pd.DataFrame:
    """Read a prices CSV (plain or gzip) from a path or file object and validate it."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            content: bytes | str = handle.read()
    else:
        content = source.read()
    if isinstance(content, bytes) and content[:2] == _GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataValidationError([f"corrupt gzip data: {exc}"]) from exc
    buffer = io.BytesIO(content) if isinstance(content, bytes) else io.StringIO(content)
    try:
        # Everything as text: validation reports bad values by line instead of pandas
        # guessing mixed dtypes (and warning) per chunk.
        raw = pd.read_csv(buffer, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(["empty file"]) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataValidationError([f"not a readable CSV: {exc}"]) from exc
    return validate_prices(raw, min_history=min_history)


def to_csv_frame(prices: pd.DataFrame) -> pd.DataFrame:
    """Return tidy prices in input form: ``close`` raw and ``adj_close`` modelled, if adjusted.

    ``validate_prices`` of the result gives back the same tidy frame, which is what makes
    a stored dataset round-trip.
    """
    if "close_raw" not in prices.columns:
        return prices
    return prices.rename(columns={"close": "adj_close", "close_raw": "close"})


def dataset_hash(prices: pd.DataFrame) -> str:
    """Return the sha256 hex of the (date, ticker, close) content, independent of row order."""
    canonical = prices[list(REQUIRED_COLUMNS)].sort_values(["ticker", "date"], kind="stable")
    text = canonical.to_csv(index=False, date_format="%Y-%m-%d", lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()


def tickers_of(prices: pd.DataFrame) -> list[str]:
    """Return the sorted distinct tickers of a tidy frame."""
    return sorted(str(t) for t in pd.unique(prices["ticker"]))


def normalize_tickers(tickers: Sequence[str]) -> list[str]:
    """Return tickers stripped and uppercased, as validate_prices stores them."""
    return [str(t).strip().upper() for t in tickers]
