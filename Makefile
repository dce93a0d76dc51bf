# One command runs the system, one runs every check; CI calls `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test files run in parallel processes, each with its own PostgreSQL and NATS.
TEST_PROCESSES ?= 2

.PHONY: run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/threeport up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/broker.py

clean:
	rm -rf $(VENV) .pytest_cache
