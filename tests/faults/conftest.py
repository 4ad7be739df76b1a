"""A stack per fault scenario: its own Redis (append-only), workers and gunicorn API on
free ports, over a copy of the registry the session stack trained."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlstock.launcher import COMMANDS, free_port
from tests.conftest import Stack
from tests.procs import served_tickers, service_env, start_redis, stop

FINAL = ("succeeded", "failed", "cancelled")
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "faults.json"


class FaultStack:
    """Processes a scenario may kill, restart or starve."""

    def __init__(self, root: Path, artifacts: Path) -> None:
        self.root = root
        self.artifacts = artifacts
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.api_port = free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis_proc: subprocess.Popen[bytes] | None = None

    # --- processes ------------------------------------------------------------------------
    def start_redis(self) -> None:
        """Start Redis with an append-only file, as compose and `mlstock up` run it."""
        data = self.root / "redis"
        data.mkdir(exist_ok=True)
        self.redis_proc, _ = start_redis(data, port=self.redis_port, append_only=True)

    def stop_redis(self) -> None:
        """Stop Redis the clean way (SIGTERM: it flushes the append-only file)."""
        assert self.redis_proc is not None
        stop(self.redis_proc)
        self.redis_proc = None

    def start(self, name: str, file_size_limit: int | None = None, **env: str) -> None:
        """Start a service with its compose command."""
        environment = service_env(
            self.redis_url, self.artifacts, HOST="127.0.0.1", PORT=str(self.api_port),
            RETRAIN_SCHEDULE="", RATE_LIMIT="", **env,
        )  # fmt: skip
        limit = None
        if file_size_limit is not None:

            def limit() -> None:  # a disk that fills up, for this process alone
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

        with open(self.root / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                COMMANDS[name], env=environment, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=limit,
            )  # fmt: skip

    def children(self, name: str) -> list[int]:
        """Return the pids of a service's child processes (pool workers)."""
        pid = self.procs[name].pid
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
        )
        return [int(p) for p in out.stdout.split()]

    def log(self, name: str) -> str:
        """Return a service's log."""
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        """Stop every process of the scenario."""
        for proc in self.procs.values():
            stop(proc, grace=5)
        if self.redis_proc is not None:
            self.stop_redis()

    # --- HTTP -----------------------------------------------------------------------------
    def http(
        self, method: str, path: str, body: Any = None, timeout: float = 15
    ) -> tuple[int, dict[str, str], Any]:
        """Send a request; return (status, headers, JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until `/ready` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.http("GET", "/ready", timeout=5)[0] == 200:
                    return
            time.sleep(0.3)
        raise AssertionError(f"not ready: {self.http('GET', '/ready')}")

    def a_ticker(self) -> str:
        """Return a ticker the served model knows."""
        return served_tickers(self.redis_url)[0]

    def run_job(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Submit a job (asserting the 202) and return its record once it is final."""
        status, _, job = self.http("POST", f"/jobs/{kind}", body)
        assert status == 202, job
        return self.settle([job["job_id"]], timeout)[job["job_id"]]

    def settle(self, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until every job is final or `timeout` passes; return the last records."""
        records: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        pending = list(job_ids)
        while pending and time.monotonic() < deadline:
            still = []
            for job_id in pending:
                status, _, record = self.http("GET", f"/result/{job_id}")
                records[job_id] = record if status == 200 else {"status": f"http {status}"}
                if records[job_id].get("status") not in FINAL:
                    still.append(job_id)
            pending = still
            if pending:
                time.sleep(0.5)
        return records


@pytest.fixture
def fault_stack(stack: Stack, tmp_path: Path) -> Iterator[FaultStack]:
    """A fresh scenario stack over a copy of the trained registry (Redis started)."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(stack.artifacts / "models", artifacts / "models")
    shutil.copytree(stack.artifacts / "datasets", artifacts / "datasets")
    fs = FaultStack(tmp_path, artifacts)
    fs.start_redis()
    try:
        yield fs
    finally:
        fs.stop_all()


_figures: dict[str, Any] = {}


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, Any]]:
    """Each scenario's figures, printed and written to bench/results/faults.json."""
    yield _figures
    if _figures:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(_figures, indent=2))
        print("\nfault scenarios:\n" + json.dumps(_figures, indent=2))


def kill(pid: int) -> bool:
    """SIGKILL a process; False when it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
