"""`mlstock up` as a user runs it: embedded Redis, every service, Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlstock.launcher import free_port
from tests.conftest import Stack

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


def test_up_serves_with_embedded_redis_and_stops_clean(stack: Stack, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(stack.artifacts / "models", artifacts / "models")
    shutil.copytree(stack.artifacts / "datasets", artifacts / "datasets")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RETRAIN_SCHEDULE")}
    env.update(
        {
            "PATH": path_without_redis(tmp_path),
            "ARTIFACTS_DIR": str(artifacts),
            "HOST": "127.0.0.1",
            "PORT": str(port),
        }
    )
    mlstock = str(Path(sys.executable).parent / "mlstock")
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [mlstock, "up"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "ready at" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert f"ready at http://127.0.0.1:{port}" in text, text
        assert "started Redis on 127.0.0.1:" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ready"
        assert (artifacts / "redis" / "appendonlydir").exists() or any(
            (artifacts / "redis").glob("*.aof")
        )
        assert len(session_pids(proc.pid)) > 4  # redis, api, two workers, beat (+ children)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the foreground process group
        proc.wait(60)
    deadline = time.monotonic() + 10
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_pids(proc.pid) == [], log.read_text()
    assert proc.returncode == 0
