"""Shared, session-scoped fixtures of the ml tests: fits are the slow part, so fit once."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from ml.data import read_prices_csv, synthetic_market
from ml.forecast import Forecaster
from ml.segment import Segmenter
from tests.conftest import REAL_DATA


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """Fit with one OpenMP/BLAS thread, as workers do: on a shared 2-core machine the
    gradient-boosting fits ran about 5x slower with a thread per core."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def market() -> pd.DataFrame:
    """Return the default synthetic market (treat as read-only)."""
    return synthetic_market()


@pytest.fixture(scope="session")
def forecaster(market: pd.DataFrame) -> Forecaster:
    """Return a forecaster with default parameters fitted on the synthetic market."""
    return Forecaster().fit(market)


@pytest.fixture(scope="session")
def segmenter(market: pd.DataFrame) -> Segmenter:
    """Return a segmenter with default parameters fitted on the synthetic market."""
    return Segmenter().fit(market)


@pytest.fixture(scope="session")
def real_prices() -> pd.DataFrame:
    """Return the real sample prices, or skip when the shared data folder is absent."""
    if not REAL_DATA.is_file():
        pytest.skip(f"real sample data not found at {REAL_DATA}")
    return read_prices_csv(REAL_DATA)
