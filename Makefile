PYTHON ?= $(shell command -v python3 || command -v python)
VENV ?= .venv
BIN = $(VENV)/bin
# Two stamps: `make run` needs the runtime set alone; `make test` adds the dev extras on top.
RUNTIME = $(VENV)/.installed-runtime
DEV = $(VENV)/.installed-dev
PORT ?= 8787
# `make run` keeps everything it writes here (database, secret key, cassettes), never in the repository.
DATA_DIR ?= .proxy
# What `make test` needs from the system: the inspector's browser test drives Debian's chromium (playwright
# downloads no browser); the walkthrough test clones the repository and runs the README's curl commands.
SYSTEM_TOOLS = chromium git curl

.PHONY: run test lint docs system-tools bench fuzz clean

# The venv is rebuilt only when pyproject.toml changes.
$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -e .
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The bundled demo, replaying the shipped cassettes from a copy in the data dir, so nothing a user tries
# writes into cassettes/ (`make clean` starts the copy afresh). PROXY_MAKE_RUN: a port in use then says
# `make run PORT=…`, not --port. Exported, not written before the command: that would put a shell between make
# and the server, which Ctrl-C kills (make then reports `Interrupt`) while the server shuts down cleanly.
run: export PROXY_MAKE_RUN = 1
run: $(RUNTIME)
	test -d $(DATA_DIR)/cassettes || (mkdir -p -m 700 $(DATA_DIR) && cp -R cassettes $(DATA_DIR)/cassettes)
	$(BIN)/proxy serve --config examples/demo.yaml --port $(PORT) --data-dir $(DATA_DIR) --cassettes $(DATA_DIR)/cassettes

lint: $(DEV)
	$(BIN)/ruff check proxy tests
	$(BIN)/mypy

# One worker per core; worksteal: an idle worker takes queued tests from a busy one, so a few slow tests
# near the end do not leave the other core waiting.
test: system-tools lint
	$(BIN)/pytest -n auto --dist worksteal --durations=15

# Installs what is missing with apt-get when it can (root on Debian/Ubuntu), else says what to install.
system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "make test needs these programs, missing here:$$missing. Install them (Debian/Ubuntu: sudo apt-get install$$missing) and run make test again" >&2; \
	    exit 1; \
	  fi; \
	fi

# The generated parts of docs/: the CLI reference (from --help) and the configuration tables (from the models).
docs: $(RUNTIME)
	$(BIN)/python -m tests.docgen

# Schemathesis against /openapi.json with enough examples for 1,000+ requests (make test runs a few per route).
fuzz: $(DEV)
	PROXY_FUZZ_EXAMPLES=60 PROXY_FUZZ_MIN_REQUESTS=1000 $(BIN)/pytest tests/server/test_fuzz_api.py -s

# The load benchmark compares against mitmproxy (its own venv: its pins would fight ours) driven by wrk.
# The suite benchmark runs pytest-recording and cassetter beside the plugin in a venv of their own: both claim
# --record-mode, so installed together they stop every pytest run that does not turn one off (-p no:...).
bench: $(DEV)
	test -x .venv-mitm/bin/mitmdump || ($(PYTHON) -m venv .venv-mitm && .venv-mitm/bin/pip install -q mitmproxy)
	test -x .venv-suite/bin/pytest || ($(PYTHON) -m venv .venv-suite && .venv-suite/bin/pip install -q -e . \
		pytest pytest-xdist pytest-recording==0.15.0 cassetter==0.16.1)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache .mypy_cache
