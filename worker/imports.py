"""The dataset import job: validate an upload the API stored in Redis and store it as a
dataset version (by content hash). A bad file changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task

from ml.errors import DataValidationError
from ml.ingest import read_upload
from worker.accuracy import rescore
from worker.admin import publish_registry
from worker.contract import TASK_IMPORT, ImportRequest
from worker.tasks import datasets, jobs, redis_client, run_job, settings

log = logging.getLogger(__name__)


@shared_task(name=TASK_IMPORT, bind=True)
def import_dataset(self: Task, request: dict[str, Any]) -> None:
    """Validate an uploaded prices CSV and store it as a new dataset version."""
    job_id = str(self.request.id)

    def body(
        req: ImportRequest, progress: Callable[[float, str], None]
    ) -> tuple[dict[str, Any], None]:
        return _import(job_id, req, progress), None

    run_job(self, "import", request, ImportRequest, body)  # a Retry propagates: upload kept
    redis_client().delete(str(request.get("upload_key", "")))


def _import(
    job_id: str, req: ImportRequest, progress: Callable[[float, str], None]
) -> dict[str, Any]:
    data = redis_client().get(req.upload_key)
    if isinstance(data, str):
        data = data.encode()
    if data is None:
        raise ValueError("the upload expired before its import ran; send the file again")
    progress(0.1, "validating")
    try:
        prices = read_upload(data, max_bytes=settings().max_dataset_bytes)
    except DataValidationError as exc:
        # Every problem goes on the record, not only the few the message spells out.
        jobs().set_fields(job_id, problems=exc.problems)
        raise
    progress(0.6, "storing")
    store = datasets()
    known = {m["version"] for m in store.list()}
    meta = store.save(prices, source=f"upload {req.filename or '(unnamed)'} by {req.by}")
    version = str(meta["version"])
    if req.activate:
        store.activate(version)
    log.info("dataset %s imported by %s (%d rows)", version, req.by, meta["rows"])
    publish_registry()  # the listing shows the new dataset by the time the job ends
    if req.activate:
        rescore(version, prices)  # newer prices: judge the forecasts served before them
    return {
        "dataset": meta,
        "version": version,
        "new": version not in known,
        "active": store.active() == version,
        "problems": [],
    }
