"""Logs and job metrics shared by the API and the workers: a JSON-lines log formatter, the
logging setup of every process, and job counters kept in Redis.

Each finished job is counted in one Redis hash by the transition that records its end (a
few HINCRBYs in the same script, so once per job); the API's `/metrics` reads it at scrape
time. So one scrape target covers every worker, however many run, whatever their pool
(prefork children come and go), and counts survive worker restarts.
Like `worker.contract` this module imports neither `ml` nor Celery: the API may use it.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import datetime
from typing import Any

import redis

from worker.contract import METRICS_KEY, QUEUE_INFERENCE, QUEUE_TRAINING, text

# --- logs ------------------------------------------------------------------------------------

#: Attributes of every LogRecord; anything else on a record came in through `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: Context fields first in a JSON line, in this order, when a record carries them.
CONTEXT_FIELDS = ("job_id", "type", "status", "model_version", "duration", "queue_wait")


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object per line, with its `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created)
            .astimezone()
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        for key in CONTEXT_FIELDS:
            if extra.get(key) is not None:
                out[key] = extra.pop(key)
        out.update({k: v for k, v in extra.items() if v is not None and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        out["pid"] = record.process
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Format records for people, with the job context appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of text."""
        line = super().format(record)
        context = " ".join(
            f"{k}={getattr(record, k)}"
            for k in CONTEXT_FIELDS
            if getattr(record, k, None) is not None
        )
        return f"{line} [{context}]" if context else line


def make_formatter(log_format: str) -> logging.Formatter:
    """Return the formatter for LOG_FORMAT (`json`, the default, or `text`)."""
    return TextFormatter() if log_format.strip().lower() == "text" else JsonFormatter()


def gunicorn_logconfig(log_format: str) -> dict[str, Any]:
    """Return the `logging.config.dictConfig` of the API under gunicorn: everything on
    stderr in the chosen format."""
    factory = (
        "worker.observe.TextFormatter" if log_format == "text" else "worker.observe.JsonFormatter"
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": factory}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }


# --- job metrics in Redis --------------------------------------------------------------------

#: Upper bounds (seconds) of the job duration and queue wait histograms.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    900.0, 3600.0)  # fmt: skip
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
QUEUES = (QUEUE_INFERENCE, QUEUE_TRAINING)
#: kombu's Redis transport keeps priorities 3, 6 and 9 in lists named queue + this + priority.
_PRIORITY_SEP = "\x06\x16"


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


def _bucket(value: float, bounds: tuple[float, ...]) -> str:
    for bound in bounds:
        if value <= bound:
            return repr(bound)
    return "+Inf"


def job_timings(record: dict[str, Any]) -> tuple[float | None, float | None]:
    """Return a record's (run duration, queue wait) in seconds, None where unknown."""
    return (
        _seconds(record.get("started_at"), record.get("finished_at")),
        _seconds(record.get("submitted_at"), record.get("started_at")),
    )


def count_predictions(record: dict[str, Any]) -> int:
    """Return how many forecasts or segment assignments a record's result holds."""
    result = record.get("result") or {}
    return len(result.get("forecasts") or result.get("assignments") or [])


def job_counts(record: dict[str, Any]) -> dict[str, float]:
    """Return what a final record adds to the job counters (field -> increment): given to
    the final transition, which adds it once, atomically with the job's end."""
    status, job_type = record["status"], record["type"]
    duration, wait = job_timings(record)
    counts: dict[str, float] = {f"finished|{job_type}|{status}": 1}
    if duration is not None:
        counts[f"duration_bucket|{job_type}|{_bucket(duration, DURATION_BUCKETS)}"] = 1
        counts[f"duration_sum|{job_type}"] = float(duration)
        counts[f"duration_count|{job_type}"] = 1
    if wait is not None:
        counts[f"wait_bucket|{job_type}|{_bucket(wait, WAIT_BUCKETS)}"] = 1
        counts[f"wait_sum|{job_type}"] = float(wait)
        counts[f"wait_count|{job_type}"] = 1
    if status == "succeeded":
        counts[f"predictions|{job_type}"] = count_predictions(record)
    return counts


def read_job_metrics(client: redis.Redis) -> dict[str, float]:
    """Return the job counters as `name|label|...` -> value."""
    raw = client.hgetall(METRICS_KEY)
    return {text(k): float(v) for k, v in raw.items()}


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Return how many messages wait in each queue right now."""
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for key in (queue, *(f"{queue}{_PRIORITY_SEP}{p}" for p in (3, 6, 9))):
            pipe.llen(key)
    lengths = pipe.execute()
    per = len(lengths) // len(QUEUES)
    return {q: int(sum(lengths[i * per : (i + 1) * per])) for i, q in enumerate(QUEUES)}
