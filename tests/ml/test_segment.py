"""Segmenter: features, sector recovery, labels, feature-row input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from ml.data import synthetic_market
from ml.errors import InsufficientHistoryError
from ml.segment import FEATURES, Segmenter, ticker_features


def test_ticker_features(market: pd.DataFrame) -> None:
    features = ticker_features(market)
    assert list(features.columns) == list(FEATURES)
    assert list(features.index) == sorted(market["ticker"].unique())
    assert np.isfinite(features.to_numpy()).all()
    assert (features["max_drawdown"] <= 0).all() and (features["ann_volatility"] > 0).all()
    # Equal-weighted market: betas average to about one.
    assert features["beta"].mean() == pytest.approx(1.0, abs=0.05)


def test_ticker_features_needs_some_history(market: pd.DataFrame) -> None:
    short = market.groupby("ticker").head(10)
    with pytest.raises(InsufficientHistoryError, match="ENR01 \\(9\\)"):
        ticker_features(short)


@pytest.mark.parametrize("seed", [0, 5])
def test_recovers_the_sectors(seed: int) -> None:
    market = synthetic_market(seed=seed)
    assigned = Segmenter().fit(market).predict(market)
    sectors = market.groupby("ticker")["sector"].first().loc[assigned["ticker"]]
    # Measured: ARI 1.0 for seeds 0 and 5; 0.91..1.0 (mean 0.98) over seeds 0..9.
    assert adjusted_rand_score(sectors, assigned["segment"]) >= 0.8


def test_fitted_attributes_and_profiles(segmenter: Segmenter, market: pd.DataFrame) -> None:
    assert segmenter.feature_names_ == list(FEATURES)
    assert 2 <= segmenter.n_segments_ <= 8
    assert 0 < segmenter.silhouette_ <= 1
    assert segmenter.tickers_ == sorted(market["ticker"].unique())
    assert sorted(segmenter.labels_) == list(range(segmenter.n_segments_))
    assert len(set(segmenter.labels_.values())) == segmenter.n_segments_
    assert sum(p["size"] for p in segmenter.profiles_) == 32
    for profile in segmenter.profiles_:
        assert profile["label"] == segmenter.labels_[profile["segment"]]
        assert list(profile["profile"]) == list(FEATURES)


def test_fixed_number_of_segments(market: pd.DataFrame) -> None:
    model = Segmenter(n_segments=6).fit(market)
    assert model.n_segments_ == 6
    assert len(set(model.labels_.values())) == 6
    with pytest.raises(ValueError, match="n_segments"):
        Segmenter(n_segments=40).fit(market)


def test_predict_and_predict_features_agree(segmenter: Segmenter, market: pd.DataFrame) -> None:
    assigned = segmenter.predict(market)
    assert list(assigned.columns) == ["ticker", "segment", "label"]
    rows = segmenter.predict_features(ticker_features(market).to_numpy().tolist())
    assert list(rows.columns) == ["row", "segment", "label"]
    assert list(rows["segment"]) == list(assigned["segment"])
    assert list(rows["row"]) == list(range(32))


@pytest.mark.parametrize(
    "rows", [[[0.1] * 5], [[0.1] * 7], [0.1] * 6, [[0.1, 0.2, -0.1, 1.0, 0.5, float("inf")]]]
)
def test_predict_features_validates_rows(segmenter: Segmenter, rows: object) -> None:
    with pytest.raises(ValueError, match="6 features|finite"):
        segmenter.predict_features(rows)


def test_labels_are_unique_even_for_similar_centroids() -> None:
    from ml.segment import _segment_labels

    centers = np.array([[0, 2.0, 0, 1.0, 0, 0], [0, 2.0, 0, 1.0, 0, 0.1], [0.1, 0, 0, 0, 0, 0]])
    labels = _segment_labels(centers)
    assert labels[0] != labels[1]
    assert labels[2].startswith("market average")
    assert "high volatility, high beta" in labels[0]
