"""Worker-side logs and metrics, wired to Celery's signals: JSON log lines carrying the job's
context, and each finished job counted in Redis for the API's `/metrics`.

`worker.celery_app` imports this module, so workers and beat log the same way. Task code is
imported lazily: beat never loads the models' libraries for it.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import signals
from celery._state import get_current_task
from celery.exceptions import TimeLimitExceeded

from worker.config import Settings
from worker.contract import TYPE_OF_TASK
from worker.observe import job_timings, make_formatter, record_finished

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


@signals.task_prerun.connect
def _job_started(sender: Any = None, task_id: str = "", **_: Any) -> None:
    job_type = TYPE_OF_TASK.get(getattr(sender, "name", ""))
    if job_type is not None:
        log.info("job started", extra={"job_id": task_id, "type": job_type})


def count_job(task_id: str) -> None:
    """Count a finished job and log its outcome; nothing when it is not final."""
    from worker.tasks import jobs, redis_client

    store = jobs()
    record = store.get(task_id)
    if record is None or not record_finished(
        redis_client(), record, store.ttl(str(record["type"]))
    ):
        return
    duration, wait = job_timings(record)
    log.info(
        "job %s",
        record["status"],
        extra={
            "job_id": task_id,
            "type": record["type"],
            "status": record["status"],
            "model_version": record.get("model_version"),
            "duration": None if duration is None else round(duration, 4),
            "queue_wait": None if wait is None else round(wait, 4),
            "error": record.get("error"),
        },
    )


@signals.task_postrun.connect
def _job_ended(sender: Any = None, task_id: str = "", **_: Any) -> None:
    if TYPE_OF_TASK.get(getattr(sender, "name", "")) is None:
        return
    try:
        count_job(task_id)
    except Exception:  # metrics must never fail a job
        log.exception("could not count job %s", task_id)


@signals.task_failure.connect
def _job_lost(sender: Any = None, task_id: str = "", exception: Any = None, **_: Any) -> None:
    # A child that died or hit its hard limit runs no postrun: the main process counts it.
    if TYPE_OF_TASK.get(getattr(sender, "name", "")) is None:
        return
    if isinstance(exception, WorkerLostError | TimeLimitExceeded):
        try:
            count_job(task_id)
        except Exception:
            log.exception("could not count job %s", task_id)
