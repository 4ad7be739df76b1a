"""How the training worker gives way to inference."""

from __future__ import annotations

from worker.tasks import training_cpus


def test_training_keeps_to_the_last_cpus_and_leaves_inference_the_rest() -> None:
    assert training_cpus({0, 1}, 1) == {1}
    assert training_cpus({0, 1, 2, 3}, 2) == {2, 3}
    assert training_cpus({4, 9, 6}, 1) == {9}
    assert training_cpus({0}, 1) is None  # one CPU: nothing to leave
    assert training_cpus({0, 1}, 2) is None
