"""A byte flipped in the current model.joblib: the next load refuses it, and predictions
keep coming from the last good model (a real worker process with one child)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from api import create_app
from ml.errors import ArtifactError
from ml.registry import DatasetStore, ModelRegistry
from mlstock.launcher import COMMANDS
from tests.conftest import Stack
from tests.jobs import run
from tests.procs import SIGNING_KEY, service_env, start, stop
from tests.registry_helpers import flip_byte
from worker.cache import ModelCache
from worker.config import Settings

pytestmark = pytest.mark.integration


def test_flipped_byte_in_current_model_is_refused_last_good_keeps_serving(
    stack: Stack, tmp_path: Path
) -> None:
    artifacts = tmp_path / "artifacts"  # a copy: the suite's own workers are not disturbed
    shutil.copytree(stack.artifacts / "models", artifacts / "models")
    shutil.copytree(stack.artifacts / "datasets", artifacts / "datasets")
    url = stack.redis_url.rsplit("/", 1)[0] + "/6"  # a database only this worker consumes
    cmd = [*COMMANDS["worker-inference"], "-c", "1", "-n", f"tamper{time.time_ns()}@%h"]
    env = service_env(url, artifacts, RETRAIN_SCHEDULE="", MODEL_SIGNING_KEY=SIGNING_KEY)
    log = tmp_path / "worker.log"
    proc = start(cmd, env, log)
    try:
        client = create_app(Settings(redis_url=url, artifacts_dir=artifacts)).test_client()
        reg = ModelRegistry(artifacts, signing_key=SIGNING_KEY.encode())
        version = reg.current_version("forecast")
        assert version
        ticker = DatasetStore(artifacts).meta(reg.card("forecast", version)["data_version"])[
            "tickers"
        ][0]
        first = run(client, "/jobs/predict", {"ticker": ticker, "horizon": 3}, timeout=120)
        assert first["status"] == "succeeded", first["error"]
        assert first["model_version"] == version

        flip_byte(reg.model_path("forecast", version))
        with pytest.raises(ArtifactError, match="sha256"):
            reg.load("forecast")  # the next load refuses it
        time.sleep(1.1)  # past the cache's check interval: the worker sees the change
        for _ in range(3):
            again = run(client, "/jobs/predict", {"ticker": ticker, "horizon": 3}, timeout=60)
            assert again["status"] == "succeeded", again["error"]
            assert again["model_version"] == version
            assert again["result"] == first["result"]
        text = log.read_text()
        assert f"refused to load forecast {version}, still serving {version}" in text, text
        assert "does not match its sha256" in text

        # A process with no good model yet fails the job clearly instead.
        fresh = ModelCache(reg, DatasetStore(artifacts))
        with pytest.raises(ArtifactError, match="truncated or was altered"):
            fresh.get("forecast")
    finally:
        stop(proc)
