"""The HTTP API: validates requests, records jobs in Redis and sends them to the workers."""

from __future__ import annotations

import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.config import Settings
from worker.contract import JobStore, create_celery


def create_app(settings: Settings | None = None) -> Flask:
    """Create the Flask app from `settings` (default: the environment)."""
    settings = settings or Settings()
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["SETTINGS"] = settings
    # No retries: with Redis down a request answers 503 at once rather than hang.
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=settings.wait_max + 5,
        retry=Retry(NoBackoff(), 0),
    )
    app.extensions["redis"] = client
    app.extensions["jobs"] = JobStore(client, settings)
    app.extensions["celery"] = create_celery(settings)

    from api.dashboard import bp as dashboard_bp
    from api.datasets import bp as datasets_bp
    from api.errors import register_error_handlers
    from api.limits import init_guards
    from api.metrics import init_metrics
    from api.models import bp as models_bp
    from api.openapi import bp as openapi_bp
    from api.routes import bp

    register_error_handlers(app)
    init_guards(app, settings)
    app.register_blueprint(bp)
    app.register_blueprint(models_bp)
    app.register_blueprint(datasets_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(openapi_bp)
    init_metrics(app)
    return app
