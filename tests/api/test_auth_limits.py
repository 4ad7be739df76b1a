"""API keys and roles (401/403), body size (413), rate limits (429), queue depth (503)."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid

import pytest
import redis
from flask.testing import FlaskClient

from api import create_app
from api.auth import check_bind
from tests.conftest import Stack
from worker.config import Settings

NO_REDIS = "redis://127.0.0.1:1/0"
KEYS = "r-key-1:read,s-key-2:submit,a-key-3:admin"
PREDICT = {"ticker": "TEC01", "horizon": 99}  # valid shape, refused by validation (422)


def _client(**overrides: object) -> FlaskClient:
    conf = {"redis_url": NO_REDIS, "api_keys": KEYS, **overrides}
    return create_app(Settings(**conf)).test_client()  # type: ignore[arg-type]


def test_missing_or_wrong_key_is_401_problem() -> None:
    client = _client()
    for headers in ({}, {"X-API-Key": "nope"}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic r-key-1"}):  # fmt: skip
        resp = client.get("/models", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.mimetype == "application/problem+json"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/health").status_code == 200  # probes stay open


def test_roles_read_submit_admin() -> None:
    client = _client()

    def status(method: str, path: str, key: str, **kw: object) -> int:
        return int(client.open(path, method=method, headers={"X-API-Key": key}, **kw).status_code)

    # read: GETs only (503: this app has no Redis, so it got past the key check).
    assert status("GET", "/models", "r-key-1") == 503
    assert status("POST", "/jobs/predict", "r-key-1", json=PREDICT) == 403
    # submit: predict and segment, not retrain, datasets or promote.
    assert status("POST", "/jobs/predict", "s-key-2", json=PREDICT) == 422
    assert status("POST", "/predict_price", "s-key-2", json={}) == 422
    for method, path in (("POST", "/jobs/retrain"), ("POST", "/datasets"),
                         ("POST", "/models/forecast/promote"),
                         ("POST", "/datasets/0123456789abcdef/activate")):  # fmt: skip
        resp = client.open(path, method=method, headers={"X-API-Key": "s-key-2"}, json={})
        assert resp.status_code == 403, path
        assert "needs 'admin'" in resp.get_json()["detail"]
    # admin: everything; Bearer works as well as X-API-Key.
    resp = client.post("/jobs/predict", json=PREDICT, headers={"Authorization": "Bearer a-key-3"})
    assert resp.status_code == 422
    assert status("POST", "/models/forecast/promote", "a-key-3", json={}) == 422


def test_keys_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client()
    client.get("/models", headers={"X-API-Key": "a-key-3"})
    client.get("/models", headers={"X-API-Key": "wrong-secret-key"})
    text = caplog.text
    assert "a-key-3" not in text and "wrong-secret-key" not in text
    with pytest.raises(ValueError) as err:
        _client(api_keys="secret-without-role")
    assert "secret-without-role" not in str(err.value)


def test_binding_beyond_localhost_needs_keys_or_an_explicit_opt_in() -> None:
    assert "binds 127.0.0.1 only" in check_bind(Settings(host="127.0.0.1"))
    with pytest.raises(SystemExit, match="refusing to bind 0.0.0.0"):
        check_bind(Settings(host="0.0.0.0"))
    assert "open to anyone" in check_bind(Settings(host="0.0.0.0", allow_unauthenticated=True))
    assert "1 configured" in check_bind(Settings(host="0.0.0.0", api_keys="k:admin"))
    # The gunicorn config itself refuses to start.
    env = {"HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", "import api.gunicorn_conf"], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "refusing to bind 0.0.0.0" in proc.stderr


def test_body_too_large_is_413() -> None:
    client = _client(api_keys=None, max_body_bytes=2048, max_upload_bytes=4096)
    resp = client.post("/jobs/predict", json={"prices": [1.0] * 2000})
    assert resp.status_code == 413 and resp.mimetype == "application/problem+json"
    assert resp.get_json()["max_bytes"] == 2048
    resp = client.post("/datasets", data=b"x" * 5000, content_type="text/csv")
    assert resp.status_code == 413


@pytest.mark.integration
def test_rate_limit_is_429_with_retry_after(stack: Stack) -> None:
    key = f"rl-{uuid.uuid4().hex}"
    conf = stack.settings(api_keys=f"{key}:read", rate_limit="3/minute")
    # Two apps stand for two gunicorn workers: the count is shared in Redis.
    first, second = (create_app(conf).test_client() for _ in range(2))
    headers = {"X-API-Key": key}
    codes = [c.get("/result/none", headers=headers).status_code for c in (first, second, first)]
    assert codes == [404, 404, 404]
    resp = second.get("/result/none", headers=headers)
    assert resp.status_code == 429 and resp.mimetype == "application/problem+json"
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    other = f"rl-{uuid.uuid4().hex}"  # limits are per key
    conf2 = stack.settings(api_keys=f"{other}:read", rate_limit="3/minute")
    assert (
        create_app(conf2)
        .test_client()
        .get("/result/none", headers={"X-API-Key": other})
        .status_code
        == 404
    )


@pytest.mark.integration
def test_full_inference_queue_is_503_with_retry_after(stack: Stack) -> None:
    # A database of the suite's Redis that no worker consumes: its queue only grows.
    url = stack.redis_url.rsplit("/", 1)[0] + "/7"
    conf = Settings(redis_url=url, artifacts_dir=stack.artifacts, max_queue_depth=2)
    client = create_app(conf).test_client()
    r = redis.Redis.from_url(url)
    r.delete("inference")
    try:
        r.rpush("inference", "a", "b")
        resp = client.post("/jobs/predict", json={"ticker": "TEC01", "horizon": 2})
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
        assert resp.get_json()["type"] == "/problems/queue-full"
        assert r.llen("inference") == 2  # nothing was queued
        # Retrain goes to the training queue: not limited by inference's depth.
        assert client.post("/jobs/retrain", json={"models": ["nope"]}).status_code == 422
    finally:
        r.delete("inference")


def test_a_path_no_route_serves_is_404_even_without_a_key() -> None:
    # Found by the fuzz test: a static file name with a newline matched no route, and the
    # key check answered 401 for a path that is public (and nothing at all) instead.
    client = _client()
    for path in ("/static/a%0Ab.css", "/no/such/route"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json", path
    assert client.delete("/health").status_code == 405
    assert client.get("/models").status_code == 401  # a real route still needs the key
