# The commands the README and .ci/run use. A fresh clone needs only make and Python 3.11+:
# every target that runs project code builds the virtualenv first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra arguments for the es-orders targets, e.g. `make run ARGS="--rate 5"`.
ARGS ?=

# The domain and the wire format are pure and fully specified, so every branch of them
# must be exercised; the gate covers only them because the I/O edges are tested end to
# end against a real broker instead.
COVERAGE_GATE := --cov=es_orders.domain --cov=es_orders.codec --cov-branch \
	--cov-report=term-missing:skip-covered --cov-fail-under=100

.PHONY: venv test lint typecheck check run bench broker

# Reinstalled only when the dependencies change: the stamp is newer than pyproject.toml.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/pytest $(COVERAGE_GATE)

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: venv
	$(BIN)/mypy --strict src tests benchmarks

check: lint typecheck test

run: venv
	$(BIN)/es-orders up $(ARGS)

bench: venv
	$(BIN)/python -m benchmarks $(ARGS)

broker: venv
	$(BIN)/es-orders broker $(ARGS)
