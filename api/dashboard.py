"""The dashboard at `GET /`: server-rendered pages whose data the browser fetches from the
same JSON API (with the API key the user typed, kept in the browser), so the pages hold no
data of their own and the API's rules apply to everything they show or do."""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from api.schemas import Index, reply

bp = Blueprint("dashboard", __name__)

#: What `GET /` answers a client that asks for JSON rather than HTML.
ENDPOINTS = {
    "POST /jobs/predict": '{"ticker": "TEC01", "horizon": 5}',
    "POST /jobs/segment": '{"tickers": [...]} or {} for all',
    "POST /jobs/retrain": '{"models": ["forecast", "segment"]}',
    "GET /result/<job_id>[?wait=S]": "the job record",
    "GET /jobs": "recent jobs, newest first",
    "DELETE /jobs/<job_id>": "cancel a job",
    "GET /health": "process alive",
    "GET /ready": "Redis, workers and models",
    "GET /metrics": "Prometheus metrics",
    "GET /openapi.json": "the OpenAPI 3.1 description of every route",
    "GET /docs": "that description, browsable",
}


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


@bp.get("/")
def index() -> Response | str:
    """Show the jobs, the submit form and the health strip (JSON clients: the endpoints)."""
    if _wants_json():
        return reply(Index, service="mlstockprediction", endpoints=ENDPOINTS)
    return render_template("index.html", page="jobs")


@bp.get("/forecast/<job_id>")
def forecast(job_id: str) -> str:
    """Show a predict job's forecast: price history and the 80% and 95% bands."""
    return render_template("forecast.html", page="forecast", job_id=job_id)


@bp.get("/segments")
def segments() -> str:
    """Show the latest segmentation: tickers by segment, profiles and a scatter."""
    return render_template("segments.html", page="segments")


@bp.get("/registry")
def registry() -> str:
    """Show each model's versions, newest first, with their cards; promote or roll back.

    Not at `/models`: that is the JSON API's listing, which this page reads.
    """
    return render_template("models.html", page="models")
