"""The contract the API validates with agrees with the models the workers serve; stored
job records read back as they were written."""

from __future__ import annotations

import json

from ml.forecast import MIN_HISTORY
from worker.contract import (
    ALL_JOB_TYPES,
    MIN_SERIES,
    RECORD_FIELDS,
    TYPE_OF_TASK,
    PredictRequest,
    decode_record,
    raw_status,
    record_json,
)


def test_min_series_is_the_forecasters_min_history() -> None:
    assert MIN_SERIES == MIN_HISTORY
    PredictRequest.model_validate({"prices": [100.0] * MIN_HISTORY})


def test_every_task_maps_back_to_its_job_type() -> None:
    assert {TYPE_OF_TASK[task] for task, _ in ALL_JOB_TYPES.values()} == set(ALL_JOB_TYPES)


def test_a_stored_record_passes_through_as_the_json_its_values_make() -> None:
    """`record_json` (what the API answers, without decoding a result) says exactly what
    decoding the stored fields and encoding them again says, in the same field order."""
    values = {
        "status": "succeeded",
        "result": {"forecasts": [{"ticker": "TEC01", "steps": [{"close": 101.25}]}]},
        "job_id": "j1",
        "error": None,
        "params": {"ticker": "TEC01", "note": 'a "quoted" \u00e9 value'},
        "progress": 1.0,
        "callback": {"status": "delivered"},  # not one of RECORD_FIELDS: comes last
    }
    raw = {name: json.dumps(value) for name, value in values.items()}
    decoded = decode_record(raw)
    assert list(decoded)[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    passed = json.loads(record_json(raw))
    assert passed == decoded
    assert list(passed) == list(decoded)
    assert raw_status(raw) == "succeeded"
