"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from api.schemas import Problem

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    """An error answered as a problem+json response."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers or {}
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        """Return the problem details object (built through the `Problem` schema)."""
        problem = Problem(
            type=self.type, title=self.title, status=self.status, detail=self.detail, **self.extra
        )
        return problem.model_dump(mode="json", exclude_unset=True)

    def response(self) -> Response:
        """Return the problem as a Flask response."""
        resp = jsonify(self.to_dict())
        resp.status_code = self.status
        resp.mimetype = PROBLEM_JSON
        resp.headers.update(self.headers)
        return resp


def field_name(loc: tuple[int | str, ...]) -> str:
    """Return a dotted field path, `(body)` for errors about the body as a whole."""
    return ".".join(str(p) for p in loc) or "(body)"


def validation_problem(errors: list[dict[str, Any]]) -> ApiError:
    """Return a 422 naming each invalid field."""
    fields = [
        {"field": field_name(tuple(e["loc"])), "message": e["msg"], "type": e["type"]}
        for e in errors
    ]
    named = ", ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ApiError(
        422,
        "Invalid request",
        f"the request is not valid: {named}",
        type_="/problems/validation",
        errors=fields,
    )


def unavailable(detail: str) -> ApiError:
    """Return a 503 telling the client when to try again."""
    return ApiError(
        503,
        "Service unavailable",
        detail,
        type_="/problems/unavailable",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def register_error_handlers(app: Flask) -> None:
    """Answer every error as problem+json; never a traceback, never HTML."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return exc.response()

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        errors = exc.errors(include_url=False, include_context=False)
        return validation_problem([dict(e) for e in errors]).response()

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(OperationalError)
    def _broker_down(exc: Exception) -> Response:
        log.warning("Redis unavailable: %s", exc)
        return unavailable("the job store (Redis) cannot be reached; try again shortly").response()

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = exc.code or 500
        err = ApiError(code, exc.name, exc.description or exc.name)
        resp = err.response()
        if code == 405 and exc.get_response().headers.get("Allow"):
            resp.headers["Allow"] = exc.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        log.exception("unhandled error")
        return ApiError(500, "Internal error", "the server failed; the error is logged").response()
