# Every target bootstraps what it needs: a fresh machine only needs python3 (>= 3.11).
PY ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
BIN := $(VENV)/bin
STAMP := $(VENV)/.synced
# Test processes: the e2e tests mostly wait on their servers, so two per core keep both cores busy.
TEST_WORKERS ?= 3

.PHONY: help demo console test lint typecheck migration docs clean
help:  ## show this help
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(UV):
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==0.13.9

$(STAMP): $(UV) uv.lock pyproject.toml
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync -q --frozen --compile-bytecode --extra dev
	touch $(STAMP)

demo: $(STAMP)  ## run ehi-bridge + the Fasten simulator with sample patients on SQLite
	$(BIN)/ehi-bridge demo

console: $(STAMP)  ## the SMART source test console on http://127.0.0.1:9999 with the simulator's SMART EHR sandbox
	$(BIN)/ehi-bridge sources console --with-sandbox

test: $(STAMP)  ## run lint, type checks and the whole test suite (SQLite and PostgreSQL, browser)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m tests.preflight
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check src tests bench && $(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)  ## mypy --strict
	$(BIN)/mypy

migration: $(STAMP)  ## regenerate the initial migration from the models (pre-release only)
	$(BIN)/python -m ehi_bridge.db.regenerate_migration

docs: $(STAMP)  ## regenerate docs/configuration.md from the Settings class
	$(BIN)/python -m ehi_bridge.config_reference

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
