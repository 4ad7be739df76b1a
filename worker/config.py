"""Settings of every process, read from the environment (and `.env` in development)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Typed settings; every field is an environment variable of the same name in capitals."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Broker and job store; unset, `mlstock up` starts its own Redis.",
    )
    artifacts_dir: Path = Field(Path("artifacts"), description="Model registry and datasets.")
    data_path: Path | None = Field(
        None,
        description="Prices CSV to train on; default: the active imported dataset, else synthetic.",
    )
    synthetic_seed: int = Field(0, description="Seed of the synthetic market used without data.")
    retrain_schedule: str = Field(
        "0 2 * * *",
        description="Crontab (m h dom mon dow, UTC) of the scheduled retrain; empty: off.",
    )
    result_ttl: int = Field(
        86_400, ge=1, description="Seconds a job record and its result live after the job ends."
    )
    result_ttls: dict[str, int] = Field(
        default_factory=dict,
        description='Per job type overrides of RESULT_TTL, as JSON: `{"retrain": 604800}`.',
    )
    webhook_secret: str = Field(
        "", description="Key of the HMAC-SHA256 `X-Signature` of callbacks; unset: no callbacks."
    )
    webhook_allow_private: bool = Field(
        False, description="Allow `callback_url` on loopback and private networks."
    )
    wait_max: float = Field(30.0, ge=0, description="Cap in seconds of `GET /result/<id>?wait=S`.")
    max_horizon: int = Field(
        10, ge=1, le=60, description="Longest forecast horizon, business days."
    )
    max_batch: int = Field(500, ge=1, description="Most tickers or rows in one job.")
    inference_time_limit: int = Field(
        60, ge=1, description="Hard limit, seconds, of a predict/segment."
    )
    training_time_limit: int = Field(3600, ge=10, description="Hard limit, seconds, of a retrain.")
    promotion_tolerance: float = Field(
        0.02, ge=0, description="A new model is promoted unless worse than the champion by this."
    )
    coverage_band: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="A forecaster is promoted only if its backtest 80%/95% coverage is "
        "within this of nominal.",
    )
    ledger_ttl: int = Field(
        90 * 86_400,
        ge=60,
        description="Seconds a model version's ledger of served forecasts is kept after "
        "its last recorded forecast.",
    )
    worker_threads: int = Field(1, ge=1, description="BLAS/OpenMP threads per worker process.")
    training_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU niceness of the training worker; above 0 it also runs in the idle "
        "scheduling class, on the last WORKER_THREADS CPUs when there are more.",
    )
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API binds to.")
    web_concurrency: int = Field(2, ge=1, description="gunicorn worker processes of the API.")
    # --- security and limits ---
    model_signing_key: SecretStr | None = Field(
        None, description="HMAC-SHA256 key signing model artifacts; unset: sha256 only."
    )
    api_keys: SecretStr | None = Field(
        None, description="API keys as `KEY:ROLE` pairs, comma-separated (read, submit, admin)."
    )
    api_keys_file: Path | None = Field(
        None, description="File of `KEY:ROLE` lines, added to API_KEYS."
    )
    allow_unauthenticated: bool = Field(
        False, description="Allow binding beyond localhost with no API keys."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(
        64 * 1_048_576, ge=1024, description="Largest dataset upload (as sent, maybe gzip)."
    )
    max_dataset_bytes: int = Field(
        512 * 1_048_576, ge=1024, description="Largest dataset once decompressed."
    )
    upload_ttl: int = Field(3600, ge=60, description="Seconds an upload waits for its import.")
    rate_limit: str = Field(
        "50/second;3000/minute",
        description="Per-key (or per-address) rate limits, `;`-separated; empty: off.",
    )
    max_queue_depth: int = Field(
        1000, ge=0, description="Inference queue length above which submits answer 503."
    )
    sync_wait: float = Field(
        10.0, ge=0, description="Seconds promote/activate/import wait before answering 202."
    )

    @property
    def signing_key(self) -> bytes | None:
        """Return MODEL_SIGNING_KEY as bytes, or None when artifacts are only checksummed."""
        if self.model_signing_key is None or not self.model_signing_key.get_secret_value():
            return None
        return self.model_signing_key.get_secret_value().encode()

    log_format: Literal["json", "text"] = Field(
        "json", description="Logs as JSON lines (`json`) or for people (`text`)."
    )
    access_log: bool = Field(
        False, description="The API logs a line per HTTP request (gunicorn's access log)."
    )
    broker_visibility_timeout: int | None = Field(
        None,
        ge=1,
        description="Seconds before Redis redelivers an unacknowledged task; "
        "default TRAINING_TIME_LIMIT + 600. Below the training limit a retrain runs twice.",
    )

    @property
    def visibility_timeout(self) -> int:
        """Seconds before Redis redelivers an unacknowledged task: above the longest training."""
        if self.broker_visibility_timeout is not None:
            return self.broker_visibility_timeout
        return self.training_time_limit + 600
