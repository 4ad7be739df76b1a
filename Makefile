# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: all install install-dev run test test-faults lint format mypy clean bench-quality bench bench-roundtrips load

all: lint mypy test

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## run: the whole service on this machine (HOST, PORT, REDIS_URL, ARTIFACTS_DIR honoured)
run: install
	$(BIN)/mlstock up

## test: the default suite (unit + integration against its own Redis and workers)
test: install-dev
	$(BIN)/python -m pytest

## test-faults: workers, Redis and the API killed and restarted under load (a few minutes)
test-faults: install-dev
	$(BIN)/python -m pytest -m faults -s tests/faults

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

mypy: install-dev
	$(BIN)/mypy api worker ml mlstock bench

## bench-quality: walk-forward backtests (synthetic and real) and segment quality
bench-quality: install-dev
	OMP_NUM_THREADS=1 $(BIN)/python bench/quality.py

## bench: latency and throughput against same-run floors (own stack, ~5-10 min);
## BENCH_ARGS="--artifacts DIR --soak N --name NAME" (see python -m bench.run --help)
bench: install-dev
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.run $(BENCH_ARGS)

## bench-roundtrips: Redis commands, round trips and CPU per predict job vs a bare Celery
## task (counts, not timings; ~3 min); BENCH_ARGS="--artifacts DIR --profile DIR"
bench-roundtrips: install-dev
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.roundtrips $(BENCH_ARGS)

## load: mixed traffic at a fixed rate for two minutes with a retrain in the middle
load: install-dev
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.load $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
