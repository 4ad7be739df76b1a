"""The job contract shared by the API and the workers: task names, queues, payload schemas
and the job record kept in Redis.

The API imports this module and `worker.config`, nothing else of `worker`, and never `ml`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, cast

import redis
from celery import Celery
from celery.schedules import crontab
from pydantic import (
    AnyHttpUrl,
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
TASK_SCHEDULED_RETRAIN = "worker.scheduled_retrain"
TASK_CALLBACK = "worker.deliver_callback"
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


def check_public_host(host: str) -> None:
    """Raise ValueError unless every address of `host` is public (no loopback, private,
    link-local or reserved range): callbacks must not reach into our own network."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ValueError(f"cannot resolve host {host!r}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ValueError(f"{host} resolves to the non-public address {address}")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    callback_url: AnyHttpUrl | None = Field(
        None, description="Receives the final record, signed in `X-Signature`."
    )

    def _callback(self) -> dict[str, str]:
        return {} if self.callback_url is None else {"callback_url": str(self.callback_url)}

    @field_validator("callback_url")
    @classmethod
    def _callback_allowed(cls, v: AnyHttpUrl | None, info: ValidationInfo) -> AnyHttpUrl | None:
        if v is None:
            return v
        ctx = info.context or {}
        if not ctx.get("callbacks", False):
            raise ValueError("callbacks are off: the server has no WEBHOOK_SECRET")
        if not ctx.get("allow_private", False):
            check_public_host(v.host or "")
        return v


def validation_context(settings: Settings) -> dict[str, Any]:
    """Return the settings-dependent limits request validation checks against."""
    return {
        "max_horizon": settings.max_horizon,
        "max_batch": settings.max_batch,
        "callbacks": bool(settings.webhook_secret),
        "allow_private": settings.webhook_allow_private,
    }


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
    history: Annotated[int, Field(strict=True, ge=1, le=1000)] | None = Field(
        None, description="Also return each ticker's last N closes (for charts)."
    )

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
        if self.history is not None and self.prices is not None:
            raise ValueError("'history' goes with 'ticker' or 'tickers'")
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
    through: date | None = Field(
        None,
        description="Train on prices through this date only: a point-in-time model that "
        "forecasts `as_of` later dates replay; it is kept, never promoted by the gate.",
    )

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
        return {"prices": list(self.features), "horizon": self.horizon, **self._callback()}


class LegacySegment(_Request):
    """`POST /segment` of the earlier scaffold: rows of features."""

    data: list[list[Feature]] = Field(min_length=1)

    def to_job(self) -> dict[str, Any]:
        """Return the equivalent segment job payload."""
        return {"data": [list(r) for r in self.data], **self._callback()}


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
#: Fields of each record in a listing (`GET /jobs`): no results, which can be large.
LIST_FIELDS = tuple(f for f in RECORD_FIELDS if f != "result")
Status = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
TERMINAL = ("succeeded", "failed", "cancelled")
KEY_PREFIX = "mlstock"
WORKERS_KEY = f"{KEY_PREFIX}:workers"
CATALOG_KEY = f"{KEY_PREFIX}:catalog"
#: Holds the id of the retrain that trains the first models of an empty registry.
BOOTSTRAP_KEY = f"{KEY_PREFIX}:bootstrap"

JOBS_INDEX = f"{KEY_PREFIX}:jobs"
#: The job counters the workers keep and the API's `/metrics` reads (`worker.observe`).
METRICS_KEY = f"{KEY_PREFIX}:metrics"
#: Ids of the jobs not yet final, by submit time: what the reconciler looks after.
ACTIVE_INDEX = f"{KEY_PREFIX}:active"
BEAT_LAST_KEY = f"{KEY_PREFIX}:beat:last"
BEAT_ALIVE_KEY = f"{KEY_PREFIX}:beat:alive"
#: A job whose worker died this many times fails instead of being delivered again.
MAX_DELIVERIES = 3

# A transition is refused (0) when the record is already final, or when it would go back to
# `queued`: a late duplicate delivery can never turn `succeeded` into `running`. Fields are
# JSON-encoded. Mode `create` also indexes the new job (ARGV[6] its score, ARGV[7] the score
# below which the indexes are trimmed); mode `existing` refuses (-1) when there is no record.
# A final state restarts the record's TTL, wakes the waiters and adds ARGV[8] (a JSON list
# of kind, field, increment) to the job counters, so each job is counted once, with its end.
# Returns {deliveries so far (at least 1) when the move is made, the JSON submit time}.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur then
  cur = cjson.decode(cur)
  if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return {0, ''} end
elseif ARGV[5] == 'existing' then
  return {-1, ''}
end
if ARGV[1] == 'queued' and cur then return {0, ''} end
redis.call('HSET', KEYS[1], 'status', cjson.encode(ARGV[1]), unpack(ARGV, 9))
local attempts = 1
if ARGV[3] == '1' then
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if ARGV[5] == 'create' then
  for i = 3, 4 do
    redis.call('ZADD', KEYS[i], ARGV[6], ARGV[4])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[7])
  end
end
if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  redis.call('PUBLISH', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[4])
  local counts = cjson.decode(ARGV[8])
  for i = 1, #counts, 3 do
    if counts[i] == 'f' then
      redis.call('HINCRBYFLOAT', KEYS[5], counts[i + 1], counts[i + 2])
    else
      redis.call('HINCRBY', KEYS[5], counts[i + 1], counts[i + 2])
    end
  end
end
return {math.max(attempts, 1), redis.call('HGET', KEYS[1], 'submitted_at') or ''}
"""

# Progress only touches a running record (never resurrects an expired key without a TTL),
# and restarts its TTL (ARGV[3] seconds, ending at ARGV[4]); it returns the status, so a
# running job learns of its cancellation at each checkpoint.
_PROGRESS = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return nil end
if cjson.decode(cur) == 'running' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'stage', ARGV[2], 'expires_at', ARGV[4])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return cjson.decode(cur)
"""

# Single flight: return the job already holding KEYS[1] while it is not final, else take
# the key for ARGV[1].
_SINGLE_FLIGHT = """
local holder = redis.call('GET', KEYS[1])
if holder then
  local status = redis.call('HGET', ARGV[3] .. holder, 'status')
  if status then
    status = cjson.decode(status)
    if status ~= 'succeeded' and status ~= 'failed' and status ~= 'cancelled' then
      return holder
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return ARGV[1]
"""


def now_iso(at: datetime | None = None) -> str:
    """Return a UTC timestamp in one fixed-width ISO 8601 form (sortable as text)."""
    return (at or datetime.now(UTC)).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    """Return a fresh job id."""
    return str(uuid.uuid4())


def body_digest(job_type: str, params: dict[str, Any]) -> str:
    """Return a digest of a job's type and validated parameters."""
    canonical = json.dumps([job_type, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class DoneListener:
    """One subscription per process to every job's end, waking the threads waiting for it.

    A long-poll then costs a read of the record before and after, not a connection and a
    subscription of its own. While not subscribed (at start, or after losing Redis) the
    waiters are woken to read again, so an end announced meanwhile is never missed.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pid = os.getpid()
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        threading.Thread(target=self._run, name="mlstock-done-listener", daemon=True).start()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[threading.Event]:
        """Yield an event set when job `job_id` may have ended."""
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._waiters.get(job_id, set())
                events.discard(event)
                if not events:
                    self._waiters.pop(job_id, None)

    def _wake(self, job_id: str | None = None) -> None:
        with self._lock:
            groups = (
                list(self._waiters.values())
                if job_id is None
                else [self._waiters.get(job_id, set())]
            )
            for events in groups:
                for event in events:
                    event.set()

    def _run(self) -> None:
        pattern, prefix, backoff = f"{KEY_PREFIX}:done:*", f"{KEY_PREFIX}:done:", 0.1
        while True:
            pubsub = self.client.pubsub()
            try:
                pubsub.psubscribe(pattern)
                while True:
                    message = pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self.subscribed.set()  # from now on no end goes unannounced
                        self._wake()  # ...but one may have ended before: read again
                        backoff = 0.1
                    elif message["type"] == "pmessage":
                        self._wake(text(message["channel"]).removeprefix(prefix))
            except (redis.RedisError, OSError, ValueError):
                self.subscribed.clear()
                self._wake()
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


#: A job record's fields as stored in its hash: field name -> JSON text of the value.
RawRecord = dict[str, str]


def decode_record(raw: RawRecord) -> dict[str, Any]:
    """Return a stored record as values, fields in RECORD_FIELDS order, then any others."""
    fields = {k: json.loads(v) for k, v in raw.items()}
    return {name: fields.get(name) for name in RECORD_FIELDS} | fields


def record_json(raw: RawRecord) -> str:
    """Return the JSON text of a stored record, as `decode_record` would encode, without
    decoding its values (a result is passed through as the worker wrote it)."""
    extra = [k for k in raw if k not in RECORD_FIELDS]
    parts = [f'"{name}":{raw.get(name, "null")}' for name in RECORD_FIELDS]
    parts += [f"{json.dumps(name)}:{raw[name]}" for name in extra]
    return "{" + ",".join(parts) + "}"


def raw_status(raw: RawRecord) -> str | None:
    """Return the status of a stored record."""
    status = raw.get("status")
    return None if status is None else str(json.loads(status))


class JobConflict(Exception):
    """An Idempotency-Key was reused with a different request."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class JobStore:
    """Job records in Redis, written at submit by the API and on each transition by workers.

    Each record is a hash with a TTL; a sorted set indexes ids by submit time for listing
    and is trimmed to the longest retention, so Redis holds a bounded number of keys.
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._transition = client.register_script(_TRANSITION)
        self._progress = client.register_script(_PROGRESS)
        self._single_flight = client.register_script(_SINGLE_FLIGHT)
        self._lock = threading.Lock()
        self._listener: DoneListener | None = None

    @staticmethod
    def key(job_id: str) -> str:
        """Return the Redis key of a job record."""
        return f"{KEY_PREFIX}:job:{job_id}"

    @staticmethod
    def channel(job_id: str) -> str:
        """Return the channel announcing that a job has finished."""
        return f"{KEY_PREFIX}:done:{job_id}"

    def ttl(self, job_type: str, status: str | None = None) -> int:
        """Return how long a record of `job_type` lives after a change, in seconds: its
        retention, and while its job is not final (`status`) its time limit on top, so the
        record outlives a job that runs without a checkpoint until it is stopped."""
        ttl = int(self.settings.result_ttls.get(job_type, self.settings.result_ttl))
        if status is not None and status not in TERMINAL:
            training = ALL_JOB_TYPES[job_type][1] == QUEUE_TRAINING
            conf = self.settings
            ttl += conf.training_time_limit if training else conf.inference_time_limit
        return ttl

    def _max_ttl(self) -> int:
        return max([self.settings.result_ttl, *self.settings.result_ttls.values()])

    def create(
        self, job_id: str, job_type: str, params: dict[str, Any], submitted_at: str | None = None
    ) -> dict[str, Any]:
        """Record a queued job and index it; return the record. A job that has a record
        already (its worker got to it first) keeps it."""
        record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
        record.update(
            job_id=job_id,
            type=job_type,
            status="queued",
            progress=0.0,
            stage="queued",
            submitted_at=submitted_at or now_iso(),
            attempts=0,
            params=params,
        )
        # Fields not known yet are not stored: a record reads them as null.
        known = {k: v for k, v in record.items() if v is not None}
        self._move(job_id, job_type, "queued", known, mode="create")
        return record

    def transition(
        self,
        job_id: str,
        job_type: str,
        status: Status,
        /,
        *,
        count_attempt: bool = False,
        counts: dict[str, float] | None = None,
        **fields: Any,
    ) -> int:
        """Move a job to `status` and set `fields`; return 0 when the move is refused, else
        the number of deliveries so far. A move to a final state adds `counts` (field ->
        increment, from `worker.observe.job_counts`) to the job counters."""
        moved, _ = self._move(
            job_id, job_type, status, fields, count_attempt=count_attempt, counts=counts
        )
        return moved

    def start(
        self,
        job_id: str,
        job_type: str,
        params: dict[str, Any],
        /,
        *,
        count_attempt: bool = True,
        **fields: Any,
    ) -> tuple[int, str | None]:
        """Move a job to `running` as `transition` does, in one round trip; a job sent by
        Celery directly (no record) gets its record first. Return the deliveries so far
        (0: refused) and the job's `submitted_at`."""
        moved, submitted = self._move(
            job_id, job_type, "running", fields, mode="existing", count_attempt=count_attempt
        )
        if moved == -1:
            self.create(job_id, job_type, params)
            moved, submitted = self._move(
                job_id, job_type, "running", fields, count_attempt=count_attempt
            )
        return moved, submitted

    def _move(
        self,
        job_id: str,
        job_type: str,
        status: Status,
        fields: dict[str, Any],
        *,
        mode: str = "",
        count_attempt: bool = False,
        counts: dict[str, float] | None = None,
    ) -> tuple[int, str | None]:
        fields = {k: v for k, v in fields.items() if k != "status"}
        ttl = self.ttl(job_type, status)
        if status in TERMINAL:
            fields.setdefault("finished_at", now_iso())
        fields["expires_at"] = now_iso(datetime.now(UTC) + timedelta(seconds=ttl))
        now = time.time()
        increments: list[str] = []
        for name, value in (counts or {}).items():
            increments += ["i" if isinstance(value, int) else "f", name, repr(value)]
        argv: list[str] = [
            status, str(ttl), "1" if count_attempt else "0", job_id,
            mode, repr(now), repr(now - self._max_ttl()), json.dumps(increments),
        ]  # fmt: skip
        for name, value in fields.items():
            argv += [name, json.dumps(value)]
        keys = [self.key(job_id), self.channel(job_id), ACTIVE_INDEX, JOBS_INDEX, METRICS_KEY]
        moved, submitted = self._transition(keys=keys, args=argv)
        return int(moved), json.loads(submitted) if submitted else None

    def progress(self, job_id: str, job_type: str, progress: float, stage: str) -> str | None:
        """Record how far a running job has got; return its status (None: expired)."""
        ttl = self.ttl(job_type, "running")
        expires = now_iso(datetime.now(UTC) + timedelta(seconds=ttl))
        status = self._progress(
            keys=[self.key(job_id)],
            args=[json.dumps(round(progress, 3)), json.dumps(stage), ttl, json.dumps(expires)],
        )
        return None if status is None else text(status)

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Set fields of an existing record, whatever its status (e.g. callback delivery)."""
        key = self.key(job_id)
        if self.redis.exists(key):
            self.redis.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})

    def get(self, job_id: str) -> dict[str, Any] | None:
        """Return the record, or None for an id never issued or expired."""
        raw = self.get_raw(job_id)
        return None if raw is None else decode_record(raw)

    def get_raw(self, job_id: str) -> RawRecord | None:
        """Return the record's fields as stored (each a JSON text), or None."""
        raw = self.redis.hgetall(self.key(job_id))
        return {text(k): text(v) for k, v in raw.items()} if raw else None

    def wait(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        """Return the record once the job is final or `timeout` seconds have passed."""
        raw = self.wait_raw(job_id, timeout)
        return None if raw is None else decode_record(raw)

    def wait_raw(self, job_id: str, timeout: float) -> RawRecord | None:
        """Return the stored fields once the job is final or `timeout` seconds have passed."""
        if timeout <= 0:
            return self.get_raw(job_id)
        listener = self._done_listener()
        deadline = time.monotonic() + timeout
        with listener.watch(job_id) as woken:
            while True:
                # Watching before reading: an end announced after this read wakes us.
                subscribed = listener.subscribed.is_set()
                raw = self.get_raw(job_id)
                left = deadline - time.monotonic()
                if raw is None or raw_status(raw) in TERMINAL or left <= 0:
                    return raw
                # Not subscribed (starting, or Redis went away): read again shortly.
                woken.wait(left if subscribed else min(left, 0.1))
                woken.clear()

    def _done_listener(self) -> DoneListener:
        with self._lock:
            if self._listener is None or self._listener.pid != os.getpid():
                self._listener = DoneListener(self.redis)
            return self._listener

    def unfinished(self, older_than: float) -> list[dict[str, Any]]:
        """Return the records of jobs submitted more than `older_than` seconds ago and not
        final; forget ids whose record has expired or ended."""
        members = self.redis.zrangebyscore(ACTIVE_INDEX, "-inf", time.time() - older_than)
        ids = [text(cast(bytes, m)) for m in members]
        records = []
        for job_id in ids:
            record = self.get(job_id)
            if record is None or record["status"] in TERMINAL:
                self.redis.zrem(ACTIVE_INDEX, job_id)
            else:
                records.append(record)
        return records

    def list(
        self,
        *,
        job_type: str | None = None,
        status: str | None = None,
        since: float | None = None,
        before: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], tuple[float, str] | None]:
        """Return records newest first, and the cursor of the next page (None: no more).

        `before` is the (submit time, job id) of the last record of the previous page.
        """
        found: list[dict[str, Any]] = []
        high: float | str = "+inf" if before is None else before[0]
        low: float | str = "-inf" if since is None else since
        offset, batch, cursor = 0, max(limit * 2, 100), None
        while len(found) < limit:
            rows = cast(
                list[tuple[bytes, float]],
                self.redis.zrevrangebyscore(
                    JOBS_INDEX, high, low, start=offset, num=batch, withscores=True
                ),
            )
            if not rows:
                return found, None
            offset += len(rows)
            pipe = self.redis.pipeline()
            for member, _ in rows:
                pipe.hgetall(self.key(text(member)))
            for (member, score), raw in zip(rows, pipe.execute(), strict=True):
                job_id = text(member)
                if before is not None and score == before[0] and job_id >= before[1]:
                    continue  # already on the previous page
                if not raw:
                    continue  # expired; the index is trimmed lazily
                record = {text(k): json.loads(v) for k, v in raw.items()}
                if (job_type and record["type"] != job_type) or (
                    status and record["status"] != status
                ):
                    continue
                found.append({name: record.get(name) for name in LIST_FIELDS})
                cursor = (float(score), job_id)
                if len(found) == limit:
                    return found, cursor
        return found, cursor

    @staticmethod
    def _idempotency_key(key: str) -> str:
        return f"{KEY_PREFIX}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    def claim_idempotency(
        self, key: str, digest: str, job_id: str, *, ttl: int, rebind: bool = False
    ) -> str | None:
        """Bind an Idempotency-Key to a job; return the job already bound to it, if any.

        Raises JobConflict when the key is bound to a different request. `rebind` moves a
        key this request holds to another job.
        """
        name = self._idempotency_key(key)
        value = json.dumps({"job_id": job_id, "digest": digest})
        # The key lives as long as its job's record: a replay never names an expired job.
        if self.redis.set(name, value, nx=not rebind, ex=ttl):
            return None
        held = json.loads(self.redis.get(name) or "null")
        if held is None:  # expired in between: take it
            self.redis.set(name, value, ex=ttl)
            return None
        if held["digest"] != digest:
            raise JobConflict(held["job_id"])
        return str(held["job_id"])

    def release_idempotency(self, key: str) -> None:
        """Forget an Idempotency-Key whose job could not be queued."""
        self.redis.delete(self._idempotency_key(key))

    def single_flight(self, digest: str, job_id: str, ttl: int) -> str:
        """Return the unfinished job already running this exact request, else `job_id`."""
        name = f"{KEY_PREFIX}:flight:{digest}"
        holder = self._single_flight(keys=[name], args=[job_id, str(ttl), f"{KEY_PREFIX}:job:"])
        return text(holder)


def text(value: object) -> str:
    """Return a value read from Redis (bytes, or str from a decoding client) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


#: A worker that has not announced itself for this long counts as gone.
WORKER_STALE_SECONDS = 20.0


def live_workers(
    raw_entries: dict[Any, Any], now: float | None = None
) -> dict[str, dict[str, Any]]:
    """Return worker name -> heartbeat entry (queues, config, ...) of the workers whose
    heartbeat (an entry of the WORKERS_KEY hash) is fresh."""
    now = time.time() if now is None else now
    live: dict[str, dict[str, Any]] = {}
    for host, raw in raw_entries.items():
        entry = json.loads(raw)
        if now - float(entry.get("at", 0)) <= WORKER_STALE_SECONDS:
            live[text(host)] = entry
    return live


def notify(celery: Celery, record: dict[str, Any]) -> None:
    """Queue the delivery of a final record to its `callback_url`, if it has one."""
    if (record.get("params") or {}).get("callback_url"):
        celery.send_task(
            TASK_CALLBACK,
            kwargs={"job_id": record["job_id"]},
            queue=QUEUE_INFERENCE,
            ignore_result=True,
        )


def enqueue(
    store: JobStore,
    celery: Celery,
    job_type: str,
    params: dict[str, Any],
    *,
    job_id: str | None = None,
    extra_kwargs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Send a job to its queue and record it; return the record.

    The job is sent first, so its delivery to a worker and the write of its record overlap
    (a worker that starts it before the record exists writes the record itself). When
    sending fails nothing is recorded and the error propagates.
    """
    job_id = job_id or new_job_id()
    task_name, queue = ALL_JOB_TYPES[job_type]
    if job_type == "retrain":  # identical retrains in flight collapse into one job
        holder = store.single_flight(
            body_digest(job_type, params), job_id, store.settings.visibility_timeout
        )
        if holder != job_id:
            return store.get(holder) or {"job_id": holder, "status": "queued"}
    submitted_at = now_iso()
    celery.send_task(
        task_name,
        kwargs={"request": params, **(extra_kwargs or {})},
        task_id=job_id,
        queue=queue,
        # Results live in the job record. Celery's send_task would otherwise ask the
        # worker to store each one a second time (its default overrides the task's).
        ignore_result=True,
        # Give up after about a second: the API answers 503 rather than a request
        # hanging on a dead broker.
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.4},
        # What Flower and the logs show of the arguments: the request as JSON, cut as
        # Celery cuts its own repr (18 us per job; the JSON takes 1.4 us).
        argsrepr="()",
        kwargsrepr=json.dumps(params)[:1024],
        # The queue is a Redis list that a publish to it makes, and each worker declares its
        # own queues: declaring it again on every send cost a sixth of the send's CPU.
        declare=[],
        **(options or {}),
    )
    return store.create(job_id, job_type, params, submitted_at)


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
        # Beat sends a small task that claims the tick, so two beats retrain once.
        schedule["retrain"] = {
            "task": TASK_SCHEDULED_RETRAIN,
            "schedule": parse_crontab(settings.retrain_schedule),
            "options": {"queue": QUEUE_INFERENCE},
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
        "task_routes": {
            **{task: {"queue": queue} for task, queue in JOB_TYPES.values()},
            TASK_SCHEDULED_RETRAIN: {"queue": QUEUE_INFERENCE},
            TASK_CALLBACK: {"queue": QUEUE_INFERENCE},
        },
        "task_default_queue": QUEUE_INFERENCE,
        # A redelivery must never start while the first delivery of a retrain still runs.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "task_track_started": False,
        # Every task is idempotent (predict and segment are pure; retrain writes a new
        # version directory and renames it into place), so each is acknowledged only once
        # it has run: a worker killed mid-task gets its job delivered again.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A pool child is replaced when its memory passes this (checked after each task),
        # not after a count of tasks: a new child loads the models again, and a cap of
        # 10,000 tasks did that about once a minute per child under full load.
        "worker_max_memory_per_child": 1_500_000,  # KiB
        "worker_hijack_root_logger": True,
        # No task events: each would be one more Redis round trip per job and state, for
        # monitors only. Flower turns them on in the workers while it runs.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "task_annotations": {
            TASK_PREDICT: _limits(settings.inference_time_limit),
            TASK_SEGMENT: _limits(settings.inference_time_limit),
            TASK_RETRAIN: _limits(settings.training_time_limit),
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


# --- registry, datasets and their quick admin jobs -----------------------------------------

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
#: Every job type -> (task name, queue), and the job type of each task.
ALL_JOB_TYPES: dict[str, tuple[str, str]] = {**JOB_TYPES, **ADMIN_JOB_TYPES}
TYPE_OF_TASK: dict[str, str] = {task: job_type for job_type, (task, _) in ALL_JOB_TYPES.items()}
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


# --- the ledger of served forecasts and its realized-accuracy report ------------------------

#: Sorted set of the model versions with a ledger, scored by their last write (epoch s).
LEDGER_INDEX_KEY = f"{KEY_PREFIX}:ledger:forecast"
#: JSON of the last realized-accuracy report, written when newer prices arrive.
ACCURACY_KEY = f"{KEY_PREFIX}:accuracy:forecast"


def ledger_key(version: str) -> str:
    """Return the Redis hash of a forecast version's served steps (`ticker|as_of|step`)."""
    return f"{LEDGER_INDEX_KEY}:{version}"
