# Two commands for a newcomer: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
# Empty: one gevent worker per core (gunicorn.conf.py).
WORKERS ?=
# Test processes for the parallel part of `make test`: auto is one per core.
TEST_WORKERS ?= auto
FLASK := $(BIN)/flask --app app

.PHONY: run serve test bench lint format install install-dev migrate seed clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: reinstall only when a requirements file changes.
$(VENV)/.installed-runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.installed-runtime

install: $(VENV)/.installed-runtime

install-dev: $(VENV)/.installed-dev

migrate: install
	$(FLASK) db upgrade

seed: migrate
	$(FLASK) seed-demo --if-empty

## run: install, migrate, seed the demo catalog when empty, serve on http://$(HOST):$(PORT)
run: seed
	$(FLASK) run --host $(HOST) --port $(PORT)

## serve: production server on DATABASE_URL: gunicorn as gunicorn.conf.py sets it up
## (gevent workers, one per core, a private access log)
serve: migrate
	$(BIN)/gunicorn --bind $(HOST):$(PORT) $(if $(WORKERS),--workers $(WORKERS)) app:app

## test: lint and the whole suite (SQLite always; PostgreSQL when reachable): most
## tests spread over TEST_WORKERS processes (one per core), then those marked
## `serial` (they time pages or load the machine) alone
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n $(TEST_WORKERS) -m "not serial"
	$(BIN)/pytest -m serial

## bench: benchmarks on SQLite and PostgreSQL; results written into BENCHMARKS.md
bench: install-dev
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/ranking_latency.py --write BENCHMARKS.md
	$(BIN)/python bench/webhook_ingest.py --write BENCHMARKS.md
	$(BIN)/python bench/http_load.py --write BENCHMARKS.md
	$(BIN)/python bench/serving.py --write BENCHMARKS.md
	$(BIN)/python bench/cleanup_stall.py --write BENCHMARKS.md
	$(BIN)/python bench/search_latency.py --write BENCHMARKS.md
	$(BIN)/python bench/evaluate_public.py --write BENCHMARKS.md

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
