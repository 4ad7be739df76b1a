"""Model registry and dataset store on disk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ml.data import synthetic_market, validate_prices
from ml.errors import ArtifactError, RegistryError
from ml.registry import DatasetStore, ModelRegistry, atomic_write

MODEL = {"weights": [1, 2, 3]}  # any picklable object stands in for a model


def _save(
    registry: ModelRegistry, name: str = "forecast", through: str = "2025-12-31"
) -> dict[str, object]:
    return registry.save(
        name,
        MODEL,
        metrics={"mae": 0.1},
        params={"p": 1},
        data_version="abc",
        trained_through=through,
    )


def test_the_version_for_a_point_in_time_saw_no_later_data(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    cuts = ["2025-06-30", "2025-09-30", "2025-09-30", "2025-12-31"]
    versions = [str(_save(registry, through=cut)["version"]) for cut in cuts]
    assert registry.trained_through("forecast", "2025-06-29") is None
    assert registry.trained_through("forecast", "2025-06-30") == versions[0]
    assert registry.trained_through("forecast", "2025-09-29") == versions[0]
    assert registry.trained_through("forecast", "2025-10-15") == versions[2]  # newest of a tie
    assert registry.trained_through("forecast", "2026-01-05") == versions[3]
    assert registry.trained_through("segment", "2026-01-05") is None
    # Only versions the caller accepts (e.g. trained on data holding the tickers asked for).
    older = {versions[0], versions[1]}
    pick = registry.trained_through(
        "forecast", "2026-01-05", accept=lambda c: c["version"] in older
    )
    assert pick == versions[1]


def test_save_promote_load_round_trip(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    card = _save(registry)
    version = str(card["version"])
    assert card["promoted"] is False and len(str(card["sha256"])) == 64
    assert set(card["libraries"]) == {"python", "numpy", "pandas", "sklearn", "joblib"}  # type: ignore[arg-type]
    assert registry.current_version("forecast") is None
    with pytest.raises(RegistryError):
        registry.load("forecast")
    promoted = registry.promote("forecast", version, reason="first")
    assert promoted["promoted"] is True and promoted["reason"] == "first"
    assert (tmp_path / "models/forecast/CURRENT").read_text().strip() == version
    model, loaded_card = registry.load("forecast")
    assert model == MODEL and loaded_card == registry.card("forecast", version)
    assert registry.names() == ["forecast"]


def test_versions_newest_first_and_rollback(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    versions = [str(_save(registry)["version"]) for _ in range(3)]
    assert registry.versions("forecast") == sorted(versions, reverse=True) == versions[::-1]
    registry.promote("forecast", versions[2], reason="newest")
    registry.promote("forecast", versions[0], reason="rollback")
    assert registry.current_version("forecast") == versions[0]
    kept = registry.record_decision("forecast", versions[1], promoted=False, reason="worse")
    assert kept["promoted"] is False and kept["reason"] == "worse"


def test_tampered_or_missing_artifact(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    version = str(_save(registry)["version"])
    path = tmp_path / "models/forecast" / version / "model.joblib"
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ArtifactError, match="sha256"):
        registry.load("forecast", version)
    path.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        registry.load("forecast", version)


def test_signed_registry_rejects_unsigned_or_forged_cards(tmp_path: Path) -> None:
    unsigned = str(_save(ModelRegistry(tmp_path))["version"])
    signed = ModelRegistry(tmp_path, signing_key=b"secret")
    version = str(_save(signed)["version"])
    assert signed.load("forecast", version)[0] == MODEL
    with pytest.raises(ArtifactError, match="signature"):
        signed.load("forecast", unsigned)
    with pytest.raises(ArtifactError, match="signature"):
        ModelRegistry(tmp_path, signing_key=b"other").load("forecast", version)


def test_unknown_names_and_versions(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    _save(registry)
    with pytest.raises(RegistryError):
        registry.card("forecast", "20990101T000000000000Z")
    with pytest.raises(RegistryError):
        registry.promote("forecast", "../../etc", reason="x")
    with pytest.raises(RegistryError):
        registry.versions("../up")
    assert registry.versions("segment") == []


def test_cleanup_tmp_removes_leftovers_only(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    version = str(_save(registry)["version"])
    leftover = tmp_path / "models/forecast/.tmp-dead"
    leftover.mkdir()
    (leftover / "model.joblib").write_bytes(b"partial")
    assert registry.versions("forecast") == [version]  # never listed
    assert registry.cleanup_tmp(min_age_seconds=3600) == 0  # could be a save in progress
    assert registry.cleanup_tmp() == 1
    assert not leftover.exists() and registry.versions("forecast") == [version]


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "CURRENT"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["CURRENT"]


def test_dataset_store_is_idempotent_by_content(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    prices = synthetic_market(n_sectors=2, tickers_per_sector=2, n_days=80)
    meta = store.save(prices, source="synthetic")
    again = store.save(prices.sample(frac=1, random_state=0), source="upload")
    assert again == meta and len(meta["version"]) == 16
    assert meta["rows"] == 320 and meta["tickers"] == sorted(prices["ticker"].unique())
    assert meta["end"] == "2025-12-31" and meta["source"] == "synthetic"
    pd.testing.assert_frame_equal(store.load(meta["version"]), validate_prices(prices))
    assert store.active() is None
    store.activate(meta["version"])
    assert store.active() == meta["version"]
    other = store.save(prices.assign(close=prices["close"] * 2), source="doubled")
    assert [m["version"] for m in store.list()] == [other["version"], meta["version"]]
    with pytest.raises(RegistryError):
        store.load("0123456789abcdef")


def test_dataset_store_keeps_adjusted_prices(tmp_path: Path) -> None:
    raw = synthetic_market(n_sectors=1, tickers_per_sector=1, n_days=70)
    raw = raw.assign(adj_close=raw["close"], close=raw["close"] * 2)
    tidy = validate_prices(raw)
    store = DatasetStore(tmp_path)
    loaded = store.load(store.save(tidy, source="upload")["version"])
    pd.testing.assert_frame_equal(loaded, tidy)
