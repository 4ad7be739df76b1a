"""`GET /openapi.json` describes every route, from the same models that validate and build
the bodies; `GET /docs` serves Swagger UI from the package."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.auth import PUBLIC_ENDPOINTS
from api.openapi import OPERATIONS, build_spec
from api.schemas import JobRecord
from tests.conftest import Stack
from worker.config import Settings
from worker.contract import PredictRequest

NO_REDIS = "redis://127.0.0.1:1/0"
METHODS = {"get", "post", "delete", "put", "patch"}


def _spec(client: FlaskClient) -> dict[str, Any]:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body: dict[str, Any] = resp.get_json()
    return body


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in spec["paths"].items() for m, op in item.items()
            if m in METHODS]  # fmt: skip


def test_the_description_is_valid_openapi_3_1(client: FlaskClient) -> None:
    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    spec = _spec(client)
    assert spec["openapi"].startswith("3.1")
    definitions.OPENAPI_31_VALIDATOR.validate(spec)
    # Every reference names a component that exists.
    text = json.dumps(spec)
    for name in re.findall(r'"#/components/schemas/([^"]+)"', text):
        assert name in spec["components"]["schemas"], name
    ids = [op["operationId"] for _, _, op in _operations(spec)]
    assert len(ids) == len(set(ids))


def test_every_route_is_described_and_no_more(app: Flask, client: FlaskClient) -> None:
    spec = _spec(client)
    described = {(m.upper(), p) for m, p, _ in _operations(spec)}
    for rule in app.url_map.iter_rules():
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            if rule.endpoint == "api.create_job":  # one operation per job type
                assert {(method, f"/jobs/{t}") for t in ("predict", "segment", "retrain")} <= (
                    described
                )
            else:
                assert (method, path) in described, (method, path)
    assert len(described) == sum(len(ops) for ops in OPERATIONS.values())


def test_a_route_without_a_description_fails_the_build() -> None:
    app = create_app(Settings(redis_url=NO_REDIS))
    app.add_url_rule("/undocumented", "undocumented", lambda: "x")
    with pytest.raises(LookupError, match="undocumented"):
        build_spec(app)


def test_errors_are_problems_and_auth_follows_the_roles(client: FlaskClient) -> None:
    spec = _spec(client)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["Bearer"]["scheme"] == "bearer"
    public_paths = {"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/"}
    for method, path, op in _operations(spec):
        responses = op["responses"]
        for status, answer in responses.items():
            if int(status) >= 400 and not (path == "/ready" and status == "503"):
                assert answer["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (method, path, status)
        if path in public_paths:
            assert op["security"] == [] and "401" not in responses
            continue
        if op.get("security") == []:  # the dashboard's pages and static files
            continue
        assert {"401", "429", "503"} <= set(responses), (method, path)
        assert ("403" in responses) == (method != "get"), (method, path)
        assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
        if "requestBody" in op:
            assert "413" in responses and "415" in responses and "422" in responses
    assert {"openapi.spec", "openapi.docs"} <= PUBLIC_ENDPOINTS


def test_request_schemas_come_from_the_validating_models(client: FlaskClient) -> None:
    spec = _spec(client)
    body = spec["paths"]["/jobs/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    described = spec["components"]["schemas"]["PredictRequest"]
    assert set(described["properties"]) == set(PredictRequest.model_fields)
    assert described["additionalProperties"] is False
    upload = spec["paths"]["/datasets"]["post"]["requestBody"]["content"]
    assert {"text/csv", "multipart/form-data"} <= set(upload)


def test_docs_are_served_from_the_package(client: FlaskClient) -> None:
    resp = client.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert "//" not in re.sub(r"<!doctype[^>]*>", "", html).replace("://", "")
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 3 and all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200 and len(got.data) > 100, asset
        got.close()


@pytest.mark.integration
def test_real_records_and_listings_match_their_schemas(stack: Stack) -> None:
    client = create_app(stack.settings()).test_client()
    catalog = redis.Redis.from_url(stack.redis_url).get("mlstock:catalog")
    tickers = json.loads(catalog or "{}")["forecast"]["tickers"]
    resp = client.post("/jobs/predict", json={"ticker": tickers[0], "horizon": 2},
                       headers={"Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
    assert resp.status_code == 202
    record = client.get(resp.headers["Location"] + "?wait=30").get_json()
    assert record["status"] == "succeeded"
    assert JobRecord.model_validate(record).result["horizon"] == 2
    listed = client.get("/jobs?limit=5").get_json()
    assert any(j["job_id"] == record["job_id"] for j in listed["jobs"])
