"""Schemathesis against `/openapi.json` on a live stack of its own: gunicorn, Redis and an
inference worker serving copies of the suite's first models, with API keys of each role.

Every generated request, valid or not, with no key and with a key of each role, must get
an answer that is not a 5xx and that matches its description: a documented status code,
its media type, its body schema and its required headers. Fuzzed promotes, activations and
cancels only touch this stack; fuzzed retrains and imports are queued but never run (the
stack has no training worker), so the suite does not train for them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from mlstock.launcher import COMMANDS
from tests.conftest import Stack
from tests.procs import service_env, start, start_redis, stop
from tests.served import Served, serve_api

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
hypothesis = pytest.importorskip("hypothesis")
requests = pytest.importorskip("requests")

pytestmark = pytest.mark.integration
#: Role -> API key of the fuzzed stack (None: no key).
KEYS: dict[str, str | None] = {
    "none": None,
    "read": "fuzz-read-key",
    "submit": "fuzz-submit-key",
    "admin": "fuzz-admin-key",
}
#: Generated cases per operation, role and mode (valid and invalid data); FUZZ_EXAMPLES
#: raises it for a longer hunt.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
MIN_CASES = 1000


@dataclass
class FuzzStack:
    """The fuzzed API and its Redis."""

    api: Served
    redis_url: str


@pytest.fixture(scope="module")
def fuzz_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    """Start Redis, an inference worker on a copy of the suite's models, and the API with
    keys of each role, no rate limit, no callbacks and short waits."""
    root = tmp_path_factory.mktemp("fuzz")
    artifacts = root / "artifacts"
    shutil.copytree(
        stack.artifacts,
        artifacts,
        ignore=shutil.ignore_patterns(".tmp-*", "celerybeat-schedule*", "*.lock"),
    )
    redis_proc, url = start_redis(root)
    settings = {
        "API_KEYS": ",".join(f"{key}:{role}" for role, key in KEYS.items() if key),
        "RATE_LIMIT": "",
        "WEBHOOK_SECRET": "",
        "WAIT_MAX": "1",
        "SYNC_WAIT": "0",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = service_env(url, artifacts, RETRAIN_SCHEDULE="", **settings)
        procs.append(start(COMMANDS["worker-inference"], env, root / "worker.log"))
        _wait_for(lambda: _published(url), root / "worker.log")
        api = serve_api(url, artifacts, root, **settings)
        procs.append(api.proc)
        yield FuzzStack(api, url)
    finally:
        for proc in procs:
            stop(proc)
        stop(redis_proc)


def _published(url: str) -> bool:
    client = redis.Redis.from_url(url)
    catalog = json.loads(client.get("mlstock:catalog") or "{}")
    return {"forecast", "segment"} <= set(catalog) and bool(client.exists("mlstock:registry"))


def _wait_for(ready: Callable[[], bool], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fuzz worker never published:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def _checks() -> list[Any]:
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
        """No 5xx, except the 503 of `/ready` (this stack has no training worker)."""
        if case.operation.label == "GET /ready":
            return None
        return not_a_server_error(ctx, response, case)

    return [
        no_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]


@dataclass
class Tally:
    """What the fuzzing ran and found."""

    base: str
    checks: list[Any]
    session: Any
    ran: dict[str, int]
    statuses: dict[int, int]
    failures: dict[str, str]
    #: Operation -> the first job id it answered with (a real job to read and cancel).
    jobs: dict[str, str] = field(default_factory=dict)

    def fuzz(
        self, operation: Any, mode: Any, role: str, examples: int = EXAMPLES, **fixed: Any
    ) -> None:
        """Run `examples` generated cases of `operation` with the key of `role`; `fixed`
        are inputs not generated (e.g. `path_parameters` naming a real job)."""
        from hypothesis import HealthCheck, Phase, given, settings

        key = KEYS[role]
        headers = {"X-API-Key": key} if key else {}

        @given(case=operation.as_strategy(generation_mode=mode, **fixed))
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            self.ran[operation.label] = self.ran.get(operation.label, 0) + 1
            try:
                response = case.call_and_validate(
                    base_url=self.base, session=self.session, headers=headers, checks=self.checks
                )
                self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                if response.status_code in (200, 202):
                    self._note_job(operation.label, response)
            except (Exception, BaseExceptionGroup) as exc:  # collected, reported at the end
                self.failures.setdefault(f"{operation.label} [{role}]", str(exc)[:3000])

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            pass  # no invalid value exists for this operation's inputs (e.g. any-string keys)

    def _note_job(self, label: str, response: Any) -> None:
        try:
            job_id = response.json().get("job_id")
        except (ValueError, AttributeError):
            return  # not a JSON object: no job
        if isinstance(job_id, str):
            self.jobs.setdefault(label, job_id)


def _has_inputs(operation: Any) -> bool:
    parts = ("path_parameters", "query", "headers", "cookies", "body")
    return any(len(getattr(operation, part)) for part in parts)


def _fuzz_real_things(tally: Tally, operations: dict[str, Any], ticker: str) -> None:
    """Generated requests rarely name a job, model version or dataset that exists: fuzz
    the routes that read and change them with real ones as well."""
    from schemathesis import GenerationMode

    positive = GenerationMode.POSITIVE
    admin = {"X-API-Key": KEYS["admin"]}
    for job_type, body in (("predict", {"ticker": ticker}), ("segment", {}),
                           ("retrain", {"models": ["segment"]})):  # fmt: skip
        answer = tally.session.post(f"{tally.base}/jobs/{job_type}", json=body, headers=admin)
        assert answer.status_code == 202, answer.text
        tally.jobs.setdefault(f"POST /jobs/{job_type}", answer.json()["job_id"])
    for job_id in list(tally.jobs.values()):
        fixed = {"path_parameters": {"job_id": job_id}}
        for role in ("none", "read", "admin"):
            tally.fuzz(operations["GET /result/{job_id}"], positive, role, 3, **fixed)
        tally.fuzz(operations["DELETE /jobs/{job_id}"], positive, "admin", 2, **fixed)
        tally.fuzz(operations["GET /forecast/{job_id}"], positive, "none", 1, **fixed)
    for name in ("forecast", "segment"):
        model = tally.session.get(f"{tally.base}/models/{name}", headers=admin, timeout=10).json()
        for card in model["versions"][:2]:
            fixed = {"path_parameters": {"name": name, "version": card["version"]}}
            tally.fuzz(operations["GET /models/{name}/{version}"], positive, "read", 2, **fixed)
    listing = tally.session.get(f"{tally.base}/datasets", headers=admin, timeout=10).json()
    for meta in listing["datasets"][:2]:
        fixed = {"path_parameters": {"version": meta["version"]}}
        tally.fuzz(operations["GET /datasets/{version}"], positive, "read", 2, **fixed)


def test_fuzz_every_route_with_every_role(fuzz_stack: FuzzStack) -> None:
    from schemathesis import GenerationMode

    base = fuzz_stack.api.url
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    tally = Tally(base, _checks(), requests.Session(), {}, {}, {})
    started = time.monotonic()
    for role in KEYS:
        for operation in operations:
            tally.fuzz(operation, GenerationMode.POSITIVE, role)
            if _has_inputs(operation):  # invalid data exists only for an operation with inputs
                tally.fuzz(operation, GenerationMode.NEGATIVE, role)
    catalog = json.loads(redis.Redis.from_url(fuzz_stack.redis_url).get("mlstock:catalog") or "")
    _fuzz_real_things(tally, {op.label: op for op in operations}, catalog["forecast"]["tickers"][0])
    total = sum(tally.ran.values())
    print(
        f"\nschemathesis: {total} cases over {len(tally.ran)} operations and {len(KEYS)} roles "
        f"in {time.monotonic() - started:.0f} s; statuses {dict(sorted(tally.statuses.items()))}"
    )
    assert not tally.failures, "\n\n".join(f"{k}:\n{v}" for k, v in tally.failures.items())
    assert len(tally.ran) == len(operations) and total >= MIN_CASES, tally.ran
    assert "unhandled error" not in fuzz_stack.api.log()


def test_a_body_that_breaks_its_description_is_caught(fuzz_stack: FuzzStack) -> None:
    """The checks above can fail: describe `/health` wrongly and the same call fails."""
    base = fuzz_stack.api.url
    spec = requests.get(base + "/openapi.json", timeout=10).json()
    spec["components"]["schemas"]["Health"]["properties"]["status"] = {"const": "fine"}
    operation = schemathesis.openapi.from_dict(spec)["/health"]["GET"]
    case = operation.Case()
    with pytest.raises(BaseExceptionGroup) as failed:
        case.call_and_validate(base_url=base, checks=_checks())
    assert "fine" in str(failed.value) or "schema" in str(failed.value).lower()
