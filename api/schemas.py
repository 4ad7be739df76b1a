"""Response bodies of the API as pydantic models.

The routes build the bodies the API makes itself through these models (`reply`), and
`api.openapi` describes every answer with their JSON schemas, so the description cannot
drift from the code. Bodies the workers write (job records, model cards, dataset metadata)
name the fields they always have and allow more.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import Response, jsonify
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.contract import ALL_JOB_TYPES, Status


class _Closed(BaseModel):
    """A body the API builds itself: exactly these fields."""

    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """A body (or part) written by the workers: these fields at least."""

    model_config = ConfigDict(extra="allow")


def reply(model: type[BaseModel], status: int = 200, /, **fields: Any) -> Response:
    """Answer with `model(**fields)` as JSON; a body that breaks its own schema is a bug
    of the server (a 500), never blamed on the request."""
    try:
        body = model(**fields)
    except ValidationError as exc:
        raise RuntimeError(f"the {model.__name__} response breaks its schema: {exc}") from None
    resp = jsonify(body.model_dump(mode="json"))
    resp.status_code = status
    return resp


# --- problems ------------------------------------------------------------------------------


class FieldError(_Closed):
    """One invalid field of a request."""

    field: str = Field(description="Dotted path of the field; `(body)` for the whole body.")
    message: str
    type: str


class Problem(_Open):
    """RFC 9457 problem details (`application/problem+json`); some problems add members:
    `errors` (422), `max_bytes` (413), `job_id`, `status_url`, `error`, `problems` (a job
    that failed), `job_status` (409)."""

    type: str = Field("about:blank", description="A URI reference naming the kind of problem.")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    errors: list[FieldError] | None = Field(None, description="Each invalid field (422).")


# --- jobs ------------------------------------------------------------------------------------


class JobAccepted(_Closed):
    """A job was queued (or one identical already was): poll `status_url`."""

    job_id: str
    status: Status
    status_url: str = Field(description="Where to poll the job's record.")


class JobError(_Open):
    """Why a job failed."""

    type: str
    message: str


class JobSummary(_Open):
    """A job record without its result (as `GET /jobs` lists it)."""

    job_id: str
    type: str
    status: Status
    progress: float | None = Field(description="0 to 1.")
    stage: str | None
    submitted_at: str | None
    started_at: str | None
    finished_at: str | None
    expires_at: str | None
    attempts: int | None
    worker: str | None
    params: dict[str, Any] | None = Field(description="The validated request.")
    model_version: str | None
    error: JobError | None

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in ALL_JOB_TYPES:
            raise ValueError(f"one of: {', '.join(ALL_JOB_TYPES)}")
        return v


class JobRecord(JobSummary):
    """A job's record: its state, and its result once it succeeded."""

    result: Any = Field(description="What the job computed; null until it succeeded.")


class JobList(_Closed):
    """Recent jobs, newest first."""

    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class JobsQuery(_Closed):
    """Filters and page of `GET /jobs`."""

    type: str | None = Field(
        None, description="One of the job types.", json_schema_extra={"enum": [*ALL_JOB_TYPES]}
    )
    status: Status | None = None
    since: datetime | None = Field(None, description="Only jobs submitted at or after this.")
    cursor: str | None = Field(
        None,
        pattern=r"^[0-9]+(\.[0-9]+)?:[0-9a-f-]{36}$",
        description="`next_cursor` of the previous page.",
    )
    limit: int = Field(50, ge=1, le=200)

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str | None) -> str | None:
        if v is not None and v not in ALL_JOB_TYPES:
            raise ValueError(f"one of: {', '.join(ALL_JOB_TYPES)}")
        return v


class AdminOutcome(_Open):
    """A quick admin job (promote, activate, import) that ended within the wait: its result."""

    job_id: str
    status: Literal["succeeded"]


# --- models and datasets -----------------------------------------------------------------------


class ModelCard(_Open):
    """What is known of one model version (a card that cannot be read has `error`)."""

    name: str
    version: str
    created: str | None = None
    data_version: str | None = None
    trained_through: str | None = None
    params: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    sha256: str | None = None
    libraries: dict[str, Any] | None = None
    promoted: Any = None
    signed: bool | None = None
    error: str | None = None


class ModelSummary(_Closed):
    """A model, its current version and that version's card."""

    name: str
    current: str | None
    versions: int = Field(description="How many versions are stored.")
    latest: str | None
    current_card: ModelCard | None


class ModelList(_Closed):
    """Every model of the registry."""

    signing: str | None = Field(description="`hmac-sha256`, or `sha256` with no signing key.")
    published_at: str | None
    models: list[ModelSummary]


class VersionCard(ModelCard):
    """A version's card, and whether it is the one served."""

    current: bool


class ModelDetail(_Closed):
    """A model's versions newest first, and its promotions (also rollbacks) newest first."""

    name: str
    current: str | None
    versions: list[VersionCard]
    history: list[dict[str, Any]]


class Accuracy(_Closed):
    """Realized accuracy of some served forecast steps (None: no data for a figure)."""

    n: int = Field(description="Forecast steps scored against an actual close.")
    mae: float | None
    mase: float | None = Field(description="MAE over each ticker's in-sample naive MAE.")
    naive_mase: float | None = Field(description="The same for the naive forecast.")
    relative_mase: float | None = Field(description="`mase` / `naive_mase`.")
    coverage_80: float | None
    mean_width_80: float | None = Field(description="Width relative to the last close.")
    coverage_95: float | None
    mean_width_95: float | None


class StepAccuracy(Accuracy):
    """Realized accuracy at one horizon step."""

    step: int


class VersionAccuracy(_Closed):
    """Realized accuracy of one model version's served forecasts."""

    model_version: str
    recorded: int = Field(description="Forecast steps in the ledger.")
    scored: int
    pending: int = Field(description="Target date after the data's last close.")
    no_close: int = Field(description="No close at the target date, though later ones.")
    steps: list[StepAccuracy]
    overall: Accuracy


class LedgerEntry(_Closed):
    """What the ledger holds of one model version now."""

    model_version: str
    recorded: int
    last_recorded_at: str


class AccuracyReport(_Closed):
    """Served forecasts scored against the prices that arrived after them."""

    model: Literal["forecast"]
    computed_at: str | None = Field(description="When newer prices last scored the ledger.")
    data_version: str | None = Field(description="The dataset scored against.")
    actuals_through: str | None
    versions: list[VersionAccuracy]
    ledger: list[LedgerEntry]
    detail: str | None = None


class DatasetSummary(_Open):
    """A stored dataset version (without its list of tickers)."""

    version: str
    rows: int | None = None
    start: str | None = None
    end: str | None = None
    n_tickers: int
    active: bool


class DatasetList(_Closed):
    """The stored datasets, newest first, and the one training uses."""

    active: str | None
    datasets: list[DatasetSummary]


class Dataset(_Open):
    """One stored dataset: tickers, date range, rows, source."""

    version: str
    tickers: list[str]
    active: bool
    problems: list[Any] = Field(description="Always empty: only valid files are stored.")


# --- service -----------------------------------------------------------------------------------


class Health(_Closed):
    """The process is alive."""

    status: Literal["ok"]


class ReadyCheck(_Closed):
    """One precondition of serving, with the fix when it fails."""

    name: str
    ok: bool
    detail: str
    blocking: bool
    fix: str | None


class Ready(_Closed):
    """Whether jobs can be served, and every check."""

    status: Literal["ready", "not ready"]
    checks: list[ReadyCheck]


class Schedule(_Closed):
    """The retrain schedule, its next run and beat's last tick."""

    retrain_schedule: str | None = Field(description="Crontab (m h dom mon dow); null: off.")
    timezone: Literal["UTC"]
    next_run_at: str | None
    last_tick_at: str | None


class Index(_Closed):
    """What `GET /` answers a JSON client."""

    service: str
    endpoints: dict[str, str]
