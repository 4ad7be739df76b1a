"""Start and stop the real processes the integration tests talk to."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from mlstock.launcher import (
    THREAD_CAPS,
    LaunchError,
    free_port,
    redis_server_binary,
    wait_for_redis,
)
from worker.config import Settings
from worker.contract import CATALOG_KEY

BIN = Path(sys.executable).parent
#: Every process of the suite signs and verifies model artifacts with this key.
SIGNING_KEY = "test-signing-key"
#: Callbacks in tests go to a receiver on loopback, signed with this key.
WEBHOOK = {"WEBHOOK_SECRET": "test-webhook-secret", "WEBHOOK_ALLOW_PRIVATE": "true"}


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process in its own session, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process's group, then SIGKILL what is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start_redis(
    workdir: Path, *, port: int | None = None, append_only: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a redis-server on a loopback port (default: a free one), keeping its files
    and log in `workdir`; with `append_only`, as compose and `mlstock up` run it (so it
    keeps its data across a restart). Return it and its URL."""
    port = port or free_port()
    persistence = (
        ["--appendonly", "yes", "--appendfsync", "everysec"]
        if append_only
        else ["--appendonly", "no"]
    )
    proc = start(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(workdir), *persistence],
        dict(os.environ),
        workdir / "redis.log",
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, timeout=20)
    except LaunchError as exc:
        log = (workdir / "redis.log").read_text()
        raise RuntimeError(f"redis-server did not start: {log}") from exc
    return proc, url


def service_env(redis_url: str, artifacts: Path, **extra: str) -> dict[str, str]:
    """Return the environment for a service process of the stack under test."""
    env = dict(os.environ)
    for name in Settings.model_fields:  # settings come from the test, not the developer's shell
        env.pop(name.upper(), None)
    env.update(THREAD_CAPS)
    env.update({"MODEL_SIGNING_KEY": SIGNING_KEY, **WEBHOOK})
    env.update({"REDIS_URL": redis_url, "ARTIFACTS_DIR": str(artifacts), **extra})
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def served_catalog(redis_url: str, timeout: float = 30) -> dict[str, Any]:
    """Return the catalog the workers publish (each model's tickers and features),
    waiting up to `timeout` s for the first one."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while (raw := client.get(CATALOG_KEY)) is None:
            assert time.monotonic() < deadline, "no catalog published"
            time.sleep(0.2)
    finally:
        client.close()
    catalog: dict[str, Any] = json.loads(raw)
    return catalog


def served_tickers(redis_url: str) -> list[str]:
    """Return the tickers the served forecast model knows."""
    return [str(t) for t in served_catalog(redis_url)["forecast"]["tickers"]]
