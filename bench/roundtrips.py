"""Redis commands and round trips per job, by process and command: a count, not a timing.

Starts its own stack (as `make bench` does), then watches Redis with MONITOR while N predict
jobs run one after another through the API (`POST /jobs/predict`, `GET /result/<id>?wait`),
and while N bare no-op Celery tasks run (`send_task(...).get()`: the Celery floor). An idle
interval of the same stack is measured first and subtracted (heartbeats, kombu's polling).

A round trip is a run of one client's commands that Redis read back to back (less than
`GAP_US` apart, nothing of another client in between): a pipeline, or a command; the
commands a Lua script runs count with its EVALSHA. Redis's own `total_reads_processed` is
printed next to it as a check.

    python -m bench.roundtrips [--n 200] [--artifacts DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.run import NOOP_COMMAND, BenchStack, new_stack
from bench.spy import Spy, summarize
from mlstock.launcher import COMMANDS

#: Commands of one client closer than this (microseconds) came in one read: one round trip.
GAP_US = 40.0


class Monitor(threading.Thread):
    """Collect (time, client address, command name) of every command Redis runs."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.events: list[tuple[float, str, str]] = []
        self.stopped = threading.Event()
        self.started_ok = threading.Event()

    def run(self) -> None:
        """Read MONITOR until stopped."""
        with self.client.monitor() as mon:  # type: ignore[no-untyped-call]
            self.started_ok.set()
            for event in mon.listen():
                if self.stopped.is_set():
                    return
                if event["client_type"] == "lua":
                    address = "lua"
                else:
                    address = f"{event['client_address']}:{event['client_port']}"
                name = str(event["command"]).split(" ", 1)[0].strip('"').upper()
                self.events.append((float(event["time"]), address, name))

    def take(self) -> list[tuple[float, str, str]]:
        """Return the events collected so far and start afresh."""
        out, self.events = self.events, []
        return out


def owners(stack: BenchStack, redis_port: int) -> dict[str, str]:
    """Map each `host:port` connected to Redis to the stack process that holds it."""
    found: dict[str, str] = {}
    groups = {name: psutil.Process(proc.pid) for name, proc in stack.procs.items()}
    groups["bench client"] = psutil.Process()
    for name, root in groups.items():
        procs = [root, *root.children(recursive=True)] if name != "bench client" else [root]
        for proc in procs:
            try:
                conns = proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            for conn in conns:
                if conn.raddr and conn.raddr.port == redis_port:
                    found[f"{conn.laddr.ip}:{conn.laddr.port}"] = name
    return found


def tally(
    events: list[tuple[float, str, str]], who: dict[str, str]
) -> tuple[collections.Counter[tuple[str, str]], collections.Counter[str]]:
    """Count commands by (process, command) and round trips by process."""
    commands: collections.Counter[tuple[str, str]] = collections.Counter()
    trips: collections.Counter[str] = collections.Counter()
    last_client, last_time, caller = "", 0.0, "?"
    for at, address, name in events:
        if address == "lua":
            commands[(caller, f"(lua) {name}")] += 1
            continue
        owner = who.get(address, "other")
        caller = owner
        commands[(owner, name)] += 1
        if address != last_client or (at - last_time) * 1e6 > GAP_US:
            trips[owner] += 1
        last_client, last_time = address, at
    return commands, trips


def cpu_seconds(stack: BenchStack) -> dict[str, float]:
    """Return the CPU seconds (user + system) each stack process and its children used."""
    out: dict[str, float] = {}
    for name, proc in stack.procs.items():
        root = psutil.Process(proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        out[name] = total
    return out


def measure(
    mon: Monitor, stack: BenchStack, run: Any, n: int, idle: dict[str, Any]
) -> dict[str, Any]:
    """Run `run()` n times; return per-run commands and round trips, idle subtracted."""
    reads0 = int(stack.redis.info("stats")["total_reads_processed"])
    cpu0 = cpu_seconds(stack)
    mon.take()
    t0 = time.monotonic()
    for _ in range(n):
        run()
    seconds = time.monotonic() - t0
    time.sleep(0.2)  # the last job's postrun writes
    cpu1 = cpu_seconds(stack)
    events = mon.take()
    reads = int(stack.redis.info("stats")["total_reads_processed"]) - reads0 - 1
    who = owners(stack, stack.redis_port)
    commands, trips = tally(events, who)
    scale = seconds / idle["seconds"]
    per_cmd: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for (owner, name), count in commands.items():
        base = idle["commands"].get((owner, name), 0) * scale
        value = (count - base) / n
        if abs(value) >= 0.05:
            per_cmd[owner][name] = round(value, 2)
    per_trips = {
        owner: round((count - idle["trips"].get(owner, 0) * scale) / n, 2)
        for owner, count in trips.items()
    }
    idle_reads = idle["reads"] * scale
    cpu_ms = {
        name: round(1000 * (cpu1[name] - cpu0[name] - idle["cpu"][name] * scale) / n, 2)
        for name in cpu1
    }
    return {
        "cpu_ms_per_job": cpu_ms,
        "n": n,
        "seconds": round(seconds, 2),
        "round_trips_per_job": per_trips,
        "round_trips_total": round(sum(per_trips.values()), 2),
        "redis_reads_per_job": round((reads - idle_reads) / n, 2),
        "commands_per_job": {k: dict(sorted(v.items())) for k, v in sorted(per_cmd.items())},
        "commands_total": round(
            sum(v for cmds in per_cmd.values() for k, v in cmds.items() if "(lua)" not in k),
            2,
        ),
    }


def profile(
    stack: BenchStack, names: tuple[str, ...], run: Any, n: int, where: Path
) -> dict[str, Any]:
    """Run `run()` n times under py-spy on the named processes; summarize each."""
    rate = 200
    spies = {name: Spy(stack.procs[name].pid, where / f"{name}.txt", rate) for name in names}
    time.sleep(1.0)  # py-spy attaches
    for _ in range(n):
        run()
    time.sleep(0.2)
    out = {}
    for name, spy in spies.items():
        spy.stop()
        out[name] = summarize(spy.out, per=rate / 1000 * n)
    return out


def main(argv: list[str] | None = None) -> int:
    """Count, print and optionally write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle baseline")
    parser.add_argument("--artifacts", type=Path, help="a trained registry to copy and serve")
    parser.add_argument("--keep-artifacts", type=Path, help="copy the trained registry here")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--profile", type=Path, help="also py-spy the processes; raw files here")
    args = parser.parse_args(argv)

    stack, http = new_stack("mlstock-rt-", args.artifacts, 3600)
    out: dict[str, Any] = {}
    try:
        stack.start_redis()
        for name in ("worker-training", "worker-inference", "api"):
            stack.start(name, COMMANDS[name])
        stack.start("worker-noop", NOOP_COMMAND)
        stack.wait_ready(http, timeout=900)
        if args.keep_artifacts is not None:
            for part in ("models", "datasets"):
                shutil.copytree(
                    stack.artifacts / part, args.keep_artifacts / part, dirs_exist_ok=True
                )
        catalog = json.loads(stack.redis.get("mlstock:catalog") or "{}")
        body = {"ticker": catalog["forecast"]["tickers"][0], "horizon": 5}
        from bench.noop_app import TASK_NOOP, create_noop_celery

        app = create_noop_celery(stack.settings())
        for _ in range(20):  # warm up: every pool child loads its models, connections open
            http.job("/jobs/predict", body)
            app.send_task(TASK_NOOP).get(timeout=30)

        mon = Monitor(redis.Redis.from_url(stack.redis_url))
        mon.start()
        mon.started_ok.wait(10)
        time.sleep(0.5)
        mon.take()
        reads0 = int(stack.redis.info("stats")["total_reads_processed"])
        cpu0 = cpu_seconds(stack)
        time.sleep(args.idle)
        cpu1 = cpu_seconds(stack)
        commands, trips = tally(mon.take(), owners(stack, stack.redis_port))
        idle = {
            "seconds": args.idle,
            "commands": commands,
            "trips": trips,
            "cpu": {k: cpu1[k] - cpu0[k] for k in cpu1},
            "reads": int(stack.redis.info("stats")["total_reads_processed"]) - reads0 - 1,
        }
        out["predict"] = measure(mon, stack, lambda: http.job("/jobs/predict", body), args.n, idle)
        out["celery_floor"] = measure(
            mon, stack, lambda: app.send_task(TASK_NOOP).get(timeout=30), args.n, idle
        )
        mon.stopped.set()
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            out["profile"] = {
                "predict": profile(
                    stack,
                    ("api", "worker-inference"),
                    lambda: http.job("/jobs/predict", body),
                    args.n,
                    args.profile,
                ),
                "celery_floor": profile(
                    stack,
                    ("worker-noop",),
                    lambda: app.send_task(TASK_NOOP).get(timeout=30),
                    args.n,
                    args.profile,
                ),
            }
    finally:
        # The no-op task's results unsubscribe when collected: while Redis is still up.
        gc.collect()
        stack.stop_all()
        shutil.rmtree(stack.root, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
