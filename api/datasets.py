"""Datasets over HTTP: upload a prices CSV, list and inspect versions, choose the one
training uses.

The API does not parse the file: it stores the bytes in Redis (with a TTL) and queues an
import job; a worker validates the file and stores it versioned by content hash.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, request

from api.admin import enqueue, outcome, published, redis_client, settings
from api.auth import principal
from api.errors import ApiError, validation_problem
from api.schemas import Dataset, DatasetList, reply
from worker.contract import DATASET_VERSION_PATTERN, DATASETS_KEY, new_job_id, upload_key

bp = Blueprint("datasets", __name__)
#: Content types accepted as the raw body of an upload (multipart is accepted too).
RAW_TYPES = {
    "text/csv",
    "application/csv",
    "text/plain",
    "application/gzip",
    "application/x-gzip",
    "application/octet-stream",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(name: str, default: bool) -> bool:
    raw = request.args.get(name, request.form.get(name) if request.form else None)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise validation_problem([{"loc": (name,), "msg": "must be true or false", "type": "bool"}])


def _upload() -> tuple[bytes, str | None]:
    """Return the uploaded bytes and file name, from multipart or a raw body."""
    if request.mimetype == "multipart/form-data":
        files = request.files
        if not files:
            raise validation_problem(
                [{"loc": ("file",), "msg": "attach the CSV as the form field 'file'",
                  "type": "missing"}]
            )  # fmt: skip
        storage = files.get("file") or next(iter(files.values()))
        return storage.read(), storage.filename
    if request.mimetype not in RAW_TYPES:
        raise ApiError(
            415,
            "Unsupported media type",
            "send the CSV as text/csv (or gzip as application/gzip), or as multipart/form-data "
            "with the field 'file'",
        )
    return request.get_data(cache=False), request.args.get("filename")


@bp.post("/datasets")
def upload() -> Response:
    """Store an uploaded prices CSV and queue its import (validation and storing)."""
    activate = _flag("activate", True)
    data, filename = _upload()
    if not data.strip():
        raise validation_problem([{"loc": ("file",), "msg": "the file is empty", "type": "empty"}])
    conf = settings()
    job_id = new_job_id()
    key = upload_key(job_id)
    redis_client().set(key, data, ex=conf.upload_ttl)
    params: dict[str, Any] = {
        "upload_key": key,
        "filename": filename,
        "size": len(data),
        "activate": activate,
        "by": principal(),
    }
    enqueue(
        "import",
        params,
        job_id=job_id,
        time_limit=conf.training_time_limit,
        soft_time_limit=max(1, conf.training_time_limit - 30),
    )
    return outcome(job_id, conf.sync_wait, failed_status=422)


def _summary(meta: dict[str, Any], active: str | None) -> dict[str, Any]:
    tickers = meta.get("tickers") or []
    return {
        **{k: v for k, v in meta.items() if k != "tickers"},
        "n_tickers": len(tickers),
        "active": meta.get("version") == active,
    }


@bp.get("/datasets")
def list_datasets() -> Response:
    """List the stored datasets, newest first, and which one training uses."""
    listing = published(DATASETS_KEY, "dataset listing")
    active = listing.get("active")
    return reply(
        DatasetList, active=active, datasets=[_summary(m, active) for m in listing["datasets"]]
    )


def _dataset(version: str) -> tuple[dict[str, Any], str | None]:
    if not re.match(DATASET_VERSION_PATTERN, version):
        raise validation_problem(
            [{"loc": ("version",), "msg": "a dataset version is 16 hex digits",
              "type": "string_pattern_mismatch"}]
        )  # fmt: skip
    listing = published(DATASETS_KEY, "dataset listing")
    for meta in listing["datasets"]:
        if meta.get("version") == version:
            return meta, listing.get("active")
    raise ApiError(404, "Dataset not found", f"no dataset version {version!r}")


@bp.get("/datasets/<version>")
def get_dataset(version: str) -> Response:
    """Return one dataset: tickers, date range, rows, source and problems (none once stored)."""
    meta, active = _dataset(version)
    return reply(Dataset, **{**meta, "active": version == active, "problems": []})


@bp.post("/datasets/<version>/activate")
def activate(version: str) -> Response:
    """Make a stored dataset the one the next retrain uses."""
    _dataset(version)
    job_id = enqueue("activate", {"version": version, "by": principal()})
    return outcome(job_id, settings().sync_wait)
