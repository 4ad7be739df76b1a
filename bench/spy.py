"""Where a process's CPU goes: py-spy samples of a stack process, summed by package.

`Spy(pid, out)` records a process and its children (`py-spy record --subprocesses --format
raw`) until stopped; `summarize(path)` reads the collapsed stacks and returns, per process
kind, the samples by package of the innermost frame that is not the standard library
(logging and json count on their own), and the functions holding the most samples
inclusively.

    python -m bench.spy FILE.txt     # summarize a recording
"""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Packages (by a path fragment) samples are summed by; the first match from the leaf up.
PACKAGES = (
    ("logging", "/logging/"),
    ("json", "/json/"),
    ("ours: worker", f"{ROOT}/worker/"),
    ("ours: api", f"{ROOT}/api/"),
    ("ours: ml", f"{ROOT}/ml/"),
    ("celery", "/celery/"),
    ("kombu", "/kombu/"),
    ("billiard", "/billiard/"),
    ("redis-py", "/redis/"),
    ("pydantic", "/pydantic"),
    ("flask", "/flask/"),
    ("werkzeug", "/werkzeug/"),
    ("gunicorn", "/gunicorn/"),
    ("prometheus", "/prometheus_client/"),
    ("limiter", "/flask_limiter/"),
    ("limits", "/limits/"),
    ("sklearn", "/sklearn/"),
    ("numpy", "/numpy/"),
    ("pandas", "/pandas/"),
    ("vine/amqp", "/vine/"),
)
#: Leaf functions that wait (on a socket, a pipe, a poller or a lock) rather than compute:
#: py-spy's non-blocking sampling sees them as active; they are left out of the shares.
WAITING = re.compile(
    r"^(SocketBuffer\._read_from_socket|EpollSelector\.select|_epoll\.poll|Connection\._recv|"
    r"Condition\.wait|Arbiter\.wait_for_signals|_worker|PollableMethodQueue\.defer|"
    r"AbstractConnection\.send_packed_command|Connection\._send|send_offset|write) "
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


class Spy:
    """A py-spy recording of a process tree, in py-spy's raw (collapsed) format."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--subprocesses", "--nonblocking", "--full-filenames", "--format", "raw",
             "--rate", str(rate), "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop recording and wait for the file."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)


def _package(frames: list[str]) -> str:
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        path = m.group("file") if m else frame
        for name, fragment in PACKAGES:
            if fragment in path:
                return name
    return "other (stdlib, C)"


def summarize(path: Path, top: int = 25, per: float | None = None) -> dict[str, Any]:
    """Return samples by package and the top inclusive functions of a raw recording,
    without the samples waiting in a socket, pipe, poller or lock (see WAITING); with `per`
    (samples per ms times jobs), also the ms per job of the samples kept."""
    packages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        m = _FRAME.match(frames[-1])
        if m is not None and WAITING.match(f"{m.group('func')} "):
            continue
        total += count
        packages[_package(frames)] += count
        seen = set()
        name = ""
        for frame in frames[1:]:  # the first is the process (or thread) name
            m = _FRAME.match(frame)
            name = frame if m is None else f"{m.group('func')} ({_short(m.group('file'))})"
            if name not in seen:
                seen.add(name)
                inclusive[name] += count
        leaves[name] += count
    return {
        "samples": total,
        "busy_ms_per_job": None if per is None else round(total / per, 2),
        "by_package_pct": {k: round(100 * v / total, 1) for k, v in packages.most_common()},
        # Frames below the event loops and pool bootstraps (under half of all samples).
        "top_inclusive_pct": {
            k: round(100 * v / total, 1)
            for k, v in [kv for kv in inclusive.most_common() if kv[1] < total / 2][:top]
        },
        "top_self_pct": {k: round(100 * v / total, 1) for k, v in leaves.most_common(20)},
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", f"{ROOT}/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


if __name__ == "__main__":
    print(json.dumps(summarize(Path(sys.argv[1])), indent=2))
