# Two commands for a fresh machine: `make demo` and `make test`. Everything else is their parts.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := $(CURDIR)/.tools
UV := $(TOOLS)/bin/uv
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup test test-ui chromium demo lint typecheck docs unit lock clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The lock file pins every package; --frozen refuses to install anything it does not name.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	touch $@

setup: $(VENV)/.installed

lock: | $(UV)
	$(UV) lock --python $(PYTHON)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: setup
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html

unit: setup
	$(BIN)/pytest tests/unit

# The browser test (tests/ui) drives Debian's chromium; Playwright's own browser download is not used.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { echo "Installing chromium with apt-get (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test-ui: setup chromium
	$(BIN)/pytest tests/ui

# Workers: twice the CPUs (most integration tests wait on subprocesses and loopback servers, not the CPU);
# worksteal moves queued tests to idle workers so one slow file does not leave the others waiting.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) * 2 )))
test: setup lint docs chromium
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal --durations=25

demo: setup
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) $(TOOLS) .airflow docs/_build .pytest_cache .mypy_cache .ruff_cache
