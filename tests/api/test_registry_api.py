"""The registry over HTTP: listings, promotion and rollback, refusal of bad artifacts."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.conftest import Stack
from tests.jobs import run
from tests.registry_helpers import copy_version, flip_byte, listing, set_card, wait_listed

pytestmark = pytest.mark.integration


def _predict_version(client: FlaskClient, stack: Stack) -> str:
    record = run(client, "/jobs/predict", {"ticker": stack.tickers()[0], "horizon": 2})
    assert record["status"] == "succeeded", record["error"]
    return str(record["model_version"])


def test_models_are_listed_with_their_cards(client: FlaskClient) -> None:
    for name in ("forecast", "segment"):
        listing(client, name)
    resp = client.get("/models")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["signing"] == "hmac-sha256"
    by_name = {m["name"]: m for m in body["models"]}
    assert {"forecast", "segment"} <= set(by_name)
    assert by_name["forecast"]["current_card"]["version"] == by_name["forecast"]["current"]

    model = listing(client, "forecast")
    versions = [v["version"] for v in model["versions"]]
    assert versions == sorted(versions, reverse=True)  # newest first
    current = next(v for v in model["versions"] if v["current"])
    for field in ("created", "trained_through", "data_version", "params", "metrics",
                  "libraries", "sha256", "promoted", "reason"):  # fmt: skip
        assert field in current, field
    assert current["signed"] is True and "signature" not in current

    one = client.get(f"/models/forecast/{current['version']}")
    assert one.status_code == 200 and one.get_json()["sha256"] == current["sha256"]


def test_unknown_models_and_versions_are_404_and_bad_bodies_422(client: FlaskClient) -> None:
    listing(client, "forecast")
    for path in ("/models/nosuch", "/models/forecast/20000101T000000000000Z"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json"
    resp = client.post("/models/forecast/promote", json={"version": "20000101T000000000000Z"})
    assert resp.status_code == 404
    for body in ({}, {"version": "latest"}, {"version": 5}, {"version": "x", "extra": 1}):
        resp = client.post("/models/forecast/promote", json=body)
        assert resp.status_code == 422, (body, resp.get_json())
        assert resp.get_json()["errors"]
    assert (
        client.post(
            "/models/nosuch/promote", json={"version": "20000101T000000000000Z"}
        ).status_code
        == 404
    )  # noqa: E501


def test_promote_an_older_version_then_back(client: FlaskClient, stack: Stack) -> None:
    original = listing(client, "forecast")["current"]
    new = copy_version(stack.artifacts, "forecast")
    wait_listed(client, "forecast", new)
    try:
        resp = client.post("/models/forecast/promote", json={"version": new, "reason": "test"})
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert body["version"] == new and body["previous"] == original
        assert body["action"] == "promote" and body["promoted_by"].startswith("anonymous")
        # The promote answers once every worker serves the new version: no wait here.
        assert _predict_version(client, stack) == new

        resp = client.post("/models/forecast/promote", json={"version": original})
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["action"] == "rollback"
        assert _predict_version(client, stack) == original
        model = listing(client, "forecast")
        assert model["current"] == original
        latest = model["history"][0]
        assert latest["version"] == original and latest["previous"] == new
        assert latest["by"].startswith("anonymous") and latest["at"]
        assert model["history"][1]["version"] == new
    finally:
        client.post("/models/forecast/promote", json={"version": original})


@pytest.mark.parametrize("spoil", ["tampered", "truncated", "unsigned", "libraries"])
def test_a_bad_artifact_is_refused_and_the_current_one_keeps_serving(
    client: FlaskClient, stack: Stack, spoil: str
) -> None:
    original = listing(client, "forecast")["current"]
    # The card's signature covers name, version and sha256: spoiling the file or the
    # library versions leaves a validly signed card that still must be refused.
    new = copy_version(
        stack.artifacts, "forecast", **({"key": None} if spoil == "unsigned" else {})
    )
    path = stack.artifacts / "models" / "forecast" / new / "model.joblib"
    if spoil == "tampered":
        flip_byte(path)
    elif spoil == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif spoil == "libraries":
        set_card(stack.artifacts, "forecast", new, libraries={"sklearn": "0.20.0"})
    wait_listed(client, "forecast", new)
    resp = client.post("/models/forecast/promote", json={"version": new})
    assert resp.status_code == 409, resp.get_json()
    problem = resp.get_json()
    assert resp.mimetype == "application/problem+json"
    assert problem["error"]["type"] == "ArtifactError"
    expected = {
        "tampered": "sha256",
        "truncated": "sha256",
        "unsigned": "missing signature",
        "libraries": "library versions",
    }[spoil]
    assert expected in problem["detail"], problem
    assert listing(client, "forecast")["current"] == original
    assert _predict_version(client, stack) == original
