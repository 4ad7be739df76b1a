"""Settings of every process, read from the environment (and `.env` in development)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
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
    result_ttl: int = Field(86_400, ge=1, description="Seconds a job record and its result live.")
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
    worker_threads: int = Field(1, ge=1, description="BLAS/OpenMP threads per worker process.")
    training_nice: int = Field(10, ge=0, le=19, description="CPU niceness of the training worker.")
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API binds to.")
    web_concurrency: int = Field(2, ge=1, description="gunicorn worker processes of the API.")
    log_format: Literal["json", "text"] = Field(
        "json", description="Logs as JSON lines (`json`) or for people (`text`)."
    )

    @property
    def visibility_timeout(self) -> int:
        """Seconds before Redis redelivers an unacknowledged task: above the longest training."""
        return self.training_time_limit + 600
