"""Worker-side logs, wired to Celery's signals: JSON log lines carrying the job's context, and
one line per finished job. (Each finished job is counted for `/metrics` by the transition
that records its end: see `worker.observe.job_counts`.)

`worker.celery_app` imports this module, so workers and beat log the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery._state import get_current_task

from worker.config import Settings
from worker.contract import TYPE_OF_TASK
from worker.observe import job_timings, make_formatter

log = logging.getLogger("worker.jobs")


class TaskContext(logging.Filter):
    """Add the running job's `job_id` and `type` to every record logged inside a task."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drop it."""
        task = get_current_task()
        if task is not None and getattr(record, "job_id", None) is None:
            job_type = TYPE_OF_TASK.get(task.name)
            if job_type is not None:
                record.job_id = task.request.id
                record.type = job_type
        return True


def use_format(logger: logging.Logger, log_format: str) -> None:
    """Give every handler of `logger` the LOG_FORMAT formatter and the job context."""
    for handler in logger.handlers:
        handler.setFormatter(make_formatter(log_format))
        if not any(isinstance(f, TaskContext) for f in handler.filters):
            handler.addFilter(TaskContext())


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _format_logs(logger: logging.Logger, **_: Any) -> None:
    use_format(logger, Settings().log_format)
    # Celery's own "Task ... received" and "... succeeded" lines say per job what our one
    # "job <status>" line says with more context; their warnings and errors still show.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@signals.task_prerun.connect
def _job_started(sender: Any = None, task_id: str = "", **_: Any) -> None:
    job_type = TYPE_OF_TASK.get(getattr(sender, "name", ""))
    if job_type is not None:
        log.debug("job started", extra={"job_id": task_id, "type": job_type})


def log_outcome(record: dict[str, Any]) -> None:
    """Log a job's end: one line per job, with its status, model, duration and queue wait."""
    duration, wait = job_timings(record)
    log.info(
        "job %s",
        record["status"],
        extra={
            "job_id": record["job_id"],
            "type": record["type"],
            "status": record["status"],
            "model_version": record.get("model_version"),
            "duration": None if duration is None else round(duration, 4),
            "queue_wait": None if wait is None else round(wait, 4),
            "error": record.get("error"),
        },
    )
