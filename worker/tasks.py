"""Celery tasks: thin glue between a job record and one `ml` call each."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import pandas as pd
import redis
from billiard.exceptions import WorkerLostError
from celery import Task, shared_task, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from pydantic import BaseModel, ValidationError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from threadpoolctl import threadpool_limits

from ml.data import read_prices_csv, synthetic_market
from ml.errors import MLError
from ml.forecast import latest_features
from ml.registry import DatasetStore, ModelRegistry
from ml.segment import FEATURES
from ml.train import promotion_decision, train_model
from worker.cache import ModelCache
from worker.config import Settings
from worker.contract import (
    BEAT_LAST_KEY,
    BOOTSTRAP_KEY,
    CATALOG_KEY,
    MAX_DELIVERIES,
    MODEL_NAMES,
    QUEUE_INFERENCE,
    QUEUE_TRAINING,
    TASK_CALLBACK,
    TASK_PREDICT,
    TASK_RETRAIN,
    TASK_SCHEDULED_RETRAIN,
    TASK_SEGMENT,
    TERMINAL,
    TYPE_OF_TASK,
    WORKERS_KEY,
    JobStore,
    PredictRequest,
    RetrainRequest,
    SegmentRequest,
    Status,
    enqueue,
    new_job_id,
    notify,
    now_iso,
    validation_context,
)
from worker.ledger import Ledger
from worker.lifecycle import (
    JobCancelled,
    lock_key,
    model_locks,
    post_callback,
    reconcile,
    resend,
)
from worker.observe import job_counts
from worker.results import LatestForecasts, add_history, forecast_entries, segment_result
from worker.telemetry import log_outcome

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 5.0
CATALOG_TTL_SECONDS = 60
#: Retries, with backoff, of a job that lost Redis while it ran (beyond the client's own).
MAX_TRANSIENT_RETRIES = 5

# --- per-process state, made on first use (after the prefork worker has forked) ----------


@cache
def settings() -> Settings:
    """Return this process's settings."""
    return Settings()


@cache
def redis_client() -> redis.Redis:
    """Return this process's Redis client.

    It rides out a Redis restart of up to about a minute (backoff 0.1 s to 5 s, 15 tries)
    so a job that ran during the outage still records its result when Redis is back.
    """
    return redis.Redis.from_url(
        settings().redis_url,
        health_check_interval=30,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.1), 15),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@cache
def jobs() -> JobStore:
    """Return this process's job store."""
    return JobStore(redis_client(), settings())


@cache
def registry() -> ModelRegistry:
    """Return this process's model registry."""
    return ModelRegistry(settings().artifacts_dir, signing_key=settings().signing_key)


@cache
def datasets() -> DatasetStore:
    """Return this process's dataset store."""
    return DatasetStore(settings().artifacts_dir)


@cache
def models() -> ModelCache:
    """Return this process's model cache."""
    return ModelCache(registry(), datasets())


@cache
def ledger() -> Ledger:
    """Return this process's ledger of served forecasts, its writer thread started."""
    return Ledger(redis_client, settings().ledger_ttl).start()


# --- the job lifecycle around a task body ---------------------------------------------------

Body = Callable[[Any, Callable[[float, str], None]], tuple[dict[str, Any], str | None]]


def run_job(
    task: Task, job_type: str, request: dict[str, Any], schema: type[BaseModel], body: Body
) -> None:
    """Run `body` for the job whose id is the task id, recording every transition."""
    store = jobs()
    job_id = str(task.request.id)
    started_at = now_iso()
    deliveries, submitted_at = store.start(
        job_id,
        job_type,
        request,
        # A Celery retry (after a transient error) is not another delivery.
        count_attempt=task.request.retries == 0,
        started_at=started_at,
        worker=task.request.hostname,
        stage="running",
    )
    if not deliveries:
        log.info("job %s is already final (cancelled, or a duplicate delivery): skipped", job_id)
        return
    # What the job's end is counted and logged with, known without reading the record.
    known = {"submitted_at": submitted_at, "started_at": started_at}
    end = functools.partial(finish, task.app, job_id, job_type, request=request, known=known)
    if deliveries > MAX_DELIVERIES:
        message = f"the worker running this job was lost {deliveries - 1} times"
        end("failed", error={"type": "WorkerLost", "message": message})
        return

    def progress(fraction: float, stage: str) -> None:
        if store.progress(job_id, job_type, fraction, stage) == "cancelled":
            raise JobCancelled(stage)

    try:
        parsed = schema.model_validate(request, context=validation_context(settings()))
        result, version = body(parsed, progress)
    except JobCancelled as exc:
        store.set_fields(job_id, stage=f"cancelled while {exc}")
        log.info("job %s cancelled at a checkpoint", job_id)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Transient: the job store or broker went away. Try again later, with backoff.
        if task.request.retries >= MAX_TRANSIENT_RETRIES:
            end("failed", error=_error(exc, "RedisUnavailable"))
            return
        delay = min(2**task.request.retries, 60)
        with contextlib.suppress(redis.RedisError):
            store.transition(job_id, job_type, "retrying", stage=f"retrying in {delay}s: {exc}")
        raise task.retry(exc=exc, countdown=delay, max_retries=MAX_TRANSIENT_RETRIES) from exc
    except (MLError, ValidationError, ValueError) as exc:
        end("failed", error=_error(exc))
    except SoftTimeLimitExceeded:
        end("failed", error=_timeout(task))
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        end("failed", error=_error(exc, "InternalError"))
    else:
        end("succeeded", result=result, model_version=version)


def finish(
    app: Any,
    job_id: str,
    job_type: str,
    status: Status,
    *,
    request: dict[str, Any] | None = None,
    known: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Record a final state, count and log it; queue the callback when the job has one.
    False: the job was already final.

    With the job's `request` and `known` (its `submitted_at` and `started_at`) at hand, a
    job without a callback costs one round trip to Redis: the transition.
    """
    if status == "succeeded":
        fields.update(progress=1.0, stage="done")
    fields.setdefault("stage", status)
    fields.setdefault("finished_at", now_iso())
    record = dict(known) if known is not None else (jobs().get(job_id) or {})
    record.update(fields, job_id=job_id, type=job_type, status=status)
    if not jobs().transition(job_id, job_type, status, counts=job_counts(record), **fields):
        return False
    log_outcome(record)
    if request is None or request.get("callback_url"):
        final = jobs().get(job_id)
        if final is not None:
            notify(app, final)
    return True


def _error(exc: BaseException, kind: str | None = None) -> dict[str, str]:
    message = str(exc) if kind is None else f"{type(exc).__name__}: {exc}"
    return {"type": kind or type(exc).__name__, "message": message}


def _timeout(task: Task) -> dict[str, str]:
    limit = task.time_limit or task.soft_time_limit
    return {"type": "TimeLimitExceeded", "message": f"the job ran over its time limit ({limit}s)"}


# --- tasks -----------------------------------------------------------------------------------


@shared_task(name=TASK_PREDICT, bind=True)
def predict(self: Task, request: dict[str, Any]) -> None:
    """Forecast tickers of the served dataset, or an ad-hoc price series."""
    run_job(self, "predict", request, PredictRequest, _predict)


def _predict(
    req: PredictRequest, progress: Callable[[float, str], None]
) -> tuple[dict[str, Any], str]:
    served = models().get("forecast")
    current_data_version = served.card.get("data_version")
    live = False  # a forecast from the served data's end: its actuals are still to come
    if req.prices is not None:
        last = None if req.last_date is None else req.last_date.isoformat()
        frame = served.model.predict_series(req.prices, horizon=req.horizon, last_date=last)
        forecasts = forecast_entries(frame, served.version)
    else:
        as_of = None if req.as_of is None else pd.Timestamp(req.as_of)
        latest = models().derived("forecast:latest", served, lambda s: latest_features(s.prices))
        if as_of is None or as_of >= latest.through:
            # The hot path: every ready ticker's forecast from the latest data at this
            # horizon was made once per loaded model (in one model call, from features
            # computed once); this job reads its tickers' entries.
            table = models().derived(
                f"forecast:latest:{req.horizon}",
                served,
                lambda s: LatestForecasts(s.model, latest, s.version, req.horizon),
            )
            entries = table.select(req.subject_tickers())
            if entries is None:  # a ticker without one: the model's own answer (an error)
                columns = served.model.forecast_latest(
                    latest, tickers=req.subject_tickers(), horizon=req.horizon
                )
                entries = forecast_entries(columns, served.version)
            forecasts = entries
            live = True
        else:
            # A replay: the model trained on the latest data through `as_of`, if any.
            day = as_of.date().isoformat()
            served = models().as_of("forecast", day, served, req.subject_tickers())
            frame = served.model.predict(
                served.prices, tickers=req.subject_tickers(), horizon=req.horizon, as_of=as_of
            )
            forecasts = forecast_entries(frame, served.version)
    result = {"model_version": served.version, "horizon": req.horizon, "forecasts": forecasts}
    # What the forecast stands on: the model's training cut-off and the data it serves from.
    trained_through = served.card.get("trained_through")
    result["trained_through"] = trained_through
    result["data_version"] = current_data_version
    if req.as_of is not None:
        # True when the model saw no price after `as_of`: a faithful replay of that day.
        result["point_in_time"] = trained_through is not None and trained_through <= str(req.as_of)
    if live:
        ledger().record(result)
    if req.history is not None:
        add_history(result, served.prices, req.history, as_of)
    return result, served.version


@shared_task(name=TASK_SEGMENT, bind=True)
def segment(self: Task, request: dict[str, Any]) -> None:
    """Assign tickers of the served dataset, or rows of features, to segments."""
    run_job(self, "segment", request, SegmentRequest, _segment)


def _segment(
    req: SegmentRequest, progress: Callable[[float, str], None]
) -> tuple[dict[str, Any], str]:
    served = models().get("segment")
    model = served.model
    if req.data is not None:
        frame = model.predict_features(req.data)
    else:
        # Every ticker's segment is computed once per loaded model, against the market of
        # all tickers as in training (a subset's own mean is not the market its beta means).
        frame = models().derived("segment:all", served, lambda s: s.model.predict(s.prices))
        if req.tickers is not None:
            known = set(frame["ticker"])
            unknown = [t for t in req.tickers if t not in known]
            if unknown:
                raise ValueError(f"unknown tickers: {', '.join(unknown)}")
            frame = frame[frame["ticker"].isin(req.tickers)].reset_index(drop=True)
    return segment_result(frame, model.profiles_, served.version), served.version


@shared_task(name=TASK_RETRAIN, bind=True)
def retrain(self: Task, request: dict[str, Any], trigger: str = "api") -> None:
    """Retrain models on the training dataset; promote each one that passes the gate."""
    _lower_priority()
    run_job(self, "retrain", request, RetrainRequest, _retrain)
    if trigger == "bootstrap":
        # Done: forget the claim. Failed: keep it a while, so `mlstock up` can show the
        # failure, then let the next worker start try again.
        record = jobs().get(str(self.request.id)) or {}
        if record.get("status") == "succeeded":
            redis_client().delete(BOOTSTRAP_KEY)
        elif record.get("status") in TERMINAL:
            redis_client().expire(BOOTSTRAP_KEY, 120)


def _retrain(
    req: RetrainRequest, progress: Callable[[float, str], None]
) -> tuple[dict[str, Any], None]:
    job_id = str(retrain.request.id)
    ttl = settings().training_time_limit + 60
    with model_locks(redis_client(), req.models, job_id, ttl, progress):
        return _retrain_locked(req, progress)


def _retrain_locked(
    req: RetrainRequest, progress: Callable[[float, str], None]
) -> tuple[dict[str, Any], None]:
    progress(0.0, "loading data")
    prices, data_version = training_data(settings(), datasets())
    if req.through is not None:
        prices = prices[prices["date"] <= pd.Timestamp(req.through)].reset_index(drop=True)
        if prices.empty:
            raise ValueError(f"the training data has no prices through {req.through}")
    reg = registry()
    # A staging folder older than the longest training was left by a killed one.
    reg.cleanup_tmp(min_age_seconds=settings().training_time_limit)
    out: dict[str, Any] = {"data_version": data_version, "models": {}}
    n = len(req.models)
    for i, name in enumerate(req.models):

        def step(fraction: float, stage: str, i: int = i, name: str = name) -> None:
            progress((i + fraction) / n, f"{name}: {stage}")

        out["models"][name] = train_and_register(
            reg, name, prices, data_version, step, point_in_time=req.through is not None
        )
    publish_catalog()
    return out, None


@shared_task(name=TASK_SCHEDULED_RETRAIN, bind=True)
def scheduled_retrain(self: Task) -> str | None:
    """Queue the scheduled retrain once per tick, however many beats sent this."""
    client = redis_client()
    client.set(BEAT_LAST_KEY, now_iso())
    # Ticks of a crontab are at least a minute apart, and every beat sends a tick's task
    # within moments: one claim that lives 50 s takes each tick once.
    if not client.set(f"{BEAT_LAST_KEY}:claim", str(self.request.id), nx=True, ex=50):
        log.info("this tick's retrain was already queued by another beat")
        return None
    record = enqueue(
        jobs(), self.app, "retrain", RetrainRequest().model_dump(mode="json"),
        extra_kwargs={"trigger": "schedule"},
    )  # fmt: skip
    return str(record["job_id"])


@shared_task(name=TASK_CALLBACK, bind=True, max_retries=6)
def deliver_callback(self: Task, job_id: str) -> None:
    """POST a final record to the job's callback_url, retrying with backoff."""
    store = jobs()
    record = store.get(job_id)
    if record is None:
        return
    url = str(record["params"]["callback_url"])
    attempt = self.request.retries + 1
    state: dict[str, Any] = {"url": url, "attempts": attempt}
    try:
        state["status_code"] = post_callback(
            url, record, settings().webhook_secret, allow_private=settings().webhook_allow_private
        )
        state["delivered_at"] = now_iso()
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, refused hosts
        state["last_error"] = str(exc)
        store.set_fields(job_id, callback=state)
        if self.request.retries >= (self.max_retries or 0):
            return
        raise self.retry(exc=exc, countdown=min(2**attempt, 300)) from exc
    store.set_fields(job_id, callback=state)


def train_and_register(
    reg: ModelRegistry,
    name: str,
    prices: pd.DataFrame,
    data_version: str,
    progress: Callable[[float, str], None],
    *,
    point_in_time: bool = False,
) -> dict[str, Any]:
    """Train model `name`, save it as a new version, promote it if it passes the gate.

    A `point_in_time` model (trained on a cut of the data) is kept for replays only.
    """
    params = {"horizon": settings().max_horizon} if name == "forecast" else None
    previous = reg.current_version(name)
    prior = reg.load(name)[0] if previous and name == "segment" else None
    model, metrics = train_model(name, prices, params=params, progress=progress, previous=prior)
    champion_card = reg.card(name, previous) if previous else None
    # Metrics on other data do not compare: a champion trained on another dataset is no
    # yardstick, so the challenger then only has to pass the checks a first model passes.
    same_data = champion_card is not None and champion_card["data_version"] == data_version
    champion = champion_card["metrics"] if same_data and champion_card else None
    progress(0.95, "saving")
    card = reg.save(
        name,
        model,
        metrics=metrics,
        params=model.get_params(),
        data_version=data_version,
        trained_through=str(prices["date"].max().date()),
    )
    promoted, reason = promotion_decision(
        name,
        metrics,
        champion,
        tolerance=settings().promotion_tolerance,
        coverage_band=settings().coverage_band,
    )
    if point_in_time:
        promoted = False
        through = card["trained_through"]
        reason = f"point-in-time model for replays (data through {through}); gate: {reason}"
    elif champion_card is not None and not same_data:
        old = champion_card["data_version"]
        reason = f"trained on new data ({data_version}; the champion on {old}), {reason}"
    reg.record_decision(name, card["version"], promoted=promoted, reason=reason)
    return {
        "version": card["version"],
        "metrics": metrics,
        "promoted": promoted,
        "reason": reason,
        "previous": previous,
    }


def training_data(conf: Settings, store: DatasetStore) -> tuple[pd.DataFrame, str]:
    """Return the prices to train on and their dataset version: DATA_PATH, else the active
    imported dataset, else the seeded synthetic market."""
    if conf.data_path is not None:
        meta = store.save(read_prices_csv(conf.data_path), source=str(conf.data_path))
    elif (active := store.active()) is not None:
        return store.load(active), active
    else:
        meta = store.save(
            synthetic_market(seed=conf.synthetic_seed),
            source=f"synthetic seed={conf.synthetic_seed}",
        )
    version = str(meta["version"])
    return store.load(version), version


def _lower_priority() -> None:
    """Make training yield the CPU to inference workers on the same machine.

    Niced, and on Linux in the idle scheduling class, so a waking inference process
    preempts it at once; and kept on the last CPUs (as many as its BLAS threads), so
    inference has the others to itself. Measured on 2 cores, a CPU-bound idle-class
    process moved sequential predicts from 3.8 to 4.7 ms (p50; p99 5.1 to 11.9 ms)
    when free to run on either CPU, and to 4.0 ms (p99 6.0 ms) when kept on one.
    """
    target = settings().training_nice
    current = os.nice(0)
    if current < target:
        os.nice(target - current)
    if target > 0 and hasattr(os, "sched_setscheduler"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if target > 0 and hasattr(os, "sched_setaffinity"):
        cpus = training_cpus(os.sched_getaffinity(0), settings().worker_threads)
        if cpus is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)


def training_cpus(allowed: set[int], threads: int) -> set[int] | None:
    """Return the CPUs a retrain keeps to: the last `threads` of those allowed, or None
    (no restriction) when that would leave inference no CPU of its own."""
    if len(allowed) <= threads:
        return None
    return set(sorted(allowed)[-threads:])


# --- process setup, heartbeat and the catalog the API validates against ---------------------


_PER_PROCESS = (settings, redis_client, jobs, registry, datasets, models, ledger)


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    # A forked child starts with its own connections and models, never its parent's.
    for made in _PER_PROCESS:
        made.cache_clear()
    # One BLAS/OpenMP thread per prefork child: N children x M threads on N cores thrash.
    threadpool_limits(limits=settings().worker_threads)


@signals.task_failure.connect
def _record_lost(sender: Any = None, task_id: str = "", exception: Any = None, **_: Any) -> None:
    # Sent by the worker's main process when a child died or hit its hard time limit and
    # the job will not be delivered again: the child could not record it, so we do.
    job_type = TYPE_OF_TASK.get(getattr(sender, "name", ""))
    if job_type is None or not isinstance(exception, WorkerLostError | TimeLimitExceeded):
        return
    if isinstance(exception, TimeLimitExceeded):
        error = _timeout(sender)
    else:
        error = {"type": "WorkerLost", "message": f"the worker running the job died: {exception}"}
    finish(sender.app, task_id, job_type, "failed", error=error)


def catalog() -> dict[str, Any]:
    """Describe the models being served, for the API's readiness check and validation."""
    reg, store = registry(), datasets()
    out: dict[str, Any] = {}
    for name in MODEL_NAMES:
        version = reg.current_version(name)
        if version is None:
            continue
        card = reg.card(name, version)
        entry: dict[str, Any] = {"version": version, "trained_through": card.get("trained_through")}
        if name == "forecast":
            entry["horizon"] = card["params"].get("horizon")
            entry["tickers"] = store.meta(card["data_version"])["tickers"]
        else:
            entry["features"] = list(FEATURES)
            entry["tickers"] = store.meta(card["data_version"])["tickers"]
        out[name] = entry
    return out


def publish_catalog() -> None:
    """Write the catalog of served models to Redis."""
    # Refreshed by every heartbeat; gone a minute after the last inference worker.
    redis_client().set(CATALOG_KEY, json.dumps(catalog()), ex=CATALOG_TTL_SECONDS)


class Heartbeat(threading.Thread):
    """Announce this worker (and, on inference workers, the served models) every few
    seconds, and take part in sending lost jobs again."""

    def __init__(self, app: Any, hostname: str, queues: list[str]) -> None:
        super().__init__(name="mlstock-heartbeat", daemon=True)
        self.app = app
        self.hostname = hostname
        self.queues = queues
        self.stopped = threading.Event()

    def beat(self) -> None:
        """Write one heartbeat."""
        # The catalog goes first: a worker seen alive already has its models announced.
        if QUEUE_INFERENCE in self.queues:
            publish_catalog()
        conf = settings()
        entry = {
            "queues": self.queues,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "at": time.time(),
            # What /ready checks the deployment against (the workers' view, not the API's).
            "config": {
                "visibility_timeout": conf.visibility_timeout,
                "training_time_limit": conf.training_time_limit,
                "worker_threads": conf.worker_threads,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "signing_key": conf.signing_key is not None,
                "result_ttl": conf.result_ttl,
            },
        }
        redis_client().hset(WORKERS_KEY, self.hostname, json.dumps(entry))
        for job_id in reconcile(redis_client(), jobs(), self.app):
            log.warning("job %s had lost its message: sent again", job_id)

    def run(self) -> None:
        """Beat until stopped; a passing Redis outage only skips beats."""
        while not self.stopped.is_set():
            try:
                self.beat()
            except (redis.RedisError, OSError, MLError) as exc:
                log.warning("heartbeat skipped: %s", exc)
            self.stopped.wait(HEARTBEAT_SECONDS)


_heartbeat: Heartbeat | None = None


def bootstrap_models(app: Any) -> str | None:
    """Queue one retrain of the models the registry lacks; return its job id if queued.

    Every training worker calls this at start; a Redis key lets only the first one queue it.
    """
    missing = [name for name in MODEL_NAMES if registry().current_version(name) is None]
    if not missing:
        return None
    job_id = new_job_id()
    if not redis_client().set(BOOTSTRAP_KEY, job_id, nx=True, ex=settings().training_time_limit):
        return None
    enqueue(
        jobs(), app, "retrain", {"models": missing}, job_id=job_id,
        extra_kwargs={"trigger": "bootstrap"},
    )  # fmt: skip
    log.info("no current %s model: queued retrain %s", " or ".join(missing), job_id)
    return job_id


def recover_orphans(app: Any, hostname: str) -> list[str]:
    """Send again the jobs a previous run of this worker left running when it died.

    Their messages wait unacknowledged until Redis's visibility timeout (longer than the
    longest training); a worker name is unique among live workers, so a job recorded as
    running here belongs to a dead predecessor. A late original delivery finds the job
    final and is skipped.
    """
    orphans = [
        record
        for status in ("running", "retrying")
        for record in jobs().list(status=status, limit=1000)[0]
        if record["worker"] == hostname
    ]
    for record in orphans:
        resend(app, record)
        log.warning("job %s was left running by a dead %s: sent again", record["job_id"], hostname)
    return [str(r["job_id"]) for r in orphans]


def _cleanup_staging() -> None:
    # With no retrain holding a lock, any staging folder is a killed training's leftover.
    if not any(redis_client().scan_iter(match=lock_key("*"), count=100)):
        # Older than a minute: a promotion's pointer file written right now is kept.
        registry().cleanup_tmp(min_age_seconds=60)
        datasets().cleanup_tmp(min_age_seconds=60)


@signals.worker_ready.connect
def _on_worker_ready(sender: Any, **_: Any) -> None:
    global _heartbeat
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    recover_orphans(sender.app, sender.hostname)
    if QUEUE_TRAINING in queues:
        _cleanup_staging()
        bootstrap_models(sender.app)
    _heartbeat = Heartbeat(sender.app, sender.hostname, queues)
    _heartbeat.start()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stopped.set()
        try:
            redis_client().hdel(WORKERS_KEY, _heartbeat.hostname)
        except redis.RedisError:
            pass
