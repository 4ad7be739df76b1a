"""Stock segmentation: per-ticker risk/return features, k-means, readable segment labels."""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from ml.errors import InsufficientHistoryError

FEATURES = ("ann_return", "ann_volatility", "max_drawdown", "beta", "market_corr", "momentum_3m")
TRADING_DAYS = 252
MOMENTUM_DAYS = 63  # about three months of business days
# Fewest daily returns per ticker for its volatility and beta to mean anything.
MIN_RETURNS = 20
# Phrases for a centroid far below / above the average ticker on each feature.
# max_drawdown is negative (-0.3 is a 30% fall), so "below average" means deeper.
_PHRASES = {
    "ann_return": ("weak returns", "strong returns"),
    "ann_volatility": ("low volatility", "high volatility"),
    "max_drawdown": ("deep drawdowns", "shallow drawdowns"),
    "beta": ("defensive", "high beta"),
    "market_corr": ("idiosyncratic", "market-tracking"),
    "momentum_3m": ("negative momentum", "positive momentum"),
}
# Features k-means clusters on by default: the structural risk profile (volatility, beta,
# co-movement with the market). Return, drawdown and momentum depend on the period, so
# clustering on them made segments unstable between two halves of the same history
# (two-halves ARI 0.64 vs 1.0 on the synthetic market); they still describe each segment.
CLUSTER_FEATURES = ("ann_volatility", "beta", "market_corr")
# A centroid within this many standard deviations of the mean is not distinctive.
_DISTINCT_Z = 0.25
_LABEL_WORDS = 2


def ticker_features(prices: pd.DataFrame, *, window: int = TRADING_DAYS) -> pd.DataFrame:
    """Return FEATURES per ticker (index ``ticker``) over each ticker's last ``window`` days.

    The market is the equal-weighted mean daily log-return of all tickers on each date.
    """
    frame = prices[["date", "ticker", "close"]].sort_values(["ticker", "date"], kind="stable")
    frame = frame.assign(ret=np.log(frame["close"]).groupby(frame["ticker"]).diff())
    market = frame.groupby("date")["ret"].mean()
    frame = frame.assign(market=frame["date"].map(market))
    recent = frame.groupby("ticker", sort=True).tail(window)
    counts = recent.groupby("ticker")["ret"].count()
    short = counts[counts < MIN_RETURNS]
    if not short.empty:
        named = ", ".join(f"{t} ({n})" for t, n in short.items())
        raise InsufficientHistoryError(
            f"segmenting needs at least {MIN_RETURNS} daily returns per ticker: {named}"
        )
    rows = {
        str(ticker): _one_ticker(group) for ticker, group in recent.groupby("ticker", sort=True)
    }
    result = pd.DataFrame.from_dict(rows, orient="index", columns=list(FEATURES))
    result.index.name = "ticker"
    return result


def _one_ticker(group: pd.DataFrame) -> list[float]:
    """Return the FEATURES of one ticker's recent rows."""
    close = group["close"].to_numpy()
    both = group[["ret", "market"]].dropna().to_numpy()
    ret, market = both[:, 0], both[:, 1]
    market_var = float(np.var(market))
    cov = float(np.mean((ret - ret.mean()) * (market - market.mean())))
    ret_std = float(np.std(ret))
    momentum_base = close[max(0, len(close) - 1 - MOMENTUM_DAYS)]
    return [
        float(ret.mean() * TRADING_DAYS),
        float(np.std(ret, ddof=1) * math.sqrt(TRADING_DAYS)),
        float(np.min(close / np.maximum.accumulate(close) - 1.0)),
        cov / market_var if market_var > 0 else 0.0,
        cov / math.sqrt(market_var) / ret_std if market_var > 0 and ret_std > 0 else 0.0,
        float(np.log(close[-1] / momentum_base)),
    ]


class Segmenter(BaseEstimator):  # type: ignore[misc]
    """Group tickers by risk/return profile: scaled features, k-means, readable labels.

    Unless ``n_segments`` is fixed, k is the one in ``k_min..min(k_max, n_tickers - 1)``
    with the best silhouette (ties go to the smaller k).
    """

    def __init__(
        self,
        n_segments: int | None = None,
        k_min: int = 2,
        k_max: int = 8,
        window: int = TRADING_DAYS,
        random_state: int = 0,
        cluster_on: tuple[str, ...] = CLUSTER_FEATURES,
    ) -> None:
        self.n_segments = n_segments
        self.k_min = k_min
        self.k_max = k_max
        self.window = window
        self.random_state = random_state
        self.cluster_on = cluster_on

    def fit(self, prices: pd.DataFrame) -> Self:
        """Compute ticker features, scale them and cluster them into segments."""
        features = ticker_features(prices, window=self.window)
        n_tickers = len(features)
        if self.n_segments is not None:
            if not 1 <= self.n_segments <= n_tickers:
                raise ValueError(
                    f"n_segments must be between 1 and the {n_tickers} tickers, "
                    f"got {self.n_segments}"
                )
            candidates = [self.n_segments]
        else:
            candidates = list(range(max(2, self.k_min), min(self.k_max, n_tickers - 1) + 1))
            if not candidates:
                raise InsufficientHistoryError(
                    f"choosing the number of segments needs at least 3 tickers and "
                    f"k_min <= k_max; got {n_tickers} tickers"
                )
        unknown = [f for f in self.cluster_on if f not in FEATURES]
        if unknown or not self.cluster_on:
            raise ValueError(f"cluster_on must name some of {', '.join(FEATURES)}; got {unknown}")
        columns = [FEATURES.index(f) for f in self.cluster_on]
        scaler = StandardScaler().fit(features.to_numpy())
        full = scaler.transform(features.to_numpy())
        scaled = full[:, columns]
        best: tuple[float, KMeans] | None = None
        for k in candidates:
            kmeans = KMeans(n_clusters=k, n_init=10, random_state=self.random_state).fit(scaled)
            score = (
                float(silhouette_score(scaled, kmeans.labels_))
                if 2 <= k < n_tickers
                else float("nan")
            )
            # Strictly greater keeps the smaller k on ties; NaN only when k is fixed.
            if best is None or score > best[0]:
                best = (score, kmeans)
        assert best is not None  # candidates is never empty
        self.silhouette_, self.kmeans_ = best
        self.scaler_ = scaler
        self.cluster_columns_ = columns
        # Labels read every feature: the z-score centroid of each cluster in all of them.
        self.label_centers_ = np.vstack(
            [full[self.kmeans_.labels_ == c].mean(axis=0) for c in range(self.kmeans_.n_clusters)]
        )
        self.n_segments_ = int(self.kmeans_.n_clusters)
        self.feature_names_ = list(FEATURES)
        self.tickers_ = [str(t) for t in features.index]
        self.features_ = features
        self.segment_ids_ = np.arange(self.n_segments_)
        self._describe()
        return self

    def _describe(self) -> None:
        """Set labels_ and profiles_ (keyed by public segment id) from the clustering."""
        names = _segment_labels(self.label_centers_)
        self.labels_ = {int(self.segment_ids_[c]): names[c] for c in range(self.n_segments_)}
        self.profiles_ = self._profiles(
            self.features_, self.segment_ids_[self.kmeans_.labels_].astype(int)
        )

    def assignments(self) -> dict[str, int]:
        """Return the public segment id of every ticker the segmenter was fitted on."""
        check_is_fitted(self)
        ids = getattr(self, "segment_ids_", np.arange(self.n_segments_))
        return {t: int(ids[c]) for t, c in zip(self.tickers_, self.kmeans_.labels_, strict=True)}

    def align_to(self, previous: Segmenter) -> float | None:
        """Renumber segments to match ``previous`` (Hungarian assignment); return the churn.

        Segments are matched by the tickers they share (most shared tickers overall), so a
        segment that persists keeps its id across retrains; unmatched segments take the
        smallest ids the previous version did not use. Churn is the share of tickers in
        both versions whose segment id changed; None when they share no ticker.
        """
        check_is_fitted(self)
        old = previous.assignments()
        new_cluster = dict(zip(self.tickers_, self.kmeans_.labels_, strict=True))
        common = [t for t in self.tickers_ if t in old]
        if not common:
            return None
        old_ids = sorted(set(old.values()))
        overlap = np.zeros((self.n_segments_, len(old_ids)))
        for t in common:
            overlap[new_cluster[t], old_ids.index(old[t])] += 1
        rows, cols = linear_sum_assignment(-overlap)
        ids = np.full(self.n_segments_, -1)
        for r, c in zip(rows, cols, strict=True):
            if overlap[r, c] > 0:
                ids[r] = old_ids[c]
        free = (i for i in range(self.n_segments_ + len(old_ids)) if i not in set(ids))
        for r in range(self.n_segments_):
            if ids[r] < 0:
                ids[r] = next(free)
        self.segment_ids_ = ids
        self._describe()
        mine = self.assignments()
        return float(np.mean([mine[t] != old[t] for t in common]))

    def _profiles(self, features: pd.DataFrame, segments: np.ndarray) -> list[dict[str, Any]]:
        """Return each segment's label, size and mean raw feature values."""
        profiles = []
        for segment in sorted(self.labels_):
            members = features[segments == segment]
            profiles.append(
                {
                    "segment": segment,
                    "label": self.labels_[segment],
                    "size": int(len(members)),
                    "profile": {name: float(members[name].mean()) for name in FEATURES},
                }
            )
        return profiles

    def predict(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Assign each ticker of ``prices`` to a segment: columns ticker, segment, label."""
        check_is_fitted(self)
        features = ticker_features(prices, window=self.window)
        result = self._assign(features.to_numpy())
        result.insert(0, "ticker", [str(t) for t in features.index])
        return result

    def predict_features(self, X: Any) -> pd.DataFrame:
        """Assign rows of raw features in FEATURES order: columns row, segment, label."""
        check_is_fitted(self)
        values = np.asarray(X, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(FEATURES):
            raise ValueError(
                f"expected rows of {len(FEATURES)} features in the order "
                f"{', '.join(FEATURES)}; got shape {values.shape}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("features must be finite numbers")
        result = self._assign(values)
        result.insert(0, "row", np.arange(len(values)))
        return result

    def cluster_space(self, values: np.ndarray) -> np.ndarray:
        """Return raw feature rows scaled and reduced to the columns k-means clusters on."""
        scaled: np.ndarray = self.scaler_.transform(values)
        columns = getattr(self, "cluster_columns_", list(range(len(FEATURES))))
        return scaled[:, columns]

    def _assign(self, values: np.ndarray) -> pd.DataFrame:
        """Return the segment and label of each row of raw features."""
        clusters = self.kmeans_.predict(self.cluster_space(values))
        ids = getattr(self, "segment_ids_", np.arange(self.n_segments_))
        segments = ids[clusters].astype(int)
        return pd.DataFrame({"segment": segments, "label": [self.labels_[s] for s in segments]})


def _segment_labels(centers: np.ndarray) -> dict[int, str]:
    """Name each centroid (in z-scores) by its most distinctive features; names are unique.

    Labels start from the (at most two) strongest deviations beyond _DISTINCT_Z; clashing
    labels take more features, however weak, until they differ; a last resort appends
    the segment number.
    """
    ranked = [np.argsort(-np.abs(center), kind="stable") for center in centers]

    def phrase(segment: int, words: int) -> str:
        """Join the phrases of a centroid's ``words`` strongest deviations."""
        center, top = centers[segment], list(ranked[segment][:words])
        if words == _LABEL_WORDS:  # a first label names only clear deviations
            top = [i for i in top if abs(center[i]) >= _DISTINCT_Z]
        parts = [_PHRASES[FEATURES[i]][int(center[i] > 0)] for i in top]
        return ", ".join(parts) or "market average"

    words = dict.fromkeys(range(len(centers)), _LABEL_WORDS)
    labels = {s: phrase(s, words[s]) for s in words}
    while True:
        clashing = [s for s in labels if list(labels.values()).count(labels[s]) > 1]
        extendable = [s for s in clashing if words[s] < len(FEATURES)]
        if not extendable:
            break
        for s in extendable:
            words[s] += 1
            labels[s] = phrase(s, words[s])
    for s in clashing:
        labels[s] = f"{labels[s]} ({s})"
    return labels
