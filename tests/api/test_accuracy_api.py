"""The realized-accuracy ledger end to end: forecasts served by the workers are recorded,
an import of later prices scores them, and `GET /models/forecast/accuracy` reports it.

This module runs its own Redis and workers over a copy of the session's registry: the
import becomes the active dataset, and the ledger must hold only this test's forecasts.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flask.testing import FlaskClient

from api import create_app
from ml.registry import DatasetStore
from mlstock.launcher import COMMANDS
from tests.conftest import Stack
from tests.jobs import run, wait
from tests.procs import served_catalog, service_env, start, start_redis, stop

pytestmark = pytest.mark.integration
NEW_DAYS = 4  # business days of later prices the import brings


class Own:
    """This module's stack: Redis, an inference and a training worker, and an API client."""

    def __init__(self, root: Path, artifacts: Path, url: str, client: FlaskClient) -> None:
        self.root, self.artifacts, self.url, self.client = root, artifacts, url, client
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def catalog(self) -> dict[str, Any]:
        """Return the served models the workers announced."""
        return served_catalog(self.url)


@pytest.fixture(scope="module")
def own(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    root = tmp_path_factory.mktemp("accuracy")
    artifacts = root / "artifacts"
    for part in ("models", "datasets"):
        shutil.copytree(stack.artifacts / part, artifacts / part)
    redis_proc, url = start_redis(root)
    app = create_app(stack.settings(redis_url=url, artifacts_dir=artifacts))
    st = Own(root, artifacts, url, app.test_client())
    try:
        env = service_env(url, artifacts, RETRAIN_SCHEDULE="")
        for name in ("worker-inference", "worker-training"):
            st.procs[name] = start(COMMANDS[name], env, root / f"{name}.log")
        deadline = time.monotonic() + 120
        while "forecast" not in st.catalog():
            assert time.monotonic() < deadline, (root / "worker-inference.log").read_text()
            time.sleep(0.3)
        yield st
    finally:
        for proc in st.procs.values():
            stop(proc)
        stop(redis_proc)


def _accuracy(client: FlaskClient) -> dict[str, Any]:
    resp = client.get("/models/forecast/accuracy")
    assert resp.status_code == 200, resp.get_json()
    data: dict[str, Any] = resp.get_json()
    return data


def _recorded(client: FlaskClient, expected: int, timeout: float = 60) -> dict[str, Any]:
    """Wait until the workers have written `expected` forecast steps to the ledger."""
    deadline = time.monotonic() + timeout
    while True:
        report = _accuracy(client)
        if sum(e["recorded"] for e in report["ledger"]) >= expected:
            return report
        assert time.monotonic() < deadline, report
        time.sleep(0.5)


def _predict(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    record = run(client, "/jobs/predict", body)
    assert record["status"] == "succeeded", record["error"]
    result: dict[str, Any] = record["result"]
    return result


def _later_prices(served: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """Return `served` with NEW_DAYS more business days per ticker: a random walk with
    about the market's daily volatility from each last close."""
    rng = np.random.default_rng(seed)
    end = served["date"].max()
    days = pd.bdate_range(end + pd.offsets.BDay(1), periods=NEW_DAYS)
    rows = []
    for ticker, group in served.groupby("ticker"):
        last = float(group.sort_values("date")["close"].iloc[-1])
        walk = last * np.exp(np.cumsum(rng.normal(0, 0.015, NEW_DAYS)))
        rows += [
            {"date": d, "ticker": ticker, "close": round(c, 4)}
            for d, c in zip(days, walk, strict=True)
        ]
    return pd.concat([served[["date", "ticker", "close"]], pd.DataFrame(rows)], ignore_index=True)


def _expected(forecasts: list[dict[str, Any]], prices: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """Score the forecasts we got back independently: per step n, MASE, naive MASE and
    coverage, with each ticker's scale from its closes up to the forecast's last date."""
    closes = {(r.ticker, r.date.date().isoformat()): r.close for r in prices.itertuples()}
    cells: dict[int, list[tuple[float, float, bool, bool]]] = {}
    seen = set()
    for forecast in forecasts:
        ticker, as_of = forecast["ticker"], forecast["last_date"]
        history = prices[(prices["ticker"] == ticker) & (prices["date"] <= as_of)]
        scale = history.sort_values("date")["close"].diff().abs().mean()
        for s in forecast["steps"]:
            actual = closes.get((ticker, s["date"]))
            if actual is None or (ticker, s["step"]) in seen:
                continue
            seen.add((ticker, s["step"]))
            cells.setdefault(s["step"], []).append(
                (
                    abs(s["close"] - actual) / scale,
                    abs(forecast["last_close"] - actual) / scale,
                    s["lower_80"] <= actual <= s["upper_80"],
                    s["lower_95"] <= actual <= s["upper_95"],
                )
            )
    return {
        step: {
            "n": len(cell),
            "mase": float(np.mean([c[0] for c in cell])),
            "naive_mase": float(np.mean([c[1] for c in cell])),
            "coverage_80": float(np.mean([c[2] for c in cell])),
            "coverage_95": float(np.mean([c[3] for c in cell])),
        }
        for step, cell in cells.items()
    }


def test_models_without_a_ledger_are_404(own: Own) -> None:
    for name in ("segment", "nope"):
        resp = own.client.get(f"/models/{name}/accuracy")
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json"
    assert "only forecasts" in own.client.get("/models/segment/accuracy").get_json()["detail"]


def test_forecasts_served_before_an_import_of_later_prices_are_scored(own: Own) -> None:
    client = own.client
    empty = _accuracy(client)
    assert empty["computed_at"] is None and empty["versions"] == [] and empty["ledger"] == []
    assert "not computed yet" in empty["detail"]

    tickers = own.catalog()["forecast"]["tickers"][:4]
    # Not ledgered: an ad-hoc series, and a replay of the past.
    _predict(client, {"prices": [100.0 + i for i in range(60)], "horizon": 3})
    _predict(client, {"ticker": tickers[0], "horizon": 3, "as_of": "2025-06-30"})
    first = _predict(client, {"tickers": tickers[:3], "horizon": 5})
    again = _predict(client, {"tickers": tickers[:3], "horizon": 5})  # recorded once
    longer = _predict(client, {"ticker": tickers[0], "horizon": 8})  # steps 6..8 are new
    short = _predict(client, {"ticker": tickers[3], "horizon": 2})
    assert again["forecasts"] == first["forecasts"]
    version = first["model_version"]
    assert {r["model_version"] for r in (first, longer, short)} == {version}
    recorded = 8 + 5 + 5 + 2  # distinct (ticker, step) pairs served
    ledger = _recorded(client, recorded)["ledger"]
    assert [(e["model_version"], e["recorded"]) for e in ledger] == [(version, recorded)]

    served = DatasetStore(own.artifacts).load(first["data_version"])
    prices = _later_prices(served)
    body = io.BytesIO()
    prices.to_csv(body, index=False, date_format="%Y-%m-%d")
    resp = client.post("/datasets", data=body.getvalue(), content_type="text/csv")
    if resp.status_code == 202:
        assert wait(client, resp.get_json()["job_id"])["status"] == "succeeded"
        imported = client.get(resp.get_json()["status_url"]).get_json()["result"]
    else:
        assert resp.status_code == 200, resp.get_json()
        imported = resp.get_json()
    assert imported["active"] is True

    report = _accuracy(client)
    assert report["data_version"] == imported["version"] and report["computed_at"]
    assert report["actuals_through"] == prices["date"].max().date().isoformat()
    [entry] = report["versions"]
    # Steps 1..4 of each ticker have a close now; tickers[3] was served 2 steps only.
    covered = 3 * NEW_DAYS + 2
    assert entry["model_version"] == version and entry["recorded"] == recorded
    assert (entry["scored"], entry["pending"], entry["no_close"]) == (
        covered,
        recorded - covered,
        0,
    )
    assert entry["overall"]["n"] == covered

    forecasts = first["forecasts"] + longer["forecasts"] + short["forecasts"]
    expected = _expected(forecasts, prices)
    assert sorted(expected) == [s["step"] for s in entry["steps"]] == list(range(1, NEW_DAYS + 1))
    for got in entry["steps"]:
        want = expected[got["step"]]
        assert got["n"] == want["n"]
        for figure in ("mase", "naive_mase", "coverage_80", "coverage_95"):
            assert got[figure] == pytest.approx(want[figure], rel=1e-9), (figure, got)
        assert got["relative_mase"] == pytest.approx(want["mase"] / want["naive_mase"])
    print("\naccuracy report:", json.dumps(report, indent=1))

    # Activating the served dataset again scores against it: nothing there is later.
    resp = client.post(f"/datasets/{first['data_version']}/activate")
    if resp.status_code == 202:
        assert wait(client, resp.get_json()["job_id"])["status"] == "succeeded"
    else:
        assert resp.status_code == 200, resp.get_json()
    after = _accuracy(client)
    assert after["data_version"] == first["data_version"]
    assert [(v["scored"], v["pending"]) for v in after["versions"]] == [(0, recorded)]


def test_a_stopping_worker_writes_what_it_has_not_yet(own: Own) -> None:
    """Runs last: it stops this module's inference worker."""
    client = own.client
    before = sum(e["recorded"] for e in _accuracy(client)["ledger"])
    ticker = own.catalog()["forecast"]["tickers"][-1]
    _predict(client, {"ticker": ticker, "horizon": 3})
    stop(own.procs["worker-inference"])  # sooner than its next periodic write
    assert sum(e["recorded"] for e in _accuracy(client)["ledger"]) == before + 3
