"""gunicorn settings, read from the same environment as every other process."""

import sys

from api.auth import check_bind
from worker.config import Settings

_settings = Settings()
# Refuses (SystemExit) to serve beyond localhost with no API keys, unless allowed.
print(f"mlstock api: {check_bind(_settings)}", file=sys.stderr, flush=True)

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.web_concurrency
# Threads let a long-poll (`?wait=`) hold one request without holding a whole process.
worker_class = "gthread"
threads = 8
timeout = int(_settings.wait_max) + 30
graceful_timeout = 10
loglevel = "info"
errorlog = "-"
