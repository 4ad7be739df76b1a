"""Datasets over HTTP: upload, validation with every problem, versions, activation, and
the real data end to end (import, retrain, predict AAPL)."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import REAL_DATA
from tests.jobs import check_steps, run, wait
from tests.registry_helpers import listing, wait_listed

pytestmark = pytest.mark.integration


def _datasets(client: FlaskClient, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get("/datasets")
        if resp.status_code == 200 and resp.get_json()["datasets"]:
            data: dict[str, Any] = resp.get_json()
            return data
        assert time.monotonic() < deadline, resp.get_json()
        time.sleep(0.5)


def _finish(client: FlaskClient, resp: Any) -> dict[str, Any]:
    """Return the outcome of an admin call, polling if it answered 202."""
    if resp.status_code == 202:
        record = wait(client, resp.get_json()["job_id"])
        assert record["status"] == "succeeded", record
        return {"job_id": record["job_id"], **record["result"]}
    assert resp.status_code == 200, resp.get_json()
    data: dict[str, Any] = resp.get_json()
    return data


def _csv(rows: list[str], header: str = "date,ticker,close") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def _series(ticker: str, n: int = 300, start: float = 50.0) -> list[str]:
    import pandas as pd

    days = pd.bdate_range("2024-01-01", periods=n)
    return [f"{d.date()},{ticker},{start * (1.001**i):.4f}" for i, d in enumerate(days)]


def test_a_bad_file_is_refused_with_every_problem_and_changes_nothing(
    client: FlaskClient,
) -> None:
    before = _datasets(client)
    rows = _series("GOOD") + _series("BAD")
    rows[10] = rows[10].rsplit(",", 1)[0] + ",-3.5"  # a negative price (line 12)
    rows.append(rows[20])  # a duplicate row
    rows.append("not-a-date,GOOD,10")
    resp = client.post("/datasets", data=_csv(rows), content_type="text/csv")
    assert resp.status_code == 422, resp.get_json()
    problem = resp.get_json()
    assert resp.mimetype == "application/problem+json"
    text = " | ".join(problem["problems"])
    assert "non-positive close on line 12" in text
    assert "duplicate (date, ticker) rows on lines 22" in text
    assert "unparsable or missing date" in text
    record = client.get(problem["status_url"]).get_json()
    assert record["status"] == "failed" and record["problems"] == problem["problems"]

    resp = client.post("/datasets", data=_csv(_series("X"), header="date,ticker,price"),
                       content_type="text/csv")  # fmt: skip
    assert resp.status_code == 422
    assert resp.get_json()["problems"] == ["missing required column(s): close"]

    weekly = [r for i, r in enumerate(_series("WKLY", 600)) if i % 5 == 0]
    resp = client.post("/datasets", data=_csv(_series("DAY") + weekly), content_type="text/csv")
    assert resp.status_code == 422
    assert "ticker WKLY: median gap 7 days" in resp.get_json()["problems"][0]

    for body, ctype in ((b"", "text/csv"), (b"\x1f\x8b\x08broken", "application/gzip")):
        resp = client.post("/datasets", data=body, content_type=ctype)
        assert resp.status_code == 422, resp.get_json()
    assert client.post("/datasets", json={"a": 1}).status_code == 415
    assert _datasets(client) == before


def test_multipart_upload_versions_by_content(client: FlaskClient) -> None:
    before = _datasets(client)
    body = _csv(_series("MPA") + _series("MPB", start=20.0))
    resp = client.post(
        "/datasets?activate=false",
        data={"file": (io.BytesIO(body), "mine.csv")},
        content_type="multipart/form-data",
    )
    first = _finish(client, resp)
    assert first["new"] is True and first["active"] is False
    version = first["version"]
    again = _finish(
        client,
        client.post("/datasets?activate=false", data=body, content_type="text/csv"),
    )
    assert again["version"] == version and again["new"] is False
    # Appending newer rows of known tickers makes a new version.
    longer = _csv(_series("MPA", 310) + _series("MPB", 310, start=20.0))
    appended = _finish(
        client, client.post("/datasets?activate=false", data=longer, content_type="text/csv")
    )
    assert appended["version"] != version and appended["new"] is True

    listing_ = _datasets(client)
    assert listing_["active"] == before["active"]
    one = client.get(f"/datasets/{version}").get_json()
    assert one["tickers"] == ["MPA", "MPB"] and one["rows"] == 600 and one["problems"] == []
    assert one["start"] == "2024-01-01" and one["active"] is False
    assert client.get("/datasets/0123456789abcdef").status_code == 404
    assert client.get("/datasets/nothex").status_code == 422
    assert client.post("/datasets/0123456789abcdef/activate").status_code == 404


def test_real_data_import_retrain_predict_aapl(client: FlaskClient) -> None:
    model = listing(client, "forecast")
    original_forecast = model["current"]
    # With no active dataset training uses the synthetic market, stored as a dataset too.
    trained_on = next(v for v in model["versions"] if v["current"])["data_version"]
    resp = client.post("/datasets", data=REAL_DATA.read_bytes(), content_type="application/gzip")
    imported = _finish(client, resp)
    version = imported["version"]
    try:
        assert imported["active"] is True
        meta = imported["dataset"]
        assert {"AAPL", "MSFT", "IBM"} <= set(meta["tickers"]) and meta["rows"] == 12154
        assert _datasets(client)["active"] == version

        retrain = run(client, "/jobs/retrain", {"models": ["forecast"]}, timeout=600)
        assert retrain["status"] == "succeeded", retrain["error"]
        assert retrain["result"]["data_version"] == version
        outcome = retrain["result"]["models"]["forecast"]
        new = outcome["version"]
        wait_listed(client, "forecast", new)
        # A champion trained on other data is no yardstick: the first-model checks apply.
        assert outcome["promoted"] is True, outcome["reason"]
        assert outcome["reason"].startswith(f"trained on new data ({version}"), outcome["reason"]
        time.sleep(1.1)  # the workers' pointer check interval
        record = run(client, "/jobs/predict", {"ticker": "AAPL", "horizon": 5})
        assert record["status"] == "succeeded", record["error"]
        [forecast] = record["result"]["forecasts"]
        assert forecast["ticker"] == "AAPL" and forecast["last_date"] == "2013-03-01"
        assert record["model_version"] == new
        check_steps(forecast["steps"], 5)
    finally:
        # Later tests expect the synthetic market: put the service back as it was.
        _finish(client, client.post(f"/datasets/{trained_on}/activate"))
        _finish(
            client, client.post("/models/forecast/promote", json={"version": original_forecast})
        )
