# Two commands do all the set-up: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint format openapi bench bench-scale wrk worker clean browser

$(STAMP): pyproject.toml nodeps-requirements.txt parity-nodeps-requirements.txt client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,parity]'
	$(PY) -m pip install --quiet --no-deps -r nodeps-requirements.txt -r parity-nodeps-requirements.txt
	$(PY) -m pip install --quiet -e './client[numpy]'
	$(PY) -c 'import torch, sys; v = torch.__version__.split("+")[0]; sys.exit(0 if v == "2.13.0" else f"torch {v} was installed; the service pins 2.13.0")'
	touch $(STAMP)

# uvicorn's own limits (docs/deploy.md says why these numbers, and what a proxy adds); the
# Dockerfile's CMD passes the same flags (tests/hardening/test_http_edges.py checks it).
UVICORN_FLAGS := --timeout-keep-alive 5 --limit-concurrency 1200 --backlog 2048 --timeout-graceful-shutdown 10

serve: $(STAMP)
	$(PY) -m uvicorn service.main:app --host $(HOST) --port $(PORT) $(UVICORN_FLAGS)

test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# The playground's browser tests drive Debian's Chromium (playwright cannot download its own
# browser here). Installed with apt-get when missing; no browser means make test fails here.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  echo "make: $(CHROMIUM) is missing; installing Debian's chromium with apt-get"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; }
	@test -x $(CHROMIUM) || { echo "make: could not install chromium ($(CHROMIUM)); the \
	playground's browser tests need it: run 'apt-get install chromium' as root" >&2; exit 1; }

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

openapi: $(STAMP)
	$(PY) -m service.openapi > openapi/openapi.json

# bench_schedules.py compares with optax's jitted schedule: optax and jax come with the parity
# extra $(STAMP) installs (never with the service's own dependencies).
bench: $(STAMP) wrk
	$(PY) bench/bench_schedules.py
	$(PY) bench/bench_http.py
	$(PY) bench/bench_scale.py

# 1 vs 2 API worker processes (wrk, Debian's package)
bench-scale: $(STAMP) wrk
	$(PY) bench/bench_scale.py

wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } \
	  || { echo "wrk is needed: install Debian's package wrk (apt-get install wrk)" >&2; exit 1; }

# Local job workers outside the API (start the API with LRS_JOB_WORKERS=0)
worker: $(STAMP)
	$(PY) -m service.jobs.worker

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
