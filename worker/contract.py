"""The job contract shared by the API and the workers: task names, queues, payload schemas
and the job record kept in Redis.

The API imports this module and `worker.config`, nothing else of `worker`, and never `ml`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import redis
from celery import Celery
from celery.schedules import crontab
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.config import Settings

# --- task names and queues -----------------------------------------------------------------

TASK_PREDICT = "worker.predict"
TASK_SEGMENT = "worker.segment"
TASK_RETRAIN = "worker.retrain"
QUEUE_INFERENCE = "inference"
QUEUE_TRAINING = "training"
ModelName = Literal["forecast", "segment"]
MODEL_NAMES: tuple[ModelName, ...] = ("forecast", "segment")

#: Job type -> (task name, queue).
JOB_TYPES: dict[str, tuple[str, str]] = {
    "predict": (TASK_PREDICT, QUEUE_INFERENCE),
    "segment": (TASK_SEGMENT, QUEUE_INFERENCE),
    "retrain": (TASK_RETRAIN, QUEUE_TRAINING),
}

#: Fewest prices an ad-hoc series needs: the forecaster's longest feature window (40 daily
#: returns) plus one. `ml.forecast.Forecaster.min_history_` must agree (a test checks it).
MIN_SERIES = 41

# --- payload schemas -------------------------------------------------------------------------

Ticker = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,15}$"
    ),
]
StrictPositiveInt = Annotated[int, Field(strict=True, ge=1)]
Price = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Feature = Annotated[float, Field(allow_inf_nan=False)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _max(info: ValidationInfo, key: str, default: int) -> int:
    ctx = info.context or {}
    return int(ctx.get(key, default))


class PredictRequest(_Request):
    """Forecast one ticker, several tickers, or an ad-hoc price series."""

    ticker: Ticker | None = None
    tickers: list[Ticker] | None = Field(None, min_length=1)
    prices: list[Price] | None = Field(None, min_length=MIN_SERIES)
    horizon: StrictPositiveInt = 5
    as_of: date | None = Field(None, description="Forecast from the history through this date.")
    last_date: date | None = Field(None, description="Date of the last of `prices`.")

    @field_validator("horizon")
    @classmethod
    def _horizon_within_max(cls, v: int, info: ValidationInfo) -> int:
        limit = _max(info, "max_horizon", 10)
        if v > limit:
            raise ValueError(f"horizon must be at most {limit}")
        return v

    @field_validator("tickers")
    @classmethod
    def _tickers_within_max(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if v is not None:
            limit = _max(info, "max_batch", 500)
            if len(v) > limit:
                raise ValueError(f"at most {limit} tickers per job")
            v = list(dict.fromkeys(v))  # keep order, drop repeats
        return v

    @model_validator(mode="after")
    def _exactly_one_subject(self) -> PredictRequest:
        given = [k for k in ("ticker", "tickers", "prices") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'ticker', 'tickers' or 'prices'")
        if self.last_date is not None and self.prices is None:
            raise ValueError("'last_date' goes with 'prices'")
        if self.as_of is not None and self.prices is not None:
            raise ValueError("'as_of' goes with 'ticker' or 'tickers'")
        return self

    def subject_tickers(self) -> list[str] | None:
        """Return the tickers asked for, or None for an ad-hoc series."""
        if self.ticker is not None:
            return [self.ticker]
        return self.tickers


class SegmentRequest(_Request):
    """Segment tickers of the dataset (none given: all), or rows of features."""

    tickers: list[Ticker] | None = Field(None, min_length=1)
    data: list[list[Feature]] | None = Field(None, min_length=1)

    @field_validator("tickers", "data")
    @classmethod
    def _within_max(cls, v: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        limit = _max(info, "max_batch", 500)
        if v is not None and len(v) > limit:
            raise ValueError(f"at most {limit} items per job")
        return v

    @field_validator("data")
    @classmethod
    def _rectangular(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None:
            widths = {len(row) for row in v}
            if 0 in widths or len(widths) != 1:
                raise ValueError("every row must have the same, non-zero number of features")
        return v

    @model_validator(mode="after")
    def _not_both(self) -> SegmentRequest:
        if self.tickers is not None and self.data is not None:
            raise ValueError("give 'tickers' or 'data', not both")
        return self


class RetrainRequest(_Request):
    """Retrain some or all models on the training dataset."""

    models: list[ModelName] = Field(default_factory=lambda: list(MODEL_NAMES), min_length=1)

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class LegacyPredictPrice(_Request):
    """`POST /predict_price` of the earlier scaffold: a price series."""

    features: list[Price] = Field(min_length=MIN_SERIES)
    horizon: StrictPositiveInt = 5

    def to_job(self) -> dict[str, Any]:
        """Return the equivalent predict job payload."""
        return {"prices": list(self.features), "horizon": self.horizon}


class LegacySegment(_Request):
    """`POST /segment` of the earlier scaffold: rows of features."""

    data: list[list[Feature]] = Field(min_length=1)

    def to_job(self) -> dict[str, Any]:
        """Return the equivalent segment job payload."""
        return {"data": [list(r) for r in self.data]}


REQUEST_SCHEMAS: dict[str, type[_Request]] = {
    "predict": PredictRequest,
    "segment": SegmentRequest,
    "retrain": RetrainRequest,
}

# --- job records -----------------------------------------------------------------------------

#: Fields of a job record, in the order the API shows them.
RECORD_FIELDS = (
    "job_id",
    "type",
    "status",
    "progress",
    "stage",
    "submitted_at",
    "started_at",
    "finished_at",
    "expires_at",
    "attempts",
    "worker",
    "params",
    "model_version",
    "result",
    "error",
)
Status = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
TERMINAL = ("succeeded", "failed", "cancelled")
KEY_PREFIX = "mlstock"
WORKERS_KEY = f"{KEY_PREFIX}:workers"
CATALOG_KEY = f"{KEY_PREFIX}:catalog"
#: Holds the id of the retrain that trains the first models of an empty registry.
BOOTSTRAP_KEY = f"{KEY_PREFIX}:bootstrap"

# A transition is refused when the record is already final, or when it would go back to
# `queued`: a late duplicate delivery can never turn `succeeded` into `running`. Fields are
# JSON-encoded. On a final state the record's TTL restarts and waiters are notified.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur then
  cur = cjson.decode(cur)
  if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return 0 end
end
if ARGV[1] == 'queued' and cur then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'status', cjson.encode(ARGV[1]))
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  redis.call('PUBLISH', KEYS[2], ARGV[1])
end
return 1
"""

# Progress only touches a running record: never resurrect an expired key without a TTL.
_PROGRESS = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur and (cjson.decode(cur) == 'running') then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'stage', ARGV[2])
end
"""


def now_iso(at: datetime | None = None) -> str:
    """Return a UTC timestamp in one fixed-width ISO 8601 form (sortable as text)."""
    return (at or datetime.now(UTC)).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    """Return a fresh job id."""
    return str(uuid.uuid4())


class JobStore:
    """Job records in Redis, written at submit by the API and on each transition by workers."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl
        self._transition = client.register_script(_TRANSITION)
        self._progress = client.register_script(_PROGRESS)

    @staticmethod
    def key(job_id: str) -> str:
        """Return the Redis key of a job record."""
        return f"{KEY_PREFIX}:job:{job_id}"

    @staticmethod
    def channel(job_id: str) -> str:
        """Return the channel announcing that a job has finished."""
        return f"{KEY_PREFIX}:done:{job_id}"

    def _expires(self) -> str:
        return now_iso(datetime.now(UTC) + timedelta(seconds=self.ttl))

    def create(self, job_id: str, job_type: str, params: dict[str, Any]) -> dict[str, Any]:
        """Record a queued job; return the record."""
        record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
        record.update(
            job_id=job_id,
            type=job_type,
            status="queued",
            progress=0.0,
            stage="queued",
            submitted_at=now_iso(),
            expires_at=self._expires(),
            attempts=0,
            params=params,
        )
        self.transition(job_id, "queued", **record)
        return record

    def transition(
        self, job_id: str, status: Status, /, *, count_attempt: bool = False, **fields: Any
    ) -> bool:
        """Move a job to `status` and set `fields`; return False when the move is refused."""
        fields.pop("status", None)
        if status in TERMINAL:
            fields.setdefault("finished_at", now_iso())
        fields.setdefault("expires_at", self._expires())
        argv: list[str] = [status, str(self.ttl), "1" if count_attempt else "0"]
        for name, value in fields.items():
            argv += [name, json.dumps(value)]
        keys = [self.key(job_id), self.channel(job_id)]
        return bool(self._transition(keys=keys, args=argv))

    def progress(self, job_id: str, progress: float, stage: str) -> None:
        """Record how far a running job has got."""
        self._progress(
            keys=[self.key(job_id)], args=[json.dumps(round(progress, 3)), json.dumps(stage)]
        )

    def get(self, job_id: str) -> dict[str, Any] | None:
        """Return the record, or None for an id never issued or expired."""
        raw = self.redis.hgetall(self.key(job_id))
        if not raw:
            return None
        fields = {
            (k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()
        }
        return {name: fields.get(name) for name in RECORD_FIELDS} | fields

    def wait(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        """Return the record once the job is final or `timeout` seconds have passed."""
        record = self.get(job_id)
        if record is None or record["status"] in TERMINAL or timeout <= 0:
            return record
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel(job_id))
            # Read again after subscribing: the job may have ended in between.
            record = self.get(job_id)
            deadline = datetime.now(UTC) + timedelta(seconds=timeout)
            while record is not None and record["status"] not in TERMINAL:
                left = (deadline - datetime.now(UTC)).total_seconds()
                if left <= 0:
                    break
                if pubsub.get_message(timeout=min(left, 1.0)) is not None:
                    record = self.get(job_id)
        finally:
            pubsub.close()
        return record


# --- the Celery app both sides build from settings -------------------------------------------


def parse_crontab(expr: str) -> crontab:
    """Return a Celery crontab from a five-field crontab string (m h dom mon dow)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"RETRAIN_SCHEDULE needs 5 fields (m h dom mon dow), got {expr!r}")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def _limits(hard: int) -> dict[str, int]:
    # The soft limit lets a task record its own timeout before the hard limit kills it.
    return {"time_limit": hard, "soft_time_limit": max(1, hard - max(1, hard // 20))}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Build the lowercase Celery settings from ours."""
    schedule: dict[str, Any] = {}
    if settings.retrain_schedule.strip():
        schedule["retrain"] = {
            "task": TASK_RETRAIN,
            "schedule": parse_crontab(settings.retrain_schedule),
            "kwargs": {"request": {}, "trigger": "schedule"},
            "options": {"queue": QUEUE_TRAINING},
        }
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        # Results live in our job records (one write, one TTL); Celery's own are not kept.
        "task_ignore_result": True,
        "result_expires": settings.result_ttl,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_routes": {task: {"queue": queue} for task, queue in JOB_TYPES.values()},
        "task_default_queue": QUEUE_INFERENCE,
        # A redelivery must never start while the first delivery of a retrain still runs.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "task_track_started": False,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 10_000,
        "worker_max_memory_per_child": 1_500_000,  # KiB
        "worker_hijack_root_logger": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_annotations": {
            TASK_PREDICT: _limits(settings.inference_time_limit),
            TASK_SEGMENT: _limits(settings.inference_time_limit),
            # Retrain is idempotent (a new version directory, renamed into place), so it
            # may be acknowledged late: a training worker killed mid-run gets it again.
            TASK_RETRAIN: {**_limits(settings.training_time_limit), "acks_late": True},
        },
        "beat_schedule": schedule,
        "beat_schedule_filename": str(settings.artifacts_dir / "celerybeat-schedule"),
    }


def create_celery(settings: Settings | None = None) -> Celery:
    """Create the Celery app; the API uses it as a client, workers run its tasks."""
    settings = settings or Settings()
    app = Celery("mlstockprediction", set_as_current=False)
    app.config_from_object(celery_config(settings))
    return app


# --- registry, datasets and their quick admin jobs (issue #5) -------------------------------

TASK_PROMOTE = "worker.promote"
TASK_ACTIVATE = "worker.activate_dataset"
TASK_IMPORT = "worker.import_dataset"
#: Admin job type -> (task name, queue). Promote and activate are quick file operations,
#: so they ride the inference queue; an import parses a whole file, so it goes to training.
ADMIN_JOB_TYPES: dict[str, tuple[str, str]] = {
    "promote": (TASK_PROMOTE, QUEUE_INFERENCE),
    "activate": (TASK_ACTIVATE, QUEUE_INFERENCE),
    "import": (TASK_IMPORT, QUEUE_TRAINING),
}
#: JSON of every model's versions and cards, published by the workers.
REGISTRY_KEY = f"{KEY_PREFIX}:registry"
#: JSON of the stored datasets and the active one, published by the workers.
DATASETS_KEY = f"{KEY_PREFIX}:datasets"
MODEL_VERSION_PATTERN = r"^\d{8}T\d{12}Z$"
DATASET_VERSION_PATTERN = r"^[0-9a-f]{16}$"


def upload_key(job_id: str) -> str:
    """Return the Redis key holding the bytes an import job reads."""
    return f"{KEY_PREFIX}:upload:{job_id}"


class PromoteBody(_Request):
    """Body of `POST /models/<name>/promote`: the version to serve (newer or older)."""

    version: Annotated[str, StringConstraints(pattern=MODEL_VERSION_PATTERN)]
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


class PromoteRequest(_Request):
    """Make `version` of model `name` the current one; `by` says who asked."""

    name: ModelName
    version: Annotated[str, StringConstraints(pattern=MODEL_VERSION_PATTERN)]
    by: str
    reason: str | None = None


class ActivateRequest(_Request):
    """Make dataset `version` the one training uses."""

    version: Annotated[str, StringConstraints(pattern=DATASET_VERSION_PATTERN)]
    by: str


class ImportRequest(_Request):
    """Validate the upload stored under `upload_key` and store it as a dataset version."""

    upload_key: str
    filename: str | None = None
    size: int
    activate: bool = True
    by: str


ADMIN_SCHEMAS: dict[str, type[_Request]] = {
    "promote": PromoteRequest,
    "activate": ActivateRequest,
    "import": ImportRequest,
}
