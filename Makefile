# Two commands do all the set-up: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint format openapi bench bench-scale wrk worker clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(PY) -m uvicorn service.main:app --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

openapi: $(STAMP)
	$(PY) -m service.openapi > openapi/openapi.json

bench: $(STAMP) wrk
	$(PY) bench/bench_schedules.py
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
