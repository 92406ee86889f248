# The two set-up commands of the README (each creates .venv, installs, fetches what it needs):
#   make demo   the main job on the embedded default (SmolLM2-135M-Instruct + MovieLens-100K), CPU
#   make test   lint + the test suite (+ a small subset of the slow tests on the real model)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here only (the package itself asks for torch>=2.4): 2.13.0 is a CPU wheel.
TORCH ?= torch==2.13.0

.PHONY: demo test setup fetch lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,serve]"
	touch $@

setup: $(BIN)/.installed

fetch: setup
	$(BIN)/rrec fetch

demo: fetch
	$(BIN)/rrec demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint fetch
	$(BIN)/python -m pytest -m "not slow and not gpu" -q
	$(BIN)/python -m pytest -m "slow_ci" -q

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
