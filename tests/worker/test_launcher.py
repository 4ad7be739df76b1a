"""`mlstock up` as a user runs it: embedded Redis, every service, Ctrl-C leaves nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstock.launcher import free_port
from tests.conftest import Stack
from tests.procs import start_redis

pytestmark = pytest.mark.integration


def path_without_redis(tmp: Path) -> str:
    """Return PATH with every redis-server hidden, as on a machine without Redis."""
    dirs = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and (Path(d) / "redis-server").exists():
            shadow = tmp / f"shadow{len(dirs)}"
            shadow.mkdir()
            for f in Path(d).iterdir():
                if not f.name.startswith("redis"):
                    (shadow / f.name).symlink_to(f)
            d = str(shadow)
        dirs.append(d)
    return os.pathsep.join(dirs)


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [
        int(pid)
        for pid, s, stat in (line.split() for line in out.splitlines())
        if int(s) == sid and not stat.startswith("Z")
    ]


def copy_models(stack: Stack, artifacts: Path) -> None:
    """Give a new launcher the suite's trained models, so it is ready without training."""
    shutil.copytree(stack.artifacts / "models", artifacts / "models")
    shutil.copytree(stack.artifacts / "datasets", artifacts / "datasets")


def clean_env(tmp_path: Path) -> dict[str, str]:
    """Return this environment without the service's settings and with no redis-server."""
    settings = ("REDIS_URL", "RETRAIN_SCHEDULE", "ARTIFACTS_DIR", "HOST", "PORT")
    env = {k: v for k, v in os.environ.items() if k not in settings}
    env["PATH"] = path_without_redis(tmp_path)
    return env


@contextlib.contextmanager
def launched(env: dict[str, str], cwd: Path, port: int) -> Iterator[str]:
    """Run `mlstock up` until it is ready; yield its output; Ctrl-C it and check that no
    process of its session is left."""
    mlstock = str(Path(sys.executable).parent / "mlstock")
    log = cwd / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [mlstock, "up"], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "ready at" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert f"ready at http://127.0.0.1:{port}" in text, text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ready"
        assert len(session_pids(proc.pid)) >= 4  # api, two workers, beat (+ children)
        yield text
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the foreground process group
        proc.wait(60)
    deadline = time.monotonic() + 10
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_pids(proc.pid) == [], log.read_text()
    assert proc.returncode == 0


def test_up_serves_with_embedded_redis_and_stops_clean(stack: Stack, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    copy_models(stack, artifacts)
    port = free_port()
    env = clean_env(tmp_path)
    env.update({"ARTIFACTS_DIR": str(artifacts), "HOST": "127.0.0.1", "PORT": str(port)})
    with launched(env, tmp_path, port) as text:
        assert "started Redis on 127.0.0.1:" in text
        assert (artifacts / "redis" / "appendonlydir").exists() or any(
            (artifacts / "redis").glob("*.aof")
        )


def test_up_reads_its_settings_from_dotenv(stack: Stack, tmp_path: Path) -> None:
    artifacts = tmp_path / "elsewhere"
    copy_models(stack, artifacts)
    redis_proc, url = start_redis(tmp_path)
    try:
        port = free_port()
        (tmp_path / ".env").write_text(f"REDIS_URL={url}\nARTIFACTS_DIR={artifacts}\nPORT={port}\n")
        with launched(clean_env(tmp_path), tmp_path, port) as text:
            assert f"using Redis at {url}" in text, text
            assert "started Redis" not in text
            assert (artifacts / "logs" / "api.log").exists()
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
