"""Shared, session-scoped fixtures of the ml tests: fits are the slow part, so fit once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from ml.data import read_prices_csv
from ml.segment import Segmenter
from tests.conftest import REAL_DATA


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """Fit with one OpenMP/BLAS thread, as workers do: on a shared 2-core machine the
    gradient-boosting fits ran about 5x slower with a thread per core."""
    with threadpool_limits(limits=1):
        yield


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


def mean_reverting_market(seed: int = 1, n: int = 8, days: int = 500) -> pd.DataFrame:
    """Tickers whose daily returns are AR(1) with coefficient -0.3: a learnable pattern."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        shocks = rng.normal(0, 0.01, days)
        returns = np.zeros(days)
        for t in range(1, days):
            returns[t] = -0.3 * returns[t - 1] + shocks[t]
        frames.append(
            pd.DataFrame(
                {
                    "date": pd.bdate_range("2020-01-01", periods=days),
                    "ticker": f"AR{i:02d}",
                    "close": 50 * np.exp(np.cumsum(returns)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
