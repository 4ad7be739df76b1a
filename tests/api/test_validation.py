"""Request validation: bad input is a 422 problem naming the field, before any Redis call."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

BAD_REQUESTS = [
    ("/jobs/predict", {"ticker": 5}, "ticker"),
    ("/jobs/predict", {"ticker": "ACME", "horizon": 0}, "horizon"),
    ("/jobs/predict", {"ticker": "ACME", "horizon": "5"}, "horizon"),
    ("/jobs/predict", {"ticker": "ACME", "horizon": 1000}, "horizon"),
    ("/jobs/predict", {"ticker": "AC ME!"}, "ticker"),
    ("/jobs/predict", {"tickers": []}, "tickers"),
    ("/jobs/predict", {"prices": [1.0, 2.0]}, "prices"),
    ("/jobs/predict", {"prices": [100.0] * 50 + [-1.0]}, "prices.50"),
    ("/jobs/predict", {}, "(body)"),
    ("/jobs/predict", {"ticker": "A", "prices": [1.0] * 60}, "(body)"),
    ("/jobs/predict", {"ticker": "A", "colour": "red"}, "colour"),
    ("/jobs/predict", {"ticker": "A", "history": 0}, "history"),
    ("/jobs/predict", {"ticker": "A", "history": "60"}, "history"),
    ("/jobs/predict", {"prices": [1.0] * 60, "history": 5}, "(body)"),
    ("/jobs/segment", {"data": [[1.0, 2.0], [1.0]]}, "data"),
    ("/jobs/segment", {"data": [["x"]]}, "data.0.0"),
    ("/jobs/segment", {"tickers": ["A"], "data": [[1.0]]}, "(body)"),
    ("/jobs/retrain", {"models": ["forecast", "nonsense"]}, "models.1"),
    ("/jobs/retrain", {"models": []}, "models"),
    ("/predict_price", {"features": [1, 2, 3]}, "features"),
    ("/predict_price", {}, "features"),
    ("/segment", {"data": "no"}, "data"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_REQUESTS)
def test_bad_input_is_422_naming_the_field(
    client: FlaskClient, path: str, body: dict[str, object], field: str
) -> None:
    resp = client.post(path, json=body)
    assert resp.status_code == 422
    assert resp.mimetype == "application/problem+json"
    problem = resp.get_json()
    assert problem["status"] == 422
    assert {"type", "title", "detail"} <= set(problem)
    assert field in [e["field"] for e in problem["errors"]], problem


def test_body_must_be_a_json_object(client: FlaskClient) -> None:
    resp = client.post("/jobs/predict", json=[1, 2])
    assert resp.status_code == 422
    assert resp.mimetype == "application/problem+json"


def test_malformed_json_is_400(client: FlaskClient) -> None:
    resp = client.post("/jobs/predict", data="{nope", content_type="application/json")
    assert resp.status_code == 400
    assert resp.mimetype == "application/problem+json"


def test_non_json_body_is_415(client: FlaskClient) -> None:
    resp = client.post("/jobs/predict", data="ticker=A", content_type="text/plain")
    assert resp.status_code == 415
    assert resp.mimetype == "application/problem+json"


def test_unknown_job_type_and_route_are_404_problems(client: FlaskClient) -> None:
    for resp in (client.post("/jobs/explode", json={}), client.get("/nowhere")):
        assert resp.status_code == 404
        assert resp.mimetype == "application/problem+json"


def test_wrong_method_is_405_problem(client: FlaskClient) -> None:
    resp = client.get("/jobs/predict")
    assert resp.status_code == 405
    assert resp.mimetype == "application/problem+json"
    assert "POST" in resp.headers["Allow"]


def test_redis_down_is_503_with_retry_after(client: FlaskClient) -> None:
    resp = client.post("/jobs/predict", json={"ticker": "ACME"})
    assert resp.status_code == 503
    assert resp.mimetype == "application/problem+json"
    assert int(resp.headers["Retry-After"]) > 0
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503
    first = ready.get_json()["checks"][0]
    assert (first["name"], first["ok"]) == ("redis", False)


@pytest.mark.parametrize("cursor", ["1.05.2:" + "a" * 36, ".:" + "a" * 36, ".5:" + "b" * 36])
def test_a_malformed_cursor_is_422_not_500(client: FlaskClient, cursor: str) -> None:
    # Found by the fuzz test: these matched the old pattern and crashed float().
    resp = client.get("/jobs", query_string={"cursor": cursor})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == "cursor"
