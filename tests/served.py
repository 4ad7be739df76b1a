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


@pytest.fixture(scope="session")
def api_server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Start gunicorn with COMMANDS["api"] on a free port against the suite's Redis."""
    root = tmp_path_factory.mktemp("api")
    port = free_port()
    env = service_env(
        stack.redis_url,
        stack.artifacts,
        HOST="127.0.0.1",
        PORT=str(port),
        RETRAIN_SCHEDULE="",
        PROMETHEUS_MULTIPROC_DIR=str(root / "prometheus"),
        **WEBHOOK,
    )
    log_path = root / "api.log"
    proc = start(COMMANDS["api"], env, log_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not start:\n{log_path.read_text()}") from None
                time.sleep(0.2)
        yield Served(url, log_path, proc)
    finally:
        stop(proc)
