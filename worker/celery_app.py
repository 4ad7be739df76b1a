"""Entry module of the worker processes: `celery -A worker.celery_app worker|beat` loads it."""

from worker import beat, telemetry  # noqa: F401 (connect beat's heartbeat, logs and metrics)
from worker.config import Settings
from worker.contract import create_celery

_settings = Settings()
# Beat keeps its schedule file there, workers the registry: make sure it exists.
_settings.artifacts_dir.mkdir(parents=True, exist_ok=True)

celery_app = create_celery(_settings)
celery_app.set_default()
# Importing the task module registers the tasks and the worker's signal handlers.
celery_app.conf.imports = ("worker.tasks", "worker.admin", "worker.imports")
