"""Read an uploaded prices file: bounded gzip decompression, then full validation."""

from __future__ import annotations

import io
import zlib

import pandas as pd

from ml.data import read_prices_csv
from ml.errors import DataValidationError

_GZIP_MAGIC = b"\x1f\x8b"
#: A daily series has a median gap of 1 day (3 over weekends); above this it is not daily.
MAX_MEDIAN_GAP_DAYS = 4


def decompress(data: bytes, *, max_bytes: int) -> bytes:
    """Return the bytes of a plain or gzip upload, refusing more than ``max_bytes``."""
    if data[:2] != _GZIP_MAGIC:
        if len(data) > max_bytes:
            raise DataValidationError([f"file larger than {max_bytes} bytes"])
        return data
    out = bytearray()
    rest = data
    try:
        while rest[:2] == _GZIP_MAGIC:  # a gzip file may hold several members
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise DataValidationError([f"file larger than {max_bytes} bytes uncompressed"])
            if not inflater.eof:
                raise DataValidationError(["corrupt gzip data: the stream is truncated"])
            rest = inflater.unused_data
    except zlib.error as exc:
        raise DataValidationError([f"corrupt gzip data: {exc}"]) from exc
    return bytes(out)


def frequency_problems(prices: pd.DataFrame) -> list[str]:
    """Name each ticker whose prices are not daily (weekly, monthly, or mixed in)."""
    problems = []
    for ticker, rows in prices.groupby("ticker", sort=True):
        gaps = rows["date"].sort_values().diff().dt.days.dropna()
        if len(gaps) and float(gaps.median()) > MAX_MEDIAN_GAP_DAYS:
            problems.append(
                f"ticker {ticker}: median gap {float(gaps.median()):g} days between rows; "
                "daily prices are needed (mixed frequencies?)"
            )
    return problems


def read_upload(data: bytes, *, max_bytes: int) -> pd.DataFrame:
    """Validate an uploaded prices CSV (plain or gzip); raise DataValidationError listing
    every problem by line or ticker."""
    raw = decompress(data, max_bytes=max_bytes)
    if not raw.strip():
        raise DataValidationError(["empty file"])
    prices = read_prices_csv(io.BytesIO(raw))
    problems = frequency_problems(prices)
    if problems:
        raise DataValidationError(problems)
    return prices
