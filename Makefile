# ltad: one venv, real local services, the same code as on a cluster.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ltad-installed

.PHONY: setup constraints test test-fast lint format demo sweep-demo results clean

setup: $(STAMP)

# Re-installs only when pyproject.toml or constraints.txt changes; a second `make setup` is a no-op.
# constraints.txt holds the exact tested versions; pyproject.toml only ranges (see its comment).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# After changing dependencies in pyproject.toml: install them, then record the exact set that was tested.
constraints: setup
	@{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^ltad=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# ruff (lint + format check) and mypy on ltad/ (settings in pyproject.toml); .pre-commit-config.yaml runs the same.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy ltad

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Everything CI runs, in one pytest invocation: unit, integration, reliability (soak included) and the
# two-node cluster suite, on real SeaweedFS, Ray and DeepSpeed.
test: lint
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

# The daily loop (<= 3 min on 2 cores): lint, type check and the unit tests.
test-fast: lint
	$(BIN)/python -m pytest -q tests/unit -m "not integration and not slow" $(PYTEST_ARGS)

demo: setup
	scripts/demo

# Two imbalance levels x 2 prompt lengths x 2 synthesis ratios on the local services -> runs/sweep-demo/.
sweep-demo: setup
	scripts/sweep-demo

# The study figures of README.md and docs/RESULTS.md, regenerated from the committed rows in docs/results/.
results: setup
	$(BIN)/python -m tools.results_doc

clean:
	rm -rf runs .local .pytest_cache .ruff_cache .mypy_cache
