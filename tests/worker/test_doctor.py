"""`/ready` and `mlstock doctor` name each misconfiguration and its fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api import create_app
from mlstock.launcher import COMMANDS, free_port
from tests.conftest import Stack
from tests.procs import service_env, start, start_redis, stop

pytestmark = pytest.mark.integration


def test_a_misconfigured_stack_is_explained(stack: Stack, tmp_path: Path) -> None:
    """Redis without an append-only file, no training worker, a visibility timeout below
    the training limit, no signing key and no beat: each is named with its fix."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(stack.artifacts / "models", artifacts / "models")
    shutil.copytree(stack.artifacts / "datasets", artifacts / "datasets")
    redis_proc, url = start_redis(tmp_path)  # the suite's Redis keeps no append-only file
    env = service_env(
        url, artifacts, MODEL_SIGNING_KEY="", TRAINING_TIME_LIMIT="600",
        BROKER_VISIBILITY_TIMEOUT="300",
    )  # fmt: skip
    worker = start(COMMANDS["worker-inference"], env, tmp_path / "worker.log")
    port = free_port()
    api = start(
        COMMANDS["api"], env | {"HOST": "127.0.0.1", "PORT": str(port)}, tmp_path / "api.log"
    )
    try:
        client = create_app(stack.settings(redis_url=url)).test_client()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            body = client.get("/ready").get_json()
            checks = {c["name"]: c for c in body["checks"]}
            if checks.get("model:forecast", {}).get("ok"):
                break
            time.sleep(0.5)
        resp = client.get("/ready")
        assert resp.status_code == 503
        checks = {c["name"]: c for c in resp.get_json()["checks"]}
        for name in ("workers:training", "redis:persistence", "visibility-timeout",
                     "signing-key", "beat"):  # fmt: skip
            assert checks[name]["ok"] is False, checks[name]
            assert checks[name]["fix"], checks[name]
        assert checks["workers:training"]["blocking"] is True
        assert checks["redis:persistence"]["blocking"] is False
        assert "--appendonly yes" in checks["redis:persistence"]["fix"]
        assert checks["workers:inference"]["ok"] and checks["model:forecast"]["ok"]
        mlstock = str(Path(sys.executable).parent / "mlstock")
        out = subprocess.run(
            [mlstock, "doctor", "--url", f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1, out
        assert "FAIL workers:training" in out.stdout
        assert "fix: run redis-server with --appendonly yes" in out.stdout
    finally:
        for proc in (api, worker, redis_proc):
            stop(proc)
