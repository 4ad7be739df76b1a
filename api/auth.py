"""API keys and roles: `read` (GET), `submit` (predict, segment), `admin` (the rest).

Keys come from `API_KEYS` (`KEY:ROLE,...`) and `API_KEYS_FILE` (one `KEY:ROLE` a line),
sent as `X-API-Key: KEY` or `Authorization: Bearer KEY`. Only their sha256 digests are
kept, compared in constant time; a key is never logged. With no keys configured the API
is open, and `check_bind` keeps it on localhost unless ALLOW_UNAUTHENTICATED is set.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from typing import Literal

from flask import Flask, current_app, g, request

from api.errors import ApiError
from api.submits import submitted_type
from worker.config import Settings

log = logging.getLogger(__name__)
Role = Literal["read", "submit", "admin"]
ROLES: dict[str, int] = {"read": 0, "submit": 1, "admin": 2}
#: Endpoints anyone may call: probes, the API description.
#: The dashboard pages are shells: their data comes from the API with the key the user
#: enters. Metrics are scraped without a key, as Prometheus does.
PUBLIC_ENDPOINTS = {
    "api.health",
    "api.ready",
    "static",
    "dashboard.index",
    "dashboard.forecast",
    "dashboard.segments",
    "dashboard.registry",
    "metrics.metrics",
    "openapi.spec",
    "openapi.docs",
}


class ApiKeyError(ValueError):
    """API_KEYS or API_KEYS_FILE is malformed."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(settings: Settings) -> dict[bytes, tuple[str, Role]]:
    """Return sha256(key) -> (key id, role) for every configured key."""
    entries: list[str] = []
    if settings.api_keys is not None:
        entries += settings.api_keys.get_secret_value().split(",")
    if settings.api_keys_file is not None:
        try:
            entries += settings.api_keys_file.read_text().splitlines()
        except OSError as exc:
            raise ApiKeyError(f"cannot read API_KEYS_FILE {settings.api_keys_file}: {exc}") from exc
    keys: dict[bytes, tuple[str, Role]] = {}
    for n, entry in enumerate(e.strip() for e in entries):
        if not entry or entry.startswith("#"):
            continue
        key, sep, role = entry.rpartition(":")
        role = role.strip().lower()
        if not sep or not key.strip() or role not in ROLES:
            # Name the entry by position only: the text is a secret.
            raise ApiKeyError(
                f"API key entry #{n + 1} is not KEY:ROLE with ROLE one of read, submit, admin"
            )
        digest = _digest(key.strip())
        keys[digest] = (f"key-{digest.hex()[:8]}", role)  # type: ignore[assignment]
    return keys


def presented_key() -> str | None:
    """Return the key the request carries, if any."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def required_role() -> Role | None:
    """Return the role the current request needs, or None for a public endpoint."""
    endpoint = request.endpoint or ""
    if endpoint in PUBLIC_ENDPOINTS:
        return None
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    # A `submit` key may queue inference jobs; a retrain, like any other write, is admin's.
    job_type = submitted_type()
    if job_type is not None:
        return "admin" if job_type == "retrain" else "submit"
    return "admin"


def principal() -> str:
    """Return who is making the request, for the records: a key id and role, never the key."""
    return str(g.get("principal", "anonymous"))


def _unauthorized(detail: str) -> ApiError:
    return ApiError(
        401,
        "Unauthorized",
        detail,
        type_="/problems/unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="mlstock"'},
    )


def _authenticate() -> None:
    keys: dict[bytes, tuple[str, Role]] = current_app.extensions["api_keys"]
    if not keys:
        g.principal = f"anonymous@{request.remote_addr or 'unknown'}"
        return
    needed = required_role()
    if needed is None or request.routing_exception is not None:
        return  # a public route, or none at all: its 404 or 405 follows, nothing to guard
    key = presented_key()
    if key is None:
        raise _unauthorized("send an API key as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'")
    digest = _digest(key)
    found: tuple[str, Role] | None = None
    for known, entry in keys.items():  # every entry is compared: no early exit
        if hmac.compare_digest(known, digest):
            found = entry
    if found is None:
        raise _unauthorized("the API key is not valid")
    key_id, role = found
    g.principal = f"{key_id} ({role})"
    if ROLES[role] < ROLES[needed]:
        raise ApiError(
            403,
            "Forbidden",
            f"this key has the role {role!r}; {request.method} {request.path} needs {needed!r}",
            type_="/problems/forbidden",
        )


def init_auth(app: Flask, settings: Settings) -> None:
    """Check API keys on every request."""
    keys = parse_keys(settings)
    app.extensions["api_keys"] = keys
    if not keys:
        log.warning("no API_KEYS configured: the API is open to anyone who can reach it")
    app.before_request(_authenticate)


def is_loopback(host: str) -> bool:
    """Return True when `host` is a loopback address (or `localhost`)."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> str:
    """Return a line describing how the API is protected; raise SystemExit when it would be
    reachable beyond this machine with no keys and ALLOW_UNAUTHENTICATED is not set."""
    keys = parse_keys(settings)
    if keys:
        return (
            f"API keys: {len(keys)} configured; every route but the probes, /metrics, the API "
            "description and the dashboard's pages needs one"
        )
    if is_loopback(settings.host):
        return (
            f"no API_KEYS set: the API is unauthenticated and binds {settings.host} only "
            "(set API_KEYS to serve beyond this machine)"
        )
    if settings.allow_unauthenticated:
        return (
            f"WARNING: no API_KEYS set and ALLOW_UNAUTHENTICATED=true: the API on "
            f"{settings.host} is open to anyone who can reach it"
        )
    raise SystemExit(
        f"refusing to bind {settings.host} without API keys: set API_KEYS (KEY:ROLE,...), "
        "bind HOST=127.0.0.1, or set ALLOW_UNAUTHENTICATED=true to serve openly on purpose"
    )
