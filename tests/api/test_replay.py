"""Point-in-time replay: a forecast `as_of` a past day uses a model that saw no later price
when the registry holds one, and says which model and cut-off it used either way."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.jobs import run
from tests.registry_helpers import listing

pytestmark = pytest.mark.integration

THROUGH = "2025-09-30"


def _predict(client: FlaskClient, ticker: str, as_of: str | None) -> dict[str, object]:
    body: dict[str, object] = {"ticker": ticker, "horizon": 3}
    if as_of is not None:
        body["as_of"] = as_of
    record = run(client, "/jobs/predict", body)
    assert record["status"] == "succeeded", record["error"]
    return record


def test_a_replay_uses_the_model_trained_through_as_of(client: FlaskClient) -> None:
    current = listing(client, "forecast")["current"]
    retrain = run(client, "/jobs/retrain", {"models": ["forecast"], "through": THROUGH})
    assert retrain["status"] == "succeeded", retrain["error"]
    outcome = retrain["result"]["models"]["forecast"]
    assert outcome["promoted"] is False
    assert "point-in-time" in outcome["reason"]
    cut = outcome["version"]
    assert listing(client, "forecast")["current"] == current  # still serving the champion

    ticker = run(client, "/jobs/segment", {})["result"]["assignments"][0]["ticker"]

    replay = _predict(client, ticker, "2025-10-15")
    result = replay["result"]
    assert replay["model_version"] == result["model_version"] == cut
    assert result["trained_through"] == THROUGH
    assert result["point_in_time"] is True
    assert result["forecasts"][0]["last_date"] == "2025-10-15"

    # Before every model's cut-off: the current model serves it, and the result says so.
    early = _predict(client, ticker, "2025-09-15")
    assert early["model_version"] == current
    assert early["result"]["trained_through"] > "2025-09-15"
    assert early["result"]["point_in_time"] is False

    # Without as_of nothing changes: the champion serves the latest data.
    latest = _predict(client, ticker, None)
    assert latest["model_version"] == current
    assert "point_in_time" not in latest["result"]


def test_a_cut_off_must_be_a_date_within_the_data(client: FlaskClient) -> None:
    for through in ("yesterday", "2025-13-01", 20250930):
        resp = client.post("/jobs/retrain", json={"models": ["forecast"], "through": through})
        assert resp.status_code == 422, (through, resp.get_json())
        assert resp.mimetype == "application/problem+json"
    record = run(client, "/jobs/retrain", {"models": ["forecast"], "through": "1990-01-02"})
    assert record["status"] == "failed"
    assert "no prices through 1990-01-02" in record["error"]["message"]
