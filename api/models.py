"""The model registry over HTTP: list models and versions, promote or roll back.

The API reads the listing the workers publish in Redis and asks a worker (a promote job)
to change the current version: it never touches the registry's files itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response

from api.admin import enqueue, json_body, outcome, published, redis_client, settings
from api.auth import principal
from api.errors import ApiError
from api.schemas import AccuracyReport, ModelDetail, ModelList, VersionCard, reply
from worker.contract import (
    ACCURACY_KEY,
    LEDGER_INDEX_KEY,
    MODEL_NAMES,
    REGISTRY_KEY,
    PromoteBody,
    ledger_key,
    now_iso,
    validation_context,
)

bp = Blueprint("models", __name__)


def _model(name: str) -> dict[str, Any]:
    models = published(REGISTRY_KEY, "model registry")["models"]
    if name not in models:
        known = ", ".join(sorted(models)) or "none yet"
        raise ApiError(404, "Model not found", f"no model {name!r}; models: {known}")
    entry: dict[str, Any] = models[name]
    return entry


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    current = next((c for c in entry["versions"] if c["version"] == entry["current"]), None)
    return {
        "name": entry["name"],
        "current": entry["current"],
        "versions": len(entry["versions"]),
        "latest": entry["versions"][0]["version"] if entry["versions"] else None,
        "current_card": current,
    }


@bp.get("/models")
def list_models() -> Response:
    """List the models with their current version and its card."""
    listing = published(REGISTRY_KEY, "model registry")
    return reply(
        ModelList,
        signing=listing.get("signing"),
        published_at=listing.get("published_at"),
        models=[_summary(m) for m in listing["models"].values()],
    )


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    """Return a model's versions, newest first, with their cards and promotion history."""
    entry = _model(name)
    versions = [{**c, "current": c["version"] == entry["current"]} for c in entry["versions"]]
    return reply(
        ModelDetail,
        name=name,
        current=entry["current"],
        versions=versions,
        history=entry.get("history", []),
    )


@bp.get("/models/<name>/accuracy")
def accuracy(name: str) -> Response:
    """Return the realized accuracy of served forecasts, by model version and step, as of
    the last time newer prices arrived, and what the ledger holds now."""
    if name != "forecast":
        if name in MODEL_NAMES:
            raise ApiError(404, "No accuracy ledger", f"only forecasts are ledgered, not {name}")
        raise ApiError(404, "Model not found", f"no model {name!r}; one of: forecast")
    client = redis_client()
    pipe = client.pipeline(transaction=False)
    pipe.get(ACCURACY_KEY)
    pipe.zrevrange(LEDGER_INDEX_KEY, 0, -1, withscores=True)
    raw, versions = pipe.execute()
    for version, _ in versions:
        pipe.hlen(ledger_key(version.decode()))
    sizes = pipe.execute() if versions else []
    report: dict[str, Any] = json.loads(raw) if raw else dict(_NOT_COMPUTED)
    report["ledger"] = [
        {
            "model_version": version.decode(),
            "recorded": int(size),
            "last_recorded_at": now_iso(datetime.fromtimestamp(at, UTC)),
        }
        for (version, at), size in zip(versions, sizes, strict=True)
        if size  # an index entry outlives its expired hash by at most one flush
    ]
    return reply(AccuracyReport, **report)


_NOT_COMPUTED: dict[str, Any] = {
    "model": "forecast",
    "computed_at": None,
    "data_version": None,
    "actuals_through": None,
    "versions": [],
    "detail": "not computed yet: served forecasts are scored when newer prices arrive "
    "(an import that becomes the active dataset, or an activation)",
}


@bp.get("/models/<name>/<version>")
def get_version(name: str, version: str) -> Response:
    """Return the card of one version."""
    entry = _model(name)
    for card in entry["versions"]:
        if card["version"] == version:
            return reply(VersionCard, **{**card, "current": version == entry["current"]})
    raise ApiError(404, "Version not found", f"model {name!r} has no version {version!r}")


@bp.post("/models/<name>/promote")
def promote(name: str) -> Response:
    """Make a stored version current: a promotion, or a rollback to an older one."""
    body = PromoteBody.model_validate(json_body(), context=validation_context(settings()))
    if name not in MODEL_NAMES:
        known = ", ".join(MODEL_NAMES)
        raise ApiError(404, "Model not found", f"no model {name!r}; one of: {known}")
    entry = _model(name)
    if body.version not in {c["version"] for c in entry["versions"]}:
        raise ApiError(404, "Version not found", f"model {name!r} has no version {body.version!r}")
    params = {"name": name, "version": body.version, "by": principal()}
    if body.reason:
        params["reason"] = body.reason
    if body.callback_url is not None:
        params["callback_url"] = str(body.callback_url)
    job_id = enqueue("promote", params)
    return outcome(job_id, settings().sync_wait)
