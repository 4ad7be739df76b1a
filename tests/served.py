"""A real API (gunicorn with the compose/launcher command) on the suite's stack."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlstock.launcher import COMMANDS, free_port
from tests.conftest import WEBHOOK, Stack
from tests.procs import service_env, start, stop


@dataclass
class Served:
    """A running API process and where its log is."""

    url: str
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        """Return the API's log so far."""
        return self.log_path.read_text(errors="replace")


def serve_api(redis_url: str, artifacts: Path, root: Path, **extra: str) -> Served:
    """Start gunicorn with COMMANDS["api"] on a free port; return once `/health` answers.

    `extra` are more environment settings (they override the webhook's)."""
    port = free_port()
    env = service_env(
        redis_url,
        artifacts,
        **{
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "RETRAIN_SCHEDULE": "",
            "PROMETHEUS_MULTIPROC_DIR": str(root / "prometheus"),
            **WEBHOOK,
            **extra,
        },
    )
    log_path = root / "api.log"
    proc = start(COMMANDS["api"], env, log_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return Served(url, log_path, proc)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"the API did not start:\n{log_path.read_text()}") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def api_server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Start gunicorn with COMMANDS["api"] on a free port against the suite's Redis."""
    served = serve_api(stack.redis_url, stack.artifacts, tmp_path_factory.mktemp("api"))
    try:
        yield served
    finally:
        stop(served.proc)
