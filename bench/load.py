"""Load test: mixed predict / segment / poll traffic at a fixed rate for a few minutes, with
a retrain in the middle; errors, latencies and Redis memory at start and end.

Loopback only, stops by itself: `make load` (BENCH_ARGS="--rate 20 --seconds 120").
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.run import RESULTS, BenchStack, Http, machine, new_stack, summary
from mlstock.launcher import COMMANDS

MIX = (("predict", 0.7), ("segment", 0.2), ("poll", 0.1))


def redis_state(stack: BenchStack) -> dict[str, Any]:
    """Return Redis's key count and memory."""
    return {
        "keys": int(stack.redis.dbsize()),
        "used_mb": round(int(stack.redis.info("memory")["used_memory"]) / 2**20, 2),
    }


def final_status(http: Http, job_id: str, timeout: float) -> str:
    """Long-poll a job until it is final; its status, or why it is not known."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, record = http.call("GET", f"/result/{job_id}?wait=30")
        if status != 200:
            return f"http {status}"
        if record["status"] in ("succeeded", "failed", "cancelled"):
            return str(record["status"])
    return "not final"


def run_load(stack: BenchStack, http: Http, rate: float, seconds: float) -> dict[str, Any]:
    """Send requests on a fixed schedule (open loop) from a pool of threads."""
    catalog = json.loads(stack.redis.get("mlstock:catalog") or "{}")
    tickers = list(catalog["forecast"]["tickers"])
    lock = threading.Lock()
    codes: Counter[str] = Counter()
    latency: dict[str, list[float]] = {"predict": [], "segment": [], "poll": []}
    job_ids: list[str] = []
    retrain: dict[str, Any] = {}

    def one(kind: str) -> None:
        t0 = time.perf_counter()
        if kind == "poll":
            with lock:
                job_id = random.choice(job_ids) if job_ids else None
            if job_id is None:
                return
            status, _ = http.call("GET", f"/result/{job_id}")
        else:
            body: dict[str, Any] = (
                {"ticker": random.choice(tickers), "horizon": random.randint(1, 10)}
                if kind == "predict"
                else {"tickers": random.sample(tickers, 4)}
            )
            status, answer = http.call("POST", f"/jobs/{kind}", body)
            if status == 202:
                with lock:
                    job_ids.append(answer["job_id"])
        with lock:
            codes[f"{kind} {status}"] += 1
            latency[kind].append(time.perf_counter() - t0)

    start = time.perf_counter()
    threads: list[threading.Thread] = []
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        if i == n // 2:  # a retrain in the middle
            status, answer = http.call("POST", "/jobs/retrain", {})
            retrain = {"status": status, "job_id": answer.get("job_id")}
        kind = random.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        t = threading.Thread(target=one, args=(kind,), daemon=True)
        t.start()
        threads.append(t)
        threads = [t for t in threads if t.is_alive()]
    for t in threads:
        t.join(60)
    wall = time.perf_counter() - start
    # Every accepted job is answered (records outlive the load: RESULT_TTL > duration).
    final: Counter[str] = Counter(final_status(http, job_id, timeout=60) for job_id in job_ids)
    if retrain.get("job_id"):
        retrain["final"] = final_status(http, retrain["job_id"], timeout=900)
    errors = sum(v for k, v in codes.items() if not k.endswith((" 200", " 202", " 429", " 503")))
    return {
        "rate_per_s": rate,
        "seconds": round(wall, 1),
        "answers": dict(codes),
        "errors": errors,
        "jobs_accepted": len(job_ids),
        "jobs_final": dict(final),
        "latency": {k: summary(v) for k, v in latency.items() if v},
        "retrain": retrain,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the load test; print and write bench/results/load.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=20, help="requests per second")
    parser.add_argument("--seconds", type=float, default=120, help="duration of the load")
    parser.add_argument(
        "--result-ttl", type=int, default=180, help="RESULT_TTL of the stack (> --seconds)"
    )
    parser.add_argument("--artifacts", type=Path, help="a trained registry to copy and serve")
    args = parser.parse_args(argv)
    stack, http = new_stack("mlstock-load-", args.artifacts, args.result_ttl)
    root = stack.root
    result: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"artifacts": None}}
    try:
        stack.start_redis()
        for name in ("worker-training", "worker-inference", "api"):
            stack.start(name, COMMANDS[name])
        stack.wait_ready(http, timeout=900)
        time.sleep(5)
        result["redis_start"] = redis_state(stack)
        result["load"] = run_load(stack, http, args.rate, args.seconds)
        result["redis_end_of_load"] = redis_state(stack)
        time.sleep(args.result_ttl + 5)
        result["redis_after_retention"] = redis_state(stack)
    finally:
        stack.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
