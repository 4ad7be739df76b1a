"""Fixtures: settings, app and client built through the factories; and, for integration
tests, a real redis-server and real Celery worker processes started on free ports."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from threadpoolctl import threadpool_limits

from api import create_app
from ml.data import synthetic_market
from ml.forecast import Forecaster
from mlstock.launcher import COMMANDS
from tests.procs import (
    WEBHOOK,
    served_catalog,
    served_tickers,
    service_env,
    start,
    start_redis,
    stop,
)
from worker.config import Settings
from worker.contract import CATALOG_KEY

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_stocks_daily.csv.gz"
FIRST_TRAINING_TIMEOUT = 300


@pytest.fixture(scope="session")
def market() -> pd.DataFrame:
    """Return the default synthetic market (treat as read-only)."""
    return synthetic_market()


@pytest.fixture(scope="session")
def forecaster(market: pd.DataFrame) -> Forecaster:
    """Return a forecaster with default parameters fitted on the synthetic market (with one
    BLAS thread, as workers fit)."""
    with threadpool_limits(limits=1):
        return Forecaster().fit(market)


@dataclass
class Stack:
    """The processes the integration tests share: Redis and one worker per queue."""

    redis_url: str
    artifacts: Path
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]]

    def settings(self, **overrides: Any) -> Settings:
        """Return settings pointing at this stack."""
        values: dict[str, Any] = {
            "redis_url": self.redis_url,
            "artifacts_dir": self.artifacts,
            "webhook_secret": WEBHOOK["WEBHOOK_SECRET"],
            "webhook_allow_private": True,
        }
        return Settings(**(values | overrides))

    def log(self, name: str) -> str:
        """Return a process's log text."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def catalog(self) -> dict[str, Any]:
        """Return the catalog the workers publish."""
        return served_catalog(self.redis_url)

    def tickers(self) -> list[str]:
        """Return the tickers the served forecast model knows."""
        return served_tickers(self.redis_url)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start redis-server and an inference and a training worker; wait for first models."""
    root = tmp_path_factory.mktemp("stack")
    artifacts = root / "artifacts"
    artifacts.mkdir()
    redis_proc, url = start_redis(root)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = service_env(url, artifacts, RETRAIN_SCHEDULE="")
    try:
        for name in ("worker-inference", "worker-training"):
            procs[name] = start(COMMANDS[name], env, root / f"{name}.log")
        st = Stack(url, artifacts, root, procs)
        _wait_for_models(st)
        yield st
    finally:
        for proc in procs.values():
            stop(proc)
        stop(redis_proc)


def _wait_for_models(st: Stack) -> None:
    """The training worker trains the first models of the empty registry by itself."""
    client = redis.Redis.from_url(st.redis_url)
    deadline = time.monotonic() + FIRST_TRAINING_TIMEOUT
    while time.monotonic() < deadline:
        for name, proc in st.procs.items():
            if proc.poll() is not None or "Traceback" in st.log(name):
                raise RuntimeError(f"{name} failed:\n{st.log(name)[-3000:]}")
        raw = client.get(CATALOG_KEY)
        if raw and {"forecast", "segment"} <= set(json.loads(raw)):
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"no models after {FIRST_TRAINING_TIMEOUT}s:\n{st.log('worker-training')[-3000:]}"
    )


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> Settings:
    """Settings for the app under test: the suite's Redis when the test is an integration test."""
    if request.node.get_closest_marker("integration"):
        st: Stack = request.getfixturevalue("stack")
        return st.settings()
    # Validation-only tests never reach Redis: nothing listens on port 1.
    return Settings(redis_url="redis://127.0.0.1:1/0")


@pytest.fixture
def app(settings: Settings) -> Flask:
    """The Flask app, made by its factory."""
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()
