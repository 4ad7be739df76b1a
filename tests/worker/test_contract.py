"""The contract the API validates with agrees with the models the workers serve."""

from __future__ import annotations

from ml.forecast import MIN_HISTORY
from worker.contract import ALL_JOB_TYPES, MIN_SERIES, TYPE_OF_TASK, PredictRequest


def test_min_series_is_the_forecasters_min_history() -> None:
    assert MIN_SERIES == MIN_HISTORY
    PredictRequest.model_validate({"prices": [100.0] * MIN_HISTORY})


def test_every_task_maps_back_to_its_job_type() -> None:
    assert {TYPE_OF_TASK[task] for task, _ in ALL_JOB_TYPES.values()} == set(ALL_JOB_TYPES)
