"""`GET /openapi.json` and `GET /docs`: the OpenAPI 3.1 description of every route.

The description is built from the app's url_map, the pydantic models that validate the
requests (`worker.contract`) and build the responses (`api.schemas`), and `OPERATIONS`, a
table of what each route takes and answers. A route without an entry in the table (or an
entry without a route) makes `build_spec` fail, so the description cannot fall behind the
code. `/docs` renders it with Swagger UI served from the package itself (no CDN).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, url_for
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api.auth import PUBLIC_ENDPOINTS
from api.errors import PROBLEM_JSON
from api.schemas import (
    AccuracyReport,
    AdminOutcome,
    Dataset,
    DatasetList,
    Health,
    Index,
    JobAccepted,
    JobList,
    JobRecord,
    JobsQuery,
    ModelDetail,
    ModelList,
    Problem,
    Ready,
    Schedule,
    VersionCard,
)
from worker.contract import (
    MODEL_NAMES,
    LegacyPredictPrice,
    LegacySegment,
    PredictRequest,
    PromoteBody,
    RetrainRequest,
    SegmentRequest,
)

bp = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
#: Methods Flask adds to every route by itself.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Media:
    """A response that is not (only) a JSON model: its media types, each with a JSON
    schema or a model."""

    description: str
    content: Mapping[str, Mapping[str, Any] | type[BaseModel]]


Answer = type[BaseModel] | Media


@dataclass(frozen=True)
class Operation:
    """What one route (method and path) takes and answers, beyond what auth implies."""

    summary: str
    tag: str
    answers: dict[int, Answer]
    #: Error statuses of the route itself; 401/403/429 follow from its role, 413/400/415
    #: from its body, and 503 from needing Redis (every route behind a key does).
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    #: Request content other than a JSON model (e.g. an upload).
    content: dict[str, dict[str, Any]] | None = None
    query: type[BaseModel] | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    #: JSON schemas of path parameters (default: any string).
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The documented path, when it differs from the route's (a fixed job type).
    path: str | None = None
    role: str | None = None


ERROR_TEXT = {
    400: "The body is not valid JSON.",
    401: "No API key, or not a valid one.",
    403: "The key's role may not do this.",
    404: "Not found (or expired).",
    409: "Conflict with the current state.",
    413: "The body is too large.",
    415: "The body's media type is not accepted.",
    422: "The request is not valid: each field and why.",
    429: "Rate limit exceeded: retry after `Retry-After` seconds.",
    503: "Redis, a queue or a listing is unavailable: retry after `Retry-After` seconds.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string"},
    }
}
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "How to authenticate.",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    429: {name: {**spec, "required": True} for name, spec in _RETRY_AFTER.items()},
    503: _RETRY_AFTER,
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key and body return the same job; another body is a 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
WAIT = {
    "name": "wait",
    "in": "query",
    "description": "Hold the answer until the job ends, at most this many seconds (capped by "
    "WAIT_MAX).",
    "schema": {"type": "number", "minimum": 0},
}
#: A submit's answers: queued (202), or its final record when `?wait` saw it end (200).
SUBMITTED: dict[int, Answer] = {202: JobAccepted, 200: JobRecord}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_MODEL_NAME = {"type": "string", "enum": list(MODEL_NAMES)}
_DATASET_VERSION = {"type": "string", "description": "16 hex digits."}
_UPLOAD_FLAGS = (
    {
        "name": "activate",
        "in": "query",
        "description": "Make the new version the one training uses (default true).",
        "schema": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]},
    },
    {
        "name": "filename",
        "in": "query",
        "description": "Name of the file, for the record (raw uploads).",
        "schema": {"type": "string", "maxLength": 255},
    },
)
_CSV = {"type": "string", "description": "date,ticker,close rows (see the README)."}
_UPLOAD: dict[str, dict[str, Any]] = {
    "text/csv": {"schema": _CSV},
    "application/gzip": {"schema": {"type": "string", "contentMediaType": "application/gzip"}},
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "file": {"type": "string", "contentMediaType": "text/csv"},
                "activate": {"type": "string", "enum": ["true", "false"]},
            },
            "required": ["file"],
        }
    },
}


def _submit(job_type: str, body: type[BaseModel], role: str) -> Operation:
    return Operation(
        f"Submit a {job_type} job",
        "jobs",
        SUBMITTED,
        errors=(409, 422),
        body=body,
        parameters=(IDEMPOTENCY_KEY, WAIT),
        path=f"/jobs/{job_type}",
        role=role,
    )


#: (method, endpoint) -> the operations it serves (one, or one per fixed path).
OPERATIONS: dict[tuple[str, str], tuple[Operation, ...]] = {
    ("POST", "api.create_job"): (
        _submit("predict", PredictRequest, "submit"),
        _submit("segment", SegmentRequest, "submit"),
        _submit("retrain", RetrainRequest, "admin"),
    ),
    ("POST", "api.predict_price"): (
        Operation(
            "Submit a predict job (the earlier scaffold's form)",
            "jobs",
            SUBMITTED,
            errors=(409, 422),
            body=LegacyPredictPrice,
            parameters=(IDEMPOTENCY_KEY, WAIT),
            role="submit",
        ),
    ),
    ("POST", "api.segment_alias"): (
        Operation(
            "Submit a segment job (the earlier scaffold's form)",
            "jobs",
            SUBMITTED,
            errors=(409, 422),
            body=LegacySegment,
            parameters=(IDEMPOTENCY_KEY, WAIT),
            role="submit",
        ),
    ),
    ("GET", "api.result"): (
        Operation(
            "Read a job's record",
            "jobs",
            {200: JobRecord},
            errors=(404, 422),
            parameters=(WAIT,),
        ),
    ),
    ("GET", "api.list_jobs"): (
        Operation("List recent jobs", "jobs", {200: JobList}, errors=(422,), query=JobsQuery),
    ),
    ("DELETE", "api.cancel_job"): (
        Operation("Cancel a job", "jobs", {200: JobRecord}, errors=(404, 409)),
    ),
    ("GET", "api.schedule"): (Operation("Show the retrain schedule", "service", {200: Schedule}),),
    ("GET", "api.health"): (Operation("Liveness", "service", {200: Health}),),
    ("GET", "api.ready"): (
        Operation("Readiness: Redis, workers, models", "service", {200: Ready, 503: Ready}),
    ),
    ("GET", "models.list_models"): (Operation("List the models", "models", {200: ModelList}),),
    ("GET", "models.get_model"): (
        Operation(
            "A model's versions and promotions",
            "models",
            {200: ModelDetail},
            errors=(404,),
            path_params={"name": _MODEL_NAME},
        ),
    ),
    ("GET", "models.accuracy"): (
        Operation(
            "Realized accuracy of served forecasts",
            "models",
            {200: AccuracyReport},
            errors=(404,),
            path_params={"name": _MODEL_NAME},
        ),
    ),
    ("GET", "models.get_version"): (
        Operation(
            "One version's card",
            "models",
            {200: VersionCard},
            errors=(404,),
            path_params={"name": _MODEL_NAME},
        ),
    ),
    ("POST", "models.promote"): (
        Operation(
            "Promote a version, or roll back to one",
            "models",
            {200: AdminOutcome, 202: JobAccepted},
            errors=(404, 409, 422),
            body=PromoteBody,
            path_params={"name": _MODEL_NAME},
            role="admin",
        ),
    ),
    ("POST", "datasets.upload"): (
        Operation(
            "Upload a prices CSV (plain or gzip) and import it",
            "datasets",
            {200: AdminOutcome, 202: JobAccepted},
            errors=(422,),
            content=_UPLOAD,
            parameters=_UPLOAD_FLAGS,
            role="admin",
        ),
    ),
    ("GET", "datasets.list_datasets"): (
        Operation("List the datasets", "datasets", {200: DatasetList}),
    ),
    ("GET", "datasets.get_dataset"): (
        Operation(
            "One dataset",
            "datasets",
            {200: Dataset},
            errors=(404, 422),
            path_params={"version": _DATASET_VERSION},
        ),
    ),
    ("POST", "datasets.activate"): (
        Operation(
            "Make a dataset the one training uses",
            "datasets",
            {200: AdminOutcome, 202: JobAccepted},
            errors=(404, 409, 422),
            path_params={"version": _DATASET_VERSION},
            role="admin",
        ),
    ),
    ("GET", "dashboard.index"): (
        Operation(
            "The dashboard (JSON clients: the endpoints)",
            "dashboard",
            {200: Media("The jobs page, or the endpoints.", {**_HTML, "application/json": Index})},
        ),
    ),
    ("GET", "dashboard.forecast"): (
        Operation("A predict job's forecast page", "dashboard", {200: Media("HTML.", _HTML)}),
    ),
    ("GET", "dashboard.segments"): (
        Operation("The segments page", "dashboard", {200: Media("HTML.", _HTML)}),
    ),
    ("GET", "dashboard.registry"): (
        Operation("The models page", "dashboard", {200: Media("HTML.", _HTML)}),
    ),
    ("GET", "static"): (
        Operation(
            "A static file of the dashboard or the docs",
            "dashboard",
            {200: Media("The file.", {"*/*": {}})},
            errors=(404,),
        ),
    ),
    ("GET", "metrics.metrics"): (
        Operation(
            "Prometheus metrics",
            "service",
            {200: Media("Text exposition format.", {"text/plain": {"schema": {"type": "string"}}})},
        ),
    ),
    ("GET", "openapi.spec"): (
        Operation(
            "This description (OpenAPI 3.1)",
            "service",
            {200: Media("The description.", {"application/json": {"schema": {"type": "object"}}})},
        ),
    ),
    ("GET", "openapi.docs"): (
        Operation("This description, browsable", "service", {200: Media("HTML.", _HTML)}),
    ),
}


def _path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Problem, "serialization"): None}
    for ops in OPERATIONS.values():
        for op in ops:
            if op.body is not None:
                found[(op.body, "validation")] = None
            for answer in op.answers.values():
                served = answer.content.values() if isinstance(answer, Media) else [answer]
                for model in served:
                    if isinstance(model, type):
                        found[(model, "serialization")] = None
    return list(found)


def _ref(refs: dict[tuple[type[BaseModel], JsonSchemaMode], Any], model: type[BaseModel],
         mode: JsonSchemaMode) -> dict[str, Any]:  # fmt: skip
    return dict(refs[(model, mode)])


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """Return a property's schema without its `null` branch: a query parameter is absent
    or a string, never null."""
    branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        prop = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **branches[0]}
    return {k: v for k, v in prop.items() if k not in ("description", "title")}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            **({"description": prop["description"]} if "description" in prop else {}),
            "schema": _not_null(prop),
        }
        for name, prop in schema["properties"].items()
    ]


def _operation(
    op: Operation, endpoint: str, method: str, path: str, refs: dict[Any, Any], doc: str | None
) -> dict[str, Any]:
    public = endpoint in PUBLIC_ENDPOINTS
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": op.path_params.get(name, {"type": "string"})}
        for name in re.findall(r"{([^}]+)}", path)
    ]  # fmt: skip
    params += list(op.parameters)
    if op.query is not None:
        params += _query_parameters(op.query)
    responses: dict[str, Any] = {}
    for status, answer in sorted(op.answers.items()):
        if isinstance(answer, Media):
            content = {
                media: {"schema": _ref(refs, v, "serialization")} if isinstance(v, type) else v
                for media, v in answer.content.items()
            }
            responses[str(status)] = {"description": answer.description, "content": content}
        else:
            responses[str(status)] = {
                "description": (answer.__doc__ or answer.__name__).split("\n")[0],
                "content": {"application/json": {"schema": _ref(refs, answer, "serialization")}},
            }
    errors = set(op.errors)
    if not public:
        errors |= {401, 429, 503} | ({403} if method != "GET" else set())
    if op.body is not None:
        errors |= {400, 413, 415, 422}
    if op.content is not None:
        errors |= {413, 415}
    for status in sorted(errors - set(op.answers)):
        responses[str(status)] = {
            "description": ERROR_TEXT[status],
            "content": {PROBLEM_JSON: {"schema": _ref(refs, Problem, "serialization")}},
            **({"headers": ERROR_HEADERS[status]} if status in ERROR_HEADERS else {}),
        }
    role = op.role or ("read" if not public else None)
    description = (doc or "").strip()
    if role:
        description += f"\n\nNeeds a key with the role `{role}` (or higher) when keys are set."
    spec: dict[str, Any] = {
        "operationId": f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
        "summary": op.summary,
        "description": description.strip(),
        "tags": [op.tag],
        "parameters": params,
        "responses": responses,
    }
    if public:
        spec["security"] = []
    if op.body is not None:
        spec["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": _ref(refs, op.body, "validation")}},
        }
    if op.content is not None:
        spec["requestBody"] = {"required": True, "content": op.content}
    return spec


def build_spec(app: Flask) -> dict[str, Any]:
    """Return the OpenAPI 3.1 description of every route of `app`.

    Raises LookupError when a route has no entry in OPERATIONS, or an entry no route.
    """
    routes = {
        (method, rule.endpoint): rule.rule
        for rule in app.url_map.iter_rules()
        for method in sorted((rule.methods or set()) - IMPLICIT_METHODS)
    }
    missing = sorted(set(routes) - set(OPERATIONS))
    stale = sorted(set(OPERATIONS) - set(routes))
    if missing or stale:
        raise LookupError(f"routes without a description: {missing}; descriptions without "
                          f"a route: {stale}")  # fmt: skip
    refs, top = models_json_schema(_models(), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for (method, endpoint), rule in sorted(routes.items(), key=lambda kv: kv[1]):
        view = app.view_functions[endpoint]
        for op in OPERATIONS[(method, endpoint)]:
            path = op.path or _path(rule)
            doc = view.__doc__ if len(OPERATIONS[(method, endpoint)]) == 1 else None
            paths.setdefault(path, {})[method.lower()] = _operation(
                op, endpoint, method, path, refs, doc
            )
    try:
        release = version("mlstockprediction")
    except PackageNotFoundError:
        release = "0.0.0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mlstockprediction",
            "version": release,
            "description": "Stock price forecasts and stock segments as asynchronous jobs: "
            "submit, then poll `GET /result/{job_id}`. Every error is "
            "`application/problem+json` (RFC 9457).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"ApiKey": []}, {"Bearer": []}],
    }


@bp.get("/openapi.json")
def spec() -> Response:
    """Return the OpenAPI 3.1 description of this API."""
    built: dict[str, Any] | None = current_app.extensions.get("openapi")
    if built is None:
        built = current_app.extensions["openapi"] = build_spec(current_app)
    return jsonify(built)


@bp.get("/docs")
def docs() -> str:
    """Show the description in Swagger UI, served from the package (works offline)."""
    return render_template("docs.html", spec_url=url_for("openapi.spec"))
