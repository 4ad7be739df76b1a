# One image, several services (see docker-compose.yml); they differ only in their command.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY ml ml
COPY mlstock mlstock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install '.[flower]'

FROM python:3.11-slim
RUN groupadd --system app && useradd --system --gid app --home /app app \
    && mkdir -p /app/artifacts && chown app:app /app/artifacts
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ARTIFACTS_DIR=/app/artifacts \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
WORKDIR /app
USER app
EXPOSE 8000
CMD ["gunicorn", "-c", "python:api.gunicorn_conf", "api:create_app()"]
