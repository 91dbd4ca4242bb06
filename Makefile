PYTHON ?= $(shell command -v python3 || command -v python)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: run test lint bench fuzz clean

# The venv is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/proxy serve --config examples/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check proxy tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# Schemathesis against /openapi.json with enough examples for 1,000+ requests (make test runs a few per route).
fuzz: $(STAMP)
	PROXY_FUZZ_EXAMPLES=60 PROXY_FUZZ_MIN_REQUESTS=1000 $(BIN)/pytest tests/test_fuzz_api.py -s

# The load benchmark compares against mitmproxy (its own venv: its pins would fight ours) driven by wrk.
bench: $(STAMP)
	test -x .venv-mitm/bin/mitmdump || ($(PYTHON) -m venv .venv-mitm && .venv-mitm/bin/pip install -q mitmproxy)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .proxy .pytest_cache .mypy_cache
