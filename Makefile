# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
PROVIDERS = $(wildcard providers/*/pyproject.toml)

.PHONY: install demo test test-floors bench typecheck clean

$(STAMP): pyproject.toml $(PROVIDERS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' $(foreach p,$(PROVIDERS),-e $(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/lockkit init --if-missing
	$(BIN)/python -m examples.flask_clerk

test: install
	$(BIN)/python -m pytest

typecheck: install
	$(BIN)/python -m mypy

# The suite again on the lowest versions pyproject.toml declares (.ci/floors.txt), in a venv of
# its own: a floor that is too low fails here, not on a user's machine.
FLOORS       = .venv-floors
FLOORS_STAMP = $(FLOORS)/.installed

$(FLOORS_STAMP): pyproject.toml .ci/floors.txt $(PROVIDERS)
	test -x $(FLOORS)/bin/python || $(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q --upgrade pip
	$(FLOORS)/bin/python -m pip install -q -c .ci/floors.txt -e '.[dev]' $(foreach p,$(PROVIDERS),-e $(dir $(p)))
	touch $(FLOORS_STAMP)

test-floors: $(FLOORS_STAMP)
	$(FLOORS)/bin/python -m pytest -p no:cacheprovider

BENCH_STAMP = $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	command -v wrk >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null) || true
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py --report docs/benchmarks.md

clean:
	rm -rf $(VENV) $(FLOORS) .pytest_cache .mypy_cache .hypothesis
