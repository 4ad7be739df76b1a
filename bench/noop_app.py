"""A bare no-op Celery task on the product's Celery settings: the benchmark's Celery floor.

`celery -A bench.noop_app worker -Q bench` runs it in its own worker process, so the
product's workers never carry benchmark tasks.
"""

from __future__ import annotations

from celery import Celery

from worker.config import Settings
from worker.contract import celery_config

QUEUE = "bench"
TASK_NOOP = "bench.noop"


def create_noop_celery(settings: Settings | None = None) -> Celery:
    """Create a Celery app with the product's settings and one no-op task on QUEUE."""
    conf = celery_config(settings or Settings())
    # Same broker, serializers, acks, prefetch and pool limits; its own queue, no beat,
    # and the result stored so the client has something to wait for.
    conf.update(task_default_queue=QUEUE, task_routes={}, beat_schedule={}, task_annotations={})
    app = Celery("mlstock-bench", set_as_current=False)
    app.config_from_object(conf)

    @app.task(name=TASK_NOOP, ignore_result=False)
    def noop() -> None:
        """Do nothing."""

    return app


celery_app = create_noop_celery()
