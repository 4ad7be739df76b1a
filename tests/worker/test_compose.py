"""docker-compose.yml runs the commands that are tested: the same as `mlstock up`'s, and
they complete a job when run here (no Docker engine needed)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlstock.launcher import COMMANDS, free_port, http_json
from tests.conftest import Stack
from tests.procs import served_tickers, service_env, start, stop

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    return http_json(method, url, body, timeout=30)


def test_compose_commands_are_the_launchers() -> None:
    services = COMPOSE["services"]
    for name, command in COMMANDS.items():
        assert services[name]["command"] == command, name
    assert set(services) == {"redis", *COMMANDS}


def test_compose_wiring() -> None:
    services = COMPOSE["services"]
    assert "--appendonly" in services["redis"]["command"]
    for name in COMMANDS:
        svc = services[name]
        assert svc["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert "artifacts:/app/artifacts" in svc["volumes"]
    training = services["worker-training"]["command"]
    assert training[training.index("-c") + 1] == "1"
    assert training[training.index("--prefetch-multiplier") + 1] == "1"
    assert "healthcheck" in services["api"] and "healthcheck" in services["redis"]


@pytest.mark.integration
def test_compose_commands_complete_a_job(stack: Stack, tmp_path: Path) -> None:
    """Run api, both workers and beat with the compose commands and environment, against
    the suite's Redis (its own database) and a copy of the trained registry."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(stack.artifacts / "models", artifacts / "models")
    shutil.copytree(stack.artifacts / "datasets", artifacts / "datasets")
    redis_url = stack.redis_url.rsplit("/", 1)[0] + "/1"
    port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # Two beats (each with its own schedule file) must still retrain once per tick.
        for name in ("api", "worker-inference", "worker-training", "beat", "beat-2"):
            svc = COMPOSE["services"][name.removesuffix("-2")]
            env = service_env(
                redis_url,
                artifacts if name != "beat-2" else tmp_path / "beat-2",
                **{k: str(v) for k, v in svc["environment"].items()
                   if k not in ("REDIS_URL", "ARTIFACTS_DIR", "HOST", "PORT")},
                HOST="127.0.0.1",
                PORT=str(port),
                RETRAIN_SCHEDULE="* * * * *",
            )  # fmt: skip
            procs[name] = start(svc["command"], env, tmp_path / f"{name}.log")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        status = 0
        while time.monotonic() < deadline and status != 200:
            try:
                status, body = http("GET", base + "/ready")
            except OSError:
                pass
            time.sleep(0.5)
        assert status == 200, body
        status, job = http(
            "POST", base + "/jobs/predict", {"ticker": served_tickers(redis_url)[0], "horizon": 3}
        )
        assert status == 202, job
        record: dict[str, Any] = {}
        while time.monotonic() < deadline + 60 and record.get("status") != "succeeded":
            _, record = http("GET", f"{base}/result/{job['job_id']}?wait=5")
            assert record["status"] not in ("failed", "cancelled"), record
        assert len(record["result"]["forecasts"][0]["steps"]) == 3
        # Both beats fire the every-minute schedule: one retrain job appears for the tick.
        deadline = time.monotonic() + 75
        scheduled: list[Any] = []
        while time.monotonic() < deadline and not scheduled:
            _, listing = http("GET", base + "/jobs?type=retrain")
            scheduled = listing["jobs"]
            time.sleep(1)
        assert scheduled, (tmp_path / "beat.log").read_text()[-2000:]
        time.sleep(3)  # the second beat's send of the same tick has been handled by now
        _, listing = http("GET", base + "/jobs?type=retrain")
        assert len(listing["jobs"]) == 1, listing
        for name in ("beat", "beat-2"):
            assert "Sending due task retrain" in (tmp_path / f"{name}.log").read_text()
    finally:
        for proc in procs.values():
            stop(proc)
        for name in procs:
            print(f"--- {name}\n" + (tmp_path / f"{name}.log").read_text()[-1500:])
