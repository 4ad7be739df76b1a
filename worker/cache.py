"""Per-process model cache: each model is loaded once per worker child and reloaded only
when the registry's current version changes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd

from ml.errors import MLError
from ml.registry import DatasetStore, ModelRegistry

log = logging.getLogger(__name__)
#: What identifies the bytes a model was loaded from: version, file size and mtime.
Stamp = tuple[str, int, int]
#: Versions other than the current one kept loaded for point-in-time forecasts.
PINNED_KEEP = 2
T = TypeVar("T")


@dataclass(frozen=True)
class Served:
    """A loaded model with its card and the prices it was trained on."""

    model: Any
    card: dict[str, Any]
    prices: pd.DataFrame

    @property
    def version(self) -> str:
        """Return the model's version."""
        return str(self.card["version"])


class ModelCache:
    """Load models lazily, once per process; check the current pointer (and the current
    file's size and mtime) at most every `check_interval` seconds so the hot path does no
    file read per job.

    A reload that fails verification (tampered, truncated, unsigned, built by other
    library versions) keeps the last good model serving, and is not tried again until the
    pointer or the file changes; with no good model yet, the error reaches the job.
    """

    def __init__(
        self, registry: ModelRegistry, datasets: DatasetStore, check_interval: float = 1.0
    ) -> None:
        self.registry = registry
        self.datasets = datasets
        self.check_interval = check_interval
        self._served: dict[str, Served] = {}
        self._checked: dict[str, float] = {}
        self._prices: dict[str, pd.DataFrame] = {}
        self._stamps: dict[str, Stamp] = {}
        self._refused: dict[str, tuple[Stamp, MLError]] = {}
        self._derived: dict[str, tuple[Served, Any]] = {}
        self._dataset_tickers: dict[str, frozenset[str]] = {}
        self._pinned: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Served:
        """Return the current version of model `name`, loading it if it changed."""
        with self._lock:
            served = self._served.get(name)
            now = time.monotonic()
            if served is not None and now - self._checked.get(name, 0.0) < self.check_interval:
                return served
            self._checked[name] = now
            current = self.registry.current_version(name)
            if served is not None and current is None:
                return served
            stamp = self._stamp(name, current)
            if served is not None and stamp == self._stamps.get(name):
                return served
            refused = self._refused.get(name)
            if refused is not None and refused[0] == stamp:
                if served is not None:
                    return served
                raise refused[1].with_traceback(None)
            try:
                model, card = self.registry.load(name, current)
                prices = self._dataset(str(card["data_version"]))
            except MLError as exc:
                if stamp is not None:
                    self._refused[name] = (stamp, exc)
                if served is None:
                    raise
                log.error(
                    "refused to load %s %s, still serving %s: %s",
                    name,
                    current,
                    served.version,
                    exc,
                )
                return served
            previous, served = served, Served(model, card, prices)
            self._served[name] = served
            if stamp is not None:
                self._stamps[name] = stamp
            self._refused.pop(name, None)
            # One line per load. The benchmark's soak counts them: a process's first load
            # of a model, and a reload when the current version (or its file) changed.
            if previous is None:
                log.info("loaded model %s %s (first load in this process)", name, served.version)
            else:
                log.info("reloaded model %s %s (was %s)", name, served.version, previous.version)
            return served

    def as_of(self, name: str, day: str, current: Served, tickers: list[str] | None) -> Served:
        """Return the version of `name` trained on the latest data through `day` (an ISO
        date) that knows `tickers` (None: all of `current`'s), serving `current`'s prices;
        `current` itself when no version is that old.

        The lookup reads the cards (a replay's cost, not the hot path's); loaded versions
        are kept, the `PINNED_KEEP` most recently used.
        """
        wanted = set(tickers) if tickers is not None else set(current.prices["ticker"].unique())

        def knows(card: dict[str, Any]) -> bool:
            return wanted <= self._tickers(str(card.get("data_version")))

        with self._lock:
            version = self.registry.trained_through(name, day, accept=knows)
            if version is None or version == current.version:
                return current
            key = (name, version)
            pinned = self._pinned.pop(key, None)
            if pinned is None:
                model, card = self.registry.load(name, version)
                pinned = (model, card)
                log.info("loaded %s %s for point-in-time forecasts", name, version)
            self._pinned[key] = pinned  # most recently used last
            while len(self._pinned) > PINNED_KEEP:
                self._pinned.pop(next(iter(self._pinned)))
            return Served(pinned[0], pinned[1], current.prices)

    def _tickers(self, data_version: str) -> frozenset[str]:
        # A dataset version is its content: its tickers never change.
        if data_version not in self._dataset_tickers:
            try:
                meta = self.datasets.meta(data_version)
            except MLError:
                return frozenset()
            self._dataset_tickers[data_version] = frozenset(meta["tickers"])
        return self._dataset_tickers[data_version]

    def derived(self, key: str, served: Served, make: Callable[[Served], T]) -> T:
        """Return `make(served)`, computed once per loaded model (e.g. the latest features
        of its prices) so jobs do not recompute it; a reload computes it again."""
        with self._lock:
            held = self._derived.get(key)
            if held is not None and held[0] is served:
                value: T = held[1]
                return value
        value = make(served)
        with self._lock:
            self._derived[key] = (served, value)
        return value

    def _stamp(self, name: str, version: str | None) -> Stamp | None:
        if version is None:
            return None
        try:
            st = self.registry.model_path(name, version).stat()
        except (OSError, MLError):
            return (version, -1, -1)
        return (version, st.st_size, st.st_mtime_ns)

    def _dataset(self, version: str) -> pd.DataFrame:
        # Models trained on the same data share one frame in memory.
        if version not in self._prices:
            self._prices = {version: self.datasets.load(version)}
        return self._prices[version]
