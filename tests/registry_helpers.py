"""Helpers for tests that read the registry over HTTP or add versions to it on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from ml.registry import ModelRegistry
from tests.procs import SIGNING_KEY


def listing(client: FlaskClient, name: str, timeout: float = 30) -> dict[str, Any]:
    """Return GET /models/<name> once the workers have published it."""
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/models/{name}")
        if resp.status_code == 200:
            data: dict[str, Any] = resp.get_json()
            if data["current"]:
                return data
        assert time.monotonic() < deadline, resp.get_json()
        time.sleep(0.5)


def wait_listed(client: FlaskClient, name: str, version: str, timeout: float = 30) -> None:
    """Wait until the published listing holds `version` of model `name`."""
    deadline = time.monotonic() + timeout
    while version not in {v["version"] for v in listing(client, name)["versions"]}:
        assert time.monotonic() < deadline, f"{name} {version} never listed"
        time.sleep(0.5)


def copy_version(artifacts: Path, name: str, *, key: str | None = SIGNING_KEY) -> str:
    """Save the current model `name` again as a new, unpromoted version; return it."""
    signed = ModelRegistry(artifacts, signing_key=SIGNING_KEY.encode())
    model, card = signed.load(name)
    writer = ModelRegistry(artifacts, signing_key=None if key is None else key.encode())
    new = writer.save(
        name,
        model,
        metrics=card["metrics"],
        params=card["params"],
        data_version=card["data_version"],
        trained_through=card["trained_through"],
    )
    return str(new["version"])


def flip_byte(path: Path, at: int | None = None) -> None:
    """Flip one byte of a file in place (a new mtime, same size)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0xFF
    time.sleep(0.01)
    path.write_bytes(bytes(data))


def set_card(artifacts: Path, name: str, version: str, **fields: Any) -> None:
    """Rewrite fields of a version's card on disk."""
    path = artifacts / "models" / name / version / "card.json"
    card = json.loads(path.read_text())
    card.update(fields)
    path.write_text(json.dumps(card))
