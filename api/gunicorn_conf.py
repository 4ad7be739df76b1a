"""gunicorn settings, read from the same environment as every other process."""

import glob
import os
import sys
import tempfile
from typing import Any

from gunicorn.glogging import Logger

from api.auth import check_bind
from worker.config import Settings
from worker.observe import gunicorn_logconfig

_settings = Settings()
# Refuses (SystemExit) to serve beyond localhost with no API keys, unless allowed.
print(f"mlstock api: {check_bind(_settings)}", file=sys.stderr, flush=True)

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.web_concurrency
# Threads let a long-poll (`?wait=`) hold one request without holding a whole process.
worker_class = "gthread"
threads = 8
timeout = int(_settings.wait_max) + 30
# Each worker touches a heartbeat file on every turn of its event loop: on tmpfs that is a
# memory write, on a disk (or a container's overlay) a metadata write per request.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
graceful_timeout = 10
loglevel = "info"
errorlog = "-"
logconfig_dict = gunicorn_logconfig(_settings.log_format)


class AccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing access lines only with ACCESS_LOG on. (A logging config
    turns gunicorn's access log on; each line took about a tenth of the API's CPU per
    predict job, which logs "job submitted" with its id anyway.)"""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Log one request, when access lines are wanted."""
        if _settings.access_log:
            super().access(resp, req, environ, request_time)


logger_class = AccessLogger

# prometheus-client's multiprocess mode: every worker writes its metrics to files in this
# directory and `/metrics` merges them. It must be fresh at each start (stale files of an
# earlier run would add old counts), and set before a worker imports prometheus_client.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
    prefix="mlstock-prom-"
)
os.makedirs(_metrics_dir, exist_ok=True)
for _stale in glob.glob(os.path.join(_metrics_dir, "*.db")):
    os.remove(_stale)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def child_exit(server: Any, worker: Any) -> None:
    """Drop the live-gauge files of a gunicorn worker that exited."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
