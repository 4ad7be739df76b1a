"""The `mlstock` client commands, run as processes against a real API and workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlstock.launcher import free_port
from tests.conftest import Stack
from tests.served import Served, api_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
MLSTOCK = str(Path(sys.executable).parent / "mlstock")


def cli(url: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLSTOCK_URL": url}
    env.pop("MLSTOCK_API_KEY", None)
    return subprocess.run(
        [MLSTOCK, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_predict_wait_prints_a_table(api_server: Served, stack: Stack) -> None:  # noqa: F811
    ticker = stack.tickers()[0]
    out = cli(api_server.url, "predict", ticker, "--horizon", "5", "--wait")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ticker", "step", "date", "close", "lower_80", "upper_80",
                                "lower_95", "upper_95"]  # fmt: skip
    rows = [line.split() for line in lines[1:6]]
    assert [r[0] for r in rows] == [ticker] * 5 and [r[1] for r in rows] == list("12345")
    for r in rows:
        lo95, lo80, close, hi80, hi95 = (float(r[i]) for i in (6, 4, 3, 5, 7))
        assert lo95 <= lo80 <= close <= hi80 <= hi95
    assert lines[6].startswith("model ")


def test_json_output_and_the_other_commands(api_server: Served, stack: Stack) -> None:  # noqa: F811
    ticker = stack.tickers()[1]
    out = cli(api_server.url, "predict", ticker, "--json")
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["job_id"]
    out = cli(api_server.url, "result", job_id, "--wait", "30", "--json")
    record = json.loads(out.stdout)
    assert record["status"] == "succeeded" and record["job_id"] == job_id
    out = cli(api_server.url, "result", job_id)
    assert out.returncode == 0 and f"job {job_id} predict: succeeded" in out.stdout
    out = cli(api_server.url, "jobs", "--type", "predict", "--limit", "50")
    assert out.returncode == 0 and job_id in out.stdout
    assert out.stdout.splitlines()[0].split()[:3] == ["job_id", "type", "status"]
    listing = json.loads(cli(api_server.url, "jobs", "--json").stdout)
    assert job_id in [j["job_id"] for j in listing["jobs"]]
    out = cli(api_server.url, "segment", ticker, "--wait")
    assert out.returncode == 0 and ticker in out.stdout


def test_retrain_wait_shows_progress_that_moves(api_server: Served) -> None:  # noqa: F811
    out = cli(api_server.url, "retrain", "--model", "forecast", "--wait", timeout=600)
    assert out.returncode == 0, out.stderr
    # Without a terminal the bar is one line per change of progress or stage.
    steps = [line for line in out.stdout.splitlines() if "%" in line.split("  ")[0]]
    percents = {line.split()[0] for line in steps}
    assert len(percents) >= 3, out.stdout
    assert steps[-1].split()[0] == "100%"
    assert "forecast" in out.stdout.splitlines()[-1]


def test_errors_are_one_line_and_exit_1(api_server: Served, stack: Stack) -> None:  # noqa: F811
    cases = [
        (api_server.url, ["predict", "NO_SUCH", "--wait"], "error: invalid request: ticker:"),
        (api_server.url, ["result", "nope"], "error: 404 Job not found"),
        (api_server.url, ["predict", stack.tickers()[0], "--horizon", "0"],
         "error: invalid request: horizon:"),
        (f"http://127.0.0.1:{free_port()}", ["jobs"], "error: cannot reach"),
    ]  # fmt: skip
    for url, args, start in cases:
        out = cli(url, *args)
        assert out.returncode == 1, (args, out)
        assert out.stderr.startswith(start) and len(out.stderr.splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr
    out = cli(api_server.url, "predict", "X", "--horizon", "many")
    assert out.returncode == 2 and "Traceback" not in out.stderr  # click's usage error


def test_accuracy_lists_the_ledger_of_served_forecasts(api_server: Served, stack: Stack) -> None:  # noqa: F811
    out = cli(api_server.url, "predict", stack.tickers()[2], "--horizon", "3", "--json")
    job_id = json.loads(out.stdout)["job_id"]
    record = json.loads(cli(api_server.url, "result", job_id, "--wait", "30", "--json").stdout)
    version = record["model_version"]
    deadline = time.monotonic() + 60
    while True:  # the worker writes its ledger every few seconds
        report = json.loads(cli(api_server.url, "accuracy", "--json").stdout)
        if version in [e["model_version"] for e in report["ledger"]]:
            break
        assert time.monotonic() < deadline, report
        time.sleep(1)
    out = cli(api_server.url, "accuracy")
    assert out.returncode == 0, out.stderr
    assert f"ledger: {version} holds " in out.stdout
