"""Synthetic market, validation, CSV reading and hashing."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pandas as pd
import pytest

from ml.data import dataset_hash, read_prices_csv, synthetic_market, validate_prices
from ml.errors import DataValidationError


def _frame(n: int = 70, tickers: tuple[str, ...] = ("AAA", "BBB")) -> pd.DataFrame:
    """Return a valid raw frame with string dates, like a freshly read CSV."""
    dates = pd.bdate_range("2024-01-01", periods=n).strftime("%Y-%m-%d")
    return pd.DataFrame(
        {
            "date": np.tile(dates, len(tickers)),
            "ticker": np.repeat(tickers, n),
            "close": np.linspace(10, 20, n * len(tickers)).astype(str),
        }
    )


def _problems(df: pd.DataFrame, **kwargs: int) -> list[str]:
    with pytest.raises(DataValidationError) as info:
        validate_prices(df, **kwargs)
    return info.value.problems


def test_synthetic_market_shape_and_types() -> None:
    market = synthetic_market(n_sectors=3, tickers_per_sector=5, n_days=300)
    assert list(market.columns) == ["date", "ticker", "close", "volume", "sector"]
    assert len(market) == 3 * 5 * 300
    assert market["sector"].nunique() == 3
    assert market["ticker"].str.fullmatch(r"[A-Z]{3}\d{2}").all()
    assert market["date"].dt.day_of_week.max() <= 4  # business days only
    assert market["date"].max() == pd.Timestamp("2025-12-31")
    assert (market["close"] > 0).all()
    # Already canonical: validation changes nothing but drops the extra column.
    tidy = validate_prices(market)
    pd.testing.assert_frame_equal(
        tidy[["date", "ticker", "close"]], market[["date", "ticker", "close"]], check_dtype=False
    )


def test_synthetic_market_is_deterministic_per_seed() -> None:
    pd.testing.assert_frame_equal(synthetic_market(seed=3), synthetic_market(seed=3))
    assert not synthetic_market(seed=3)["close"].equals(synthetic_market(seed=4)["close"])


def test_synthetic_market_clusters_volatility(market: pd.DataFrame) -> None:
    returns = np.log(market["close"]).groupby(market["ticker"]).diff()
    autocorr = returns.abs().groupby(market["ticker"]).apply(lambda r: r.autocorr(lag=1))
    assert autocorr.median() > 0.05


def test_synthetic_sectors_differ_in_volatility(market: pd.DataFrame) -> None:
    returns = np.log(market["close"]).groupby(market["ticker"]).diff()
    vol = returns.groupby(market["sector"]).std()
    assert vol["UTL"] < vol["FIN"] < vol["TEC"]


def test_valid_frame_is_canonicalized() -> None:
    raw = _frame().sample(frac=1, random_state=0)
    raw["ticker"] = " " + raw["ticker"].str.lower()
    raw = raw.rename(columns={"close": " Close "})
    tidy = validate_prices(raw)
    assert list(tidy.columns) == ["date", "ticker", "close"]
    assert tidy["date"].dtype == "datetime64[ns]"
    assert tidy["close"].dtype == "float64"
    assert set(tidy["ticker"]) == {"AAA", "BBB"}
    assert tidy.index.equals(pd.RangeIndex(len(tidy)))
    assert tidy.sort_values(["ticker", "date"]).index.equals(tidy.index)


def test_missing_columns_are_named() -> None:
    (problem,) = _problems(_frame().drop(columns=["close", "ticker"]))
    assert "ticker" in problem and "close" in problem


def test_bad_values_are_reported_by_csv_line() -> None:
    raw = _frame()
    raw.loc[0, "date"] = "not a date"
    raw.loc[1, "ticker"] = "  "
    raw.loc[2, "close"] = "abc"
    raw.loc[3, "close"] = "-1"
    raw.loc[4, "close"] = None
    problems = _problems(raw)
    text = " | ".join(problems)
    assert "unparsable or missing date on line 2" in text
    assert "empty ticker on line 3" in text
    assert "non-numeric close on lines 4, 6" in text
    assert "non-positive close on line 5" in text


def test_duplicates_are_reported_with_both_lines() -> None:
    raw = pd.concat([_frame(), _frame().iloc[[5]]], ignore_index=True)
    (problem,) = _problems(raw)
    assert problem.startswith("duplicate (date, ticker) rows on lines 7, 142")


def test_short_tickers_are_named_with_their_count() -> None:
    raw = pd.concat([_frame(), _frame(n=10, tickers=("CCC",))], ignore_index=True)
    (problem,) = _problems(raw)
    assert problem == "ticker CCC has 10 rows; at least 60 needed"
    assert len(validate_prices(raw, min_history=10)) == len(raw)


def test_empty_frame_and_summary_message() -> None:
    assert _problems(_frame().iloc[:0]) == ["no data rows"]
    raw = _frame()
    raw["close"] = "x"
    raw.loc[:7, "ticker"] = ""
    raw.loc[:7, "date"] = "?"
    with pytest.raises(DataValidationError) as info:
        validate_prices(raw, min_history=500)
    assert len(info.value.problems) == 5
    assert "and 135 more" in str(info.value)  # line list summarised


def test_extra_columns_are_ignored_and_optional_ones_kept() -> None:
    raw = _frame().assign(volume="100", notes="hello", open=1.5)
    tidy = validate_prices(raw)
    assert list(tidy.columns) == ["date", "ticker", "close", "open", "volume"]
    assert tidy["volume"].dtype == "float64"


def test_adj_close_replaces_close_so_a_split_is_no_crash() -> None:
    raw = _frame(tickers=("AAA",))
    raw["adj_close"] = 10.0
    raw["close"] = np.where(np.arange(len(raw)) < 30, 20.0, 10.0)  # a 2:1 split on day 30
    tidy = validate_prices(raw)
    assert (tidy["close"] == 10.0).all()
    assert tidy["close_raw"].iloc[0] == 20.0
    raw.loc[3, "adj_close"] = 0
    assert "non-positive adj_close on line 5" in _problems(raw)[0]


def test_read_csv_plain_gzip_text_and_path(tmp_path: pytest.TempPathFactory) -> None:
    text = _frame().rename(columns={"date": "Date", "close": "CLOSE"}).to_csv(index=False)
    expected = validate_prices(_frame())
    pd.testing.assert_frame_equal(read_prices_csv(io.StringIO(text)), expected)
    pd.testing.assert_frame_equal(
        read_prices_csv(io.BytesIO(gzip.compress(text.encode()))), expected
    )
    path = tmp_path / "prices.csv.gz"  # type: ignore[operator]
    path.write_bytes(gzip.compress(text.encode()))
    pd.testing.assert_frame_equal(read_prices_csv(path), expected)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"\x1f\x8b garbage", "corrupt gzip"),
        (b'date,ticker,close\n"2024-01-01,AAA,1\n', "not a readable CSV"),
        (b"a,b\n1,2\n", "missing required column(s): date, ticker, close"),
    ],
)
def test_unreadable_csv_is_a_validation_error(content: bytes, expected: str) -> None:
    with pytest.raises(DataValidationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_prices_csv(io.BytesIO(content))


def test_dataset_hash_depends_on_content_not_order() -> None:
    tidy = validate_prices(_frame())
    shuffled = tidy.sample(frac=1, random_state=1)
    assert dataset_hash(tidy) == dataset_hash(shuffled)
    changed = tidy.copy()
    changed.loc[0, "close"] += 0.01
    assert dataset_hash(changed) != dataset_hash(tidy)
