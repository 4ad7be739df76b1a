"""Per-process model cache: each model is loaded once per worker child and reloaded only
when the registry's current version changes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ml.registry import DatasetStore, ModelRegistry


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
    """Load models lazily, once per process; check the current pointer at most every
    `check_interval` seconds so the hot path does no file read per job."""

    def __init__(
        self, registry: ModelRegistry, datasets: DatasetStore, check_interval: float = 1.0
    ) -> None:
        self.registry = registry
        self.datasets = datasets
        self.check_interval = check_interval
        self.loads = 0
        self._served: dict[str, Served] = {}
        self._checked: dict[str, float] = {}
        self._prices: dict[str, pd.DataFrame] = {}
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
            if served is not None and (current is None or current == served.version):
                return served
            model, card = self.registry.load(name, current)
            served = Served(model, card, self._dataset(str(card["data_version"])))
            self._served[name] = served
            self.loads += 1
            return served

    def _dataset(self, version: str) -> pd.DataFrame:
        # Models trained on the same data share one frame in memory.
        if version not in self._prices:
            self._prices = {version: self.datasets.load(version)}
        return self._prices[version]
