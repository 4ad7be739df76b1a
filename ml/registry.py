"""On-disk model registry and dataset store; every write is atomic.

Layout under ``root``::

    models/<name>/<version>/{model.joblib, card.json}
    models/<name>/CURRENT            the promoted version
    datasets/<version>/{prices.csv.gz, meta.json}
    datasets/ACTIVE                  the dataset training uses

A version directory is written under a ``.tmp-<uuid>`` name and renamed into place, so
readers never see a partial version; pointer files and rewritten cards are replaced with
``os.replace``. A killed writer leaves only ``.tmp-*`` directories, which
``cleanup_tmp`` removes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn

from ml.data import dataset_hash, read_prices_csv, tickers_of, to_csv_frame, validate_prices
from ml.errors import ArtifactError, MLError, RegistryError

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_MODEL_VERSION = re.compile(r"^\d{8}T\d{12}Z$")
_DATASET_VERSION = re.compile(r"^[0-9a-f]{16}$")
_TMP_PREFIX = ".tmp-"
_MODEL_FILE = "model.joblib"
_CARD_FILE = "card.json"
_PRICES_FILE = "prices.csv.gz"
_META_FILE = "meta.json"
_HISTORY_FILE = "HISTORY.jsonl"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix."""
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    atomic_write(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; an unreadable file is an ArtifactError."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise ArtifactError(f"{path} does not hold a JSON object")
    return payload


def _read_pointer(path: Path) -> str | None:
    """Return the version a pointer file names, or None when there is no pointer."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


@contextmanager
def _staged_dir(parent: Path) -> Iterator[Path]:
    """Yield a fresh ``.tmp-*`` directory in ``parent``; remove it unless it was renamed."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_tmp_dirs(parents: list[Path], min_age_seconds: float) -> int:
    """Remove ``.tmp-*`` entries older than ``min_age_seconds`` in ``parents``; count them."""
    removed = 0
    cutoff = time.time() - min_age_seconds
    for parent in parents:
        for entry in parent.glob(f"{_TMP_PREFIX}*"):
            if entry.stat().st_mtime > cutoff:
                continue  # possibly a write in progress
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _utc_now() -> datetime:
    """Return the current UTC time."""
    return datetime.now(UTC)


def _sha256_file(path: Path) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Return the versions of the libraries a pickled model depends on."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "sklearn": sklearn.__version__,
        "joblib": joblib.__version__,
    }


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def incompatible_libraries(built: dict[str, Any]) -> list[str]:
    """Name each library whose version differs from the one a model was built with.

    scikit-learn must match exactly (its pickles are only supported by the version that
    wrote them); numpy and Python by major.minor. Cards without versions are not judged.
    """
    here = library_versions()
    out = []
    for lib, same in (
        ("sklearn", lambda a, b: a == b),
        ("numpy", lambda a, b: _major_minor(a) == _major_minor(b)),
        ("python", lambda a, b: _major_minor(a) == _major_minor(b)),
    ):
        if lib in built and not same(str(built[lib]), here[lib]):
            out.append(f"{lib} {built[lib]} there, {here[lib]} here")
    return out


class ModelRegistry:
    """Versioned models with cards, a CURRENT pointer and checksum-verified loading.

    With a ``signing_key`` every card also carries an HMAC-SHA256 signature of the
    model's name, version and sha256, checked before loading: a card rewritten by
    someone without the key no longer vouches for a swapped model file.
    """

    def __init__(self, root: str | os.PathLike[str], *, signing_key: bytes | None = None) -> None:
        self.root = Path(root)
        self._models = self.root / "models"
        self._signing_key = signing_key

    def save(
        self,
        name: str,
        model: object,
        *,
        metrics: dict[str, Any],
        params: dict[str, Any],
        data_version: str,
        trained_through: str | None,
    ) -> dict[str, Any]:
        """Store a new unpromoted version of model ``name``; return its card."""
        parent = self._models / _checked_name(name)
        with _staged_dir(parent) as staging:
            joblib.dump(model, staging / _MODEL_FILE)
            with open(staging / _MODEL_FILE, "rb") as handle:
                os.fsync(handle.fileno())
            sha256 = _sha256_file(staging / _MODEL_FILE)
            while True:
                created = _utc_now()
                version = created.strftime("%Y%m%dT%H%M%S%fZ")
                card = {
                    "name": name,
                    "version": version,
                    "created": created.isoformat(),
                    "data_version": data_version,
                    "trained_through": trained_through,
                    "params": params,
                    "metrics": metrics,
                    "sha256": sha256,
                    "libraries": library_versions(),
                    "promoted": False,
                }
                if self._signing_key is not None:
                    card["signature"] = self._signature(name, version, sha256)
                _write_json(staging / _CARD_FILE, card)
                try:
                    # Renaming onto an existing (non-empty) directory fails: two saves in
                    # the same microsecond cannot overwrite each other.
                    os.rename(staging, parent / version)
                except OSError:
                    if (parent / version).exists():
                        continue
                    raise
                break
        _fsync_dir(parent)
        return card

    def promote(
        self, name: str, version: str, *, reason: str, by: str | None = None
    ) -> dict[str, Any]:
        """Make ``version`` the current one (also a rollback); record why and who on its
        card and in the model's promotion history."""
        card = self.card(name, version)
        previous = self.current_version(name)
        at = _utc_now().isoformat()
        card.update(promoted=True, promoted_at=at, reason=reason)
        if by is not None:
            card["promoted_by"] = by
        _write_json(self._version_dir(name, version) / _CARD_FILE, card)
        atomic_write(self._models / name / "CURRENT", f"{version}\n".encode())
        entry = {"version": version, "previous": previous, "at": at, "by": by, "reason": reason}
        with open(self._models / name / _HISTORY_FILE, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        return card

    def record_decision(
        self, name: str, version: str, *, promoted: bool, reason: str
    ) -> dict[str, Any]:
        """Promote ``version``, or keep it unpromoted with the reason on its card."""
        if promoted:
            return self.promote(name, version, reason=reason)
        card = self.card(name, version)
        card.update(decided_at=_utc_now().isoformat(), reason=reason)
        _write_json(self._version_dir(name, version) / _CARD_FILE, card)
        return card

    def current_version(self, name: str) -> str | None:
        """Return the current version of ``name``, or None if none was promoted."""
        return _read_pointer(self._models / _checked_name(name) / "CURRENT")

    def load(self, name: str, version: str | None = None) -> tuple[object, dict[str, Any]]:
        """Load a version (default: current) after verifying it; return model, card."""
        if version is None:
            version = self.current_version(name)
            if version is None:
                raise RegistryError(f"model {name!r} has no current version")
        card = self.verify(name, version)
        try:
            model = joblib.load(self.model_path(name, version))
        except Exception as exc:  # unpickling can fail in many ways; all mean "unloadable"
            raise ArtifactError(f"cannot load model {name} {version}: {exc}") from exc
        return model, card

    def verify(self, name: str, version: str) -> dict[str, Any]:
        """Check a version may be loaded here, without unpickling it; return its card.

        Refuses a missing file, a card without a valid signature (when this registry has
        a key), a file whose sha256 differs from its card's, and a model built by other
        library versions than this process runs.
        """
        card = self.card(name, version)
        path = self.model_path(name, version)
        if not path.is_file():
            raise ArtifactError(f"model file of {name} {version} is missing")
        if self._signing_key is not None:
            signature = card.get("signature")
            if not signature:
                raise ArtifactError(
                    f"card of {name} {version} has a missing signature: it was saved "
                    "without MODEL_SIGNING_KEY, so this signed registry will not load it"
                )
            expected = self._signature(name, version, str(card.get("sha256")))
            if not hmac.compare_digest(str(signature), expected):
                raise ArtifactError(
                    f"card of {name} {version} has an invalid signature: it was not signed "
                    "with this MODEL_SIGNING_KEY, or the card was altered"
                )
        incompatible = incompatible_libraries(card.get("libraries") or {})
        if incompatible:
            raise ArtifactError(
                f"model {name} {version} was built with other library versions than this "
                f"worker runs ({'; '.join(incompatible)}); retrain it here instead"
            )
        # Verify before unpickling: joblib.load runs code from the file.
        if _sha256_file(path) != card.get("sha256"):
            raise ArtifactError(
                f"model file of {name} {version} does not match its sha256: "
                "it is truncated or was altered"
            )
        return card

    def model_path(self, name: str, version: str) -> Path:
        """Return the path of a version's model file."""
        return self._version_dir(name, version) / _MODEL_FILE

    def history(self, name: str) -> list[dict[str, Any]]:
        """Return the promotions of ``name`` (also rollbacks), newest first."""
        path = self._models / _checked_name(name) / _HISTORY_FILE
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line of a killed writer
        return out[::-1]

    def card(self, name: str, version: str) -> dict[str, Any]:
        """Return the card of one version."""
        return _read_json(self._version_dir(name, version) / _CARD_FILE)

    def versions(self, name: str) -> list[str]:
        """Return the stored versions of ``name``, newest first."""
        parent = self._models / _checked_name(name)
        if not parent.is_dir():
            return []
        found = [p.name for p in parent.iterdir() if _MODEL_VERSION.match(p.name) and p.is_dir()]
        return sorted(found, reverse=True)  # timestamps sort as text

    def trained_through(
        self,
        name: str,
        cutoff: str,
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> str | None:
        """Return the version of ``name`` trained on the latest data through ``cutoff``
        (an ISO date; the newest such version on a tie) among those whose card ``accept``
        takes, or None if every such version saw later data. A point-in-time forecast as
        of ``cutoff`` may use it: it saw nothing after that day's close."""
        best: tuple[str, str] | None = None
        for version in self.versions(name):
            try:
                card = self.card(name, version)
            except MLError:
                continue  # a card being written or removed: not a candidate
            through = card.get("trained_through")
            if not isinstance(through, str) or through > cutoff:
                continue
            if accept is None or accept(card):
                if best is None or (through, version) > best:
                    best = (through, version)
        return None if best is None else best[1]

    def names(self) -> list[str]:
        """Return the names of models with at least one stored version."""
        if not self._models.is_dir():
            return []
        return sorted(p.name for p in self._models.iterdir() if _NAME.match(p.name) and p.is_dir())

    def cleanup_tmp(self, *, min_age_seconds: float = 0.0) -> int:
        """Remove leftovers of interrupted saves older than ``min_age_seconds``; count them."""
        if not self._models.is_dir():
            return 0
        parents = [p for p in self._models.iterdir() if p.is_dir() and _NAME.match(p.name)]
        return _remove_tmp_dirs(parents, min_age_seconds)

    def _version_dir(self, name: str, version: str) -> Path:
        """Return the directory of an existing version; RegistryError if unknown."""
        path = self._models / _checked_name(name) / version
        if not _MODEL_VERSION.match(version) or not path.is_dir():
            raise RegistryError(f"unknown version {version!r} of model {name!r}")
        return path

    def _signature(self, name: str, version: str, sha256: str) -> str:
        """Return the HMAC-SHA256 hex of a model's identity and checksum."""
        assert self._signing_key is not None
        message = f"{name}\n{version}\n{sha256}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()


class DatasetStore:
    """Validated price datasets, versioned by content hash, with an ACTIVE pointer."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._datasets = self.root / "datasets"

    def save(self, prices: pd.DataFrame, *, source: str) -> dict[str, Any]:
        """Store prices unless the same content is stored already; return its meta."""
        # Back to input form first, so a tidy frame's adjusted prices survive re-validation.
        tidy = validate_prices(to_csv_frame(prices), min_history=0)
        digest = dataset_hash(tidy)
        version = digest[:16]
        target = self._datasets / version
        if target.is_dir():
            return self.meta(version)
        meta = {
            "version": version,
            "sha256": digest,
            "rows": int(len(tidy)),
            "tickers": tickers_of(tidy),
            "start": tidy["date"].min().strftime("%Y-%m-%d"),
            "end": tidy["date"].max().strftime("%Y-%m-%d"),
            "source": source,
            "created": _utc_now().isoformat(),
        }
        with _staged_dir(self._datasets) as staging:
            # mtime=0 keeps the gzip bytes a function of the content alone.
            to_csv_frame(tidy).to_csv(
                staging / _PRICES_FILE,
                index=False,
                date_format="%Y-%m-%d",
                compression={"method": "gzip", "mtime": 0},
            )
            _write_json(staging / _META_FILE, meta)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():
                    raise
                # Another writer stored the same content first: theirs is as good as ours.
        _fsync_dir(self._datasets)
        return self.meta(version)

    def load(self, version: str) -> pd.DataFrame:
        """Load and re-validate a stored dataset."""
        path = self._dir(version) / _PRICES_FILE
        if not path.is_file():
            raise ArtifactError(f"prices of dataset {version} are missing")
        return read_prices_csv(path, min_history=0)

    def meta(self, version: str) -> dict[str, Any]:
        """Return the metadata of one dataset."""
        return _read_json(self._dir(version) / _META_FILE)

    def list(self) -> list[dict[str, Any]]:
        """Return the metadata of every dataset, newest first."""
        if not self._datasets.is_dir():
            return []
        metas = [
            self.meta(p.name)
            for p in self._datasets.iterdir()
            if _DATASET_VERSION.match(p.name) and (p / _META_FILE).is_file()
        ]
        return sorted(metas, key=lambda m: str(m.get("created", "")), reverse=True)

    def active(self) -> str | None:
        """Return the active dataset version, or None."""
        return _read_pointer(self._datasets / "ACTIVE")

    def activate(self, version: str) -> dict[str, Any]:
        """Make ``version`` the active dataset; return its meta."""
        meta = self.meta(version)
        atomic_write(self._datasets / "ACTIVE", f"{version}\n".encode())
        return meta

    def cleanup_tmp(self, *, min_age_seconds: float = 0.0) -> int:
        """Remove leftovers of interrupted saves older than ``min_age_seconds``; count them."""
        if not self._datasets.is_dir():
            return 0
        return _remove_tmp_dirs([self._datasets], min_age_seconds)

    def _dir(self, version: str) -> Path:
        """Return the directory of an existing dataset; RegistryError if unknown."""
        path = self._datasets / version
        if not _DATASET_VERSION.match(version) or not path.is_dir():
            raise RegistryError(f"unknown dataset version {version!r}")
        return path


def _checked_name(name: str) -> str:
    """Return ``name`` if it is a safe model name (no path tricks); else RegistryError."""
    if not _NAME.match(name):
        raise RegistryError(f"invalid model name {name!r}: use lowercase letters, digits, - or _")
    return name
